"""The :class:`Recorder`: capture during an ordinary PyTorch training loop.

A few lines around an unchanged loop record, into a store, the same Phase 1
series the study's runs have (the four dimensionality metrics per tracked layer,
loss and gradient norm every ``every`` steps) and, at chosen steps, snapshots of
weights, probe-batch activations (with labels) and per-head attention. See
``docs/capture.md``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import platform
import queue
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any, overload

import numpy as np

from ndt_store import _dims as D
from ndt_store.capture.cost import RecordingCost
from ndt_store.capture.hooks import (
    attention_modules,
    capture_attention,
    capture_module_attention,
    capture_outputs,
    module_attention_sources,
    select_layers,
)
from ndt_store.capture.isolation import can_switch_to_eager, eager_attention, untouched
from ndt_store.capture.metrics import gram_singular_values
from ndt_store.capture.params import stored_state, tied_aliases, transposed_weights
from ndt_store.capture.trigger import (
    Budget,
    DeferredSnapshot,
    JumpPolicy,
    JumpSnapshots,
)
from ndt_store.capture.writer import (
    BackgroundWriter,
    HostTensor,
    PendingRecord,
    PendingSnapshot,
    to_host,
)
from ndt_store.errors import InputError, NdtStoreError, NdtStoreWarning, require

__all__ = ["Recorder", "probe_hash"]

log = logging.getLogger("ndt_store.capture")

_RECORD_BYTES_PER_LAYER = 8 * len(D.PHASE1_METRICS)
_RECORD_BYTES_FIXED = 8 * 4  # step, loss, grad_norm, epoch
_SAMPLE_BYTES = 1 << 20
"""Bytes of each tensor compressed at entry to estimate what a snapshot keeps on disk."""


def _stored_bytes(tensor: Any, *, adaptive: bool = False) -> int:
    """Bytes ``tensor`` will take in a snapshot on disk (from its first MiB, compressed).

    Half-precision floats are stored as float32 (see :class:`HostTensor`).
    """
    from ndt_store._frame import stored_nbytes

    flat = tensor.detach().reshape(-1)
    itemsize = flat.element_size()
    if flat.dtype.is_floating_point and itemsize < 4:
        itemsize = 4
    n = min(int(flat.numel()), max(1, _SAMPLE_BYTES // itemsize))
    sample = to_host(flat[:n]).numpy()
    return stored_nbytes(sample, int(flat.numel()) * itemsize, adaptive=adaptive)


_LARGE_GRAM = 4096  # a float64 eigendecomposition of this size takes seconds on a CPU


def probe_hash(inputs: Any) -> str:
    """SHA-256 of a probe batch: dtype, shape and bytes of the (CPU, contiguous) inputs.

    Examples
    --------
    >>> import torch
    >>> probe_hash(torch.zeros(2, 3)) == probe_hash(torch.zeros(2, 3))
    True
    """
    import torch

    t = inputs.detach().cpu().contiguous()
    h = hashlib.sha256()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _EstimateAttribute:
    """``Recorder.estimate(model, probe, ...)`` on the class; the entry estimate on an instance.

    On a recorder, ``rec.estimate`` is the dict of bytes the chosen settings will
    write (computed on entry, before training); on the class, it is a function
    computing the same dict without a store (see :meth:`Recorder._estimate_without_run`).
    """

    @overload
    def __get__(self, obj: None, owner: type[Recorder]) -> Callable[..., dict[str, Any]]: ...
    @overload
    def __get__(self, obj: Recorder, owner: type[Recorder]) -> dict[str, Any]: ...
    def __get__(self, obj: Recorder | None, owner: type[Recorder]) -> Any:
        if obj is None:
            return owner._estimate_without_run
        return obj._est


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"  # pragma: no cover


class Recorder:
    """Record a training run into a store from inside an ordinary training loop.

    Use it as a context manager and call :meth:`step` once per optimizer step,
    after ``loss.backward()`` and before ``optimizer.zero_grad()`` (so the
    gradient norm can be read; or pass ``grad_norm=``)::

        with Recorder(store, "my_run", model, probe=(x_probe, y_probe)) as rec:
            for step, (x, y) in enumerate(loader, start=rec.start_step):
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                rec.step(step, loss=loss)
                opt.zero_grad()

    Every ``every`` steps the four dimensionality metrics of each tracked layer's
    output, the loss and the gradient norm become one Phase 1 record of the
    experiment (``store.phase1(name)``), exactly as an imported study run. By
    default (``metrics_from="batch"``, the study's method) the metrics are taken
    from the layer outputs of that step's own training forward, which costs no
    extra forward pass; ``metrics_from="probe"`` runs the model on the fixed
    probe batch instead (eval mode, no gradients), so every record sees the same
    inputs.
    At snapshot steps it stores the state dict, the probe activations of the
    tracked layers (with the probe labels) and per-head attention probabilities.
    All store writes happen on a background thread.

    Parameters
    ----------
    store
        A writable :class:`~ndt_store.Store`.
    experiment
        Run name. If it exists with the same layers the run is resumed: steps up
        to the last stored one are ignored and :attr:`start_step` says where to go on.
    model
        The ``torch.nn.Module`` being trained.
    probe
        The fixed probe batch: ``inputs`` or ``(inputs, labels)``; the sample
        axis is first. Its SHA-256 is stored; a resumed run must use the same.
    every
        Phase 1 measurement interval in steps.
    snapshot_steps
        Steps at which to store a full snapshot.
    snapshot_every
        Also snapshot every this many steps.
    layers
        Tracked layers: module types and/or name patterns (see
        :func:`~ndt_store.capture.hooks.select_layers`); default Linear/Conv layers.
    attention
        Capture attention probabilities at snapshots: from every
        ``nn.MultiheadAttention`` (including inside ``nn.TransformerEncoderLayer``),
        from attention modules that return ``(output, weights)`` (Hugging Face
        ``GPT2Attention``, ``BertSelfAttention`` ...: a Hugging Face model is switched
        to eager attention for the snapshot probe forward only, whatever its
        ``attn_implementation``) and, when ``attention_kwargs`` is given and no
        module produced weights, from the model's output. Arrays are named by the
        module that produced them (``transformer.h.0.attn``). If attention modules
        exist but none returns weights, a :class:`~ndt_store.errors.NdtStoreWarning`
        is issued on entry.
    attention_kwargs
        Extra keyword arguments for snapshot probe forwards of models that return
        attentions when asked (e.g. ``{"output_attentions": True}``).
    attention_from_output
        ``f(output) -> sequence or mapping of (sample, head, query, key) tensors``;
        default ``output.attentions``. Sequences are named ``attentions.0``, ...
    weights, activations
        Whether snapshots include the state dict / the probe activations.
    jump_snapshots
        A :class:`~ndt_store.capture.trigger.JumpPolicy` (or ``True`` for the
        default one) to store before/during/after snapshots around jumps
        detected online. A copy of the model's state is kept (in host memory) at
        every measurement step; when a jump is found (in the writer thread, a few
        measurements later), the snapshots it wants are made on the training thread at the next
        :meth:`step` (or :meth:`flush`, or the end of the ``with`` block) by
        loading the kept state for one probe forward and putting the current
        state back: no probe forward runs at measurements without a jump.
    arch_name, dataset, total_steps, seed, metadata
        Run metadata (``num_steps`` is ``total_steps``); ``metadata`` is merged in.
    metrics_from
        ``"batch"`` (default): the Phase 1 metrics come from the last training-mode,
        gradient-enabled forward before :meth:`step` (hooks are attached only for
        the forward of a measurement step, which is predicted as the step after the
        previous call; if no such forward ran, that record falls back to the probe
        batch and a warning is logged once). ``"probe"``: from a forward on the
        fixed probe batch, so records are comparable sample for sample.
    metric_samples
        Use only the first this many samples (of the training batch or the probe)
        for the Phase 1 metrics; a measurement-only probe forward then runs on them
        alone (in eval mode each sample's outputs do not depend on the others).
        Default: all. The study measured 64-sample training batches.
    eval_probe
        Run the probe in eval mode (dropout off, batch-norm running stats). Either
        way a probe forward changes nothing training sees: buffers (batch-norm
        statistics), each module's train/eval flag and the torch random generators
        are put back afterwards.
    flush_every, flush_seconds, max_queue
        Phase 1 records per append, longest time records wait in memory, and
        queue length of the background writer.
    tokens
        Phase 1 metrics over tokens: a ``(sample, position, feature)`` output is
        measured as a ``(sample·position) × feature`` matrix instead of
        ``sample × (position·feature)``. ``None`` (default): for every tracked
        non-convolution layer whose output is 3-D with the probe's second axis as
        its second (a position axis). Stored activations keep
        ``(sample, position, feature)`` either way. ``metric_samples`` still counts
        sequences.
    max_bytes
        Budget over all snapshots of this session (scheduled, manual and
        jump-triggered), in uncompressed bytes; a snapshot that would exceed it is
        skipped with a warning naming the step and the budget.
    max_queue_bytes
        Bytes of host copies the writer queue may hold; :meth:`step` blocks
        (back-pressure) while a new item would exceed it. An item larger than
        the bound is admitted alone.
    attention_heads, attention_queries
        Store only these head indices / query positions of each attention map
        (long contexts); the stored ``head`` and ``query`` coordinates name them.
    attention_layers
        Store attention only of modules matching these names or ``fnmatch``
        patterns.
    """

    estimate = _EstimateAttribute()
    """``Recorder.estimate(model, probe, **options)``: the estimate without a run;
    ``rec.estimate``: the bytes this recorder's settings will write (set on entry)."""

    def __init__(
        self,
        store: Any,
        experiment: str,
        model: Any,
        *,
        probe: Any,
        every: int = 5,
        snapshot_steps: Iterable[int] = (),
        snapshot_every: int | None = None,
        layers: Sequence[str | type] | str | type | None = None,
        attention: bool = True,
        attention_kwargs: Mapping[str, Any] | None = None,
        attention_from_output: Callable[[Any], Any] | None = None,
        weights: bool = True,
        activations: bool = True,
        jump_snapshots: JumpPolicy | bool | None = None,
        arch_name: str | None = None,
        dataset: str = "unknown",
        total_steps: int | None = None,
        seed: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        metrics_from: str = "batch",
        metric_samples: int | None = None,
        eval_probe: bool = True,
        flush_every: int = 200,
        flush_seconds: float = 5.0,
        max_queue: int = 8,
        tokens: bool | None = None,
        max_bytes: int | None = None,
        max_queue_bytes: int = 512 * 2**20,
        attention_heads: Sequence[int] | None = None,
        attention_queries: Sequence[int] | None = None,
        attention_layers: Sequence[str] | None = None,
    ) -> None:
        if every < 1:
            raise InputError("every must be a positive number of steps", field="every", value=every)
        if metrics_from not in ("batch", "probe"):
            raise InputError(
                "metrics_from must be 'batch' or 'probe'", field="metrics_from", value=metrics_from
            )
        self.store = store
        self.experiment = experiment
        self.model = model
        self._probe_arg = probe
        self.every = int(every)
        self.snapshot_steps = {int(s) for s in snapshot_steps}
        self.snapshot_every = int(snapshot_every) if snapshot_every else None
        self._layer_spec = layers
        self.attention = bool(attention)
        self.attention_kwargs = dict(attention_kwargs or {})
        self.attention_from_output = attention_from_output
        self.capture_weights = bool(weights)
        self.capture_activations = bool(activations)
        if jump_snapshots is True:
            jump_snapshots = JumpPolicy()
        self.jump_policy: JumpPolicy | None = jump_snapshots or None
        self.arch_name = arch_name or type(model).__name__.lower()
        self.dataset = dataset
        self.total_steps = total_steps
        self.seed = seed
        self.extra_metadata = dict(metadata or {})
        self.eval_probe = bool(eval_probe)
        self.metrics_from = metrics_from
        self.metric_samples = None if metric_samples is None else int(metric_samples)
        self._writer_kw = {
            "flush_every": flush_every,
            "flush_seconds": flush_seconds,
            "max_queue": max_queue,
            "max_queue_bytes": max_queue_bytes,
        }
        self.tokens = tokens
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.budget = Budget(max_bytes=self.max_bytes)
        """Bytes and count of the snapshots stored by this session (``max_bytes``)."""
        self.skipped_snapshots: list[int] = []
        """Steps whose snapshot did not fit ``max_bytes``."""
        self.attention_heads = (
            None if attention_heads is None else [int(h) for h in attention_heads]
        )
        self.attention_queries = (
            None if attention_queries is None else [int(q) for q in attention_queries]
        )
        self.attention_layer_patterns = None if attention_layers is None else list(attention_layers)
        self.token_layers: list[str] = []
        """Tracked layers whose Phase 1 metrics are taken over tokens."""
        self.weight_aliases: dict[str, str] = {}
        """Tied parameters: ``{alias: stored name}``."""
        self.transposed_weights: list[str] = []
        """``(in, out)`` weights stored transposed as ``(out, in)``."""
        self.layers: list[str] = []
        self.attention_layers: list[str] = []
        self.start_step = 0
        """First step that will be recorded (after the last stored one when resuming)."""
        self.last_stored_step: int | None = None
        self._est: dict[str, Any] = {}
        self.results: dict[str, Any] = {}
        self.jumps: JumpSnapshots | None = None
        self._writer: BackgroundWriter | None = None
        self._stack: ExitStack | None = None
        self._t0 = 0.0
        self._steps_seen = 0
        self._last_step: int | None = None
        self._batch_hooks: ExitStack | None = None
        self._batch_outs: dict[str, Any] = {}
        self._batch_fallbacks = 0
        self.cost = RecordingCost()
        """What recording has cost the training thread so far (:class:`RecordingCost`)."""
        self._phase1: float | None = None  # this step() call's Phase 1 seconds, for self.cost
        self._deferred: queue.SimpleQueue[tuple[DeferredSnapshot, dict[str, Any]]]
        self._deferred = queue.SimpleQueue()

    # --------------------------------------------------------------- set-up
    def _split_probe(self) -> tuple[Any, np.ndarray | None]:
        torch = require("torch", "torch")
        probe = self._probe_arg
        labels = None
        if isinstance(probe, (tuple, list)):
            if len(probe) != 2:
                raise InputError("probe must be inputs or (inputs, labels)", field="probe")
            probe, labels = probe
        if not isinstance(probe, torch.Tensor):
            raise InputError(
                f"probe inputs must be a torch.Tensor (got {type(probe).__name__})", field="probe"
            )
        if labels is not None:
            labels = np.asarray(
                labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels
            )
            per_sample = tuple(probe.shape[:1])
            per_token = tuple(probe.shape[:2]) if probe.ndim >= 2 else None
            if labels.shape not in (per_sample, per_token):
                expected = f"{per_sample}" + (f" or, per token, {per_token}" if per_token else "")
                raise InputError(
                    f"probe labels have shape {labels.shape} but the probe inputs have shape "
                    f"{tuple(probe.shape)}; expected {expected}",
                    field="probe",
                )
        return probe, labels

    @classmethod
    def _estimate_without_run(cls, model: Any, probe: Any, **options: Any) -> dict[str, Any]:
        """Bytes a recording would write, without creating the run (no store needed).

        Runs the one dry probe forward a recording runs on entry (training is not
        changed by it) and returns what the instance attribute ``estimate`` would
        hold. ``options`` are the :class:`Recorder` keyword arguments.

        Returns
        -------
        dict
            ``phase1_record`` (bytes per record), ``phase1_records``, ``snapshot``
            (bytes per snapshot, uncompressed) and its parts ``snapshot_weights``,
            ``snapshot_activations``, ``snapshot_attention``; ``snapshot_stored``
            (what one snapshot keeps on disk: each tensor's first MiB compressed as
            the store compresses it, the ratio applied to the whole tensor),
            ``scheduled_snapshots``, ``jump_budget``, ``max_bytes``, ``total`` and
            ``summary`` (the line the recorder logs).

        Examples
        --------
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> est = Recorder.estimate(model, torch.zeros(8, 4), snapshot_steps=[0, 10])
        >>> est["snapshot_weights"], est["snapshot_activations"], est["snapshot"]
        (60, 96, 156)
        """
        torch = require("torch", "torch")
        rec = cls(None, options.pop("experiment", "estimate"), model, probe=probe, **options)
        rec._prepare(torch)
        return {**rec._est, "summary": rec.describe_estimate()}

    def __enter__(self) -> Recorder:
        torch = require("torch", "torch")
        self._stack = ExitStack()
        try:
            self._enter(torch)
        except BaseException:
            self._stack.close()
            raise
        return self

    def _prepare(self, torch: Any) -> None:
        """Everything decided before the store is touched (and by :meth:`estimate`)."""
        params = list(self.model.parameters())
        self._params = params
        self.device = params[0].device if params else torch.device("cpu")
        inputs, self.labels = self._split_probe()
        self.probe_hash = probe_hash(inputs)
        self.probe_inputs = inputs.to(self.device)
        self._modules = select_layers(self.model, self._layer_spec)
        self._attn_modules = attention_modules(self.model) if self.attention else {}
        self._attn_sources = module_attention_sources(self.model) if self.attention else {}
        state = self.model.state_dict()
        self.weight_aliases = tied_aliases(state)
        self.transposed_weights = [k for k in transposed_weights(self.model) if k in state]

        # one dry probe forward: which layers produce outputs, and their shapes
        outs, attn = self._probe(want_attention=self.attention)
        self.layers = [n for n in self._modules if n in outs]
        if not self.layers:
            raise InputError(
                f"none of the tracked layers {list(self._modules)} produced a tensor output "
                "on the probe batch",
                field="layers",
            )
        self._modules = {n: self._modules[n] for n in self.layers}
        self.token_layers = self._choose_token_layers(outs)
        if self.labels is not None and self.labels.ndim == 2 and not self.token_layers:
            raise InputError(
                f"per-token probe labels {self.labels.shape} need a tracked layer with a "
                "position axis (sample, position, feature)",
                field="probe",
            )
        self.attention_layers = list(attn)
        self._check_attention_found(attn)
        self._check_metric_cost(outs)
        self._est = self._estimate(outs, attn)

    def _choose_token_layers(self, outs: Mapping[str, Any]) -> list[str]:
        torch = require("torch", "torch")
        if self.tokens is False:
            return []
        seq = self.probe_inputs.shape[1] if self.probe_inputs.ndim >= 2 else None

        def has_position(name: str) -> bool:
            t = outs[name]
            conv = isinstance(self._modules[name], torch.nn.modules.conv._ConvNd)
            return t.ndim == 3 and not conv and (self.tokens or t.shape[1] == seq)

        chosen = [n for n in self.layers if has_position(n)]
        if self.tokens and not chosen:
            raise InputError(
                "tokens=True but no tracked layer has a (sample, position, feature) output",
                field="tokens",
            )
        return chosen

    def _check_metric_cost(self, outs: Mapping[str, Any]) -> None:
        """Warn when a layer's Phase 1 metrics need a very large eigendecomposition."""
        big = []
        for name in self.layers:
            t = self._metric_view(name, outs[name][: self.metric_samples])
            rows, feats = int(t.shape[0]), int(t[0].numel()) if t.shape[0] else 0
            if min(rows, feats) > _LARGE_GRAM:
                big.append(f"{name} ({rows} x {feats})")
        if big:
            log.warning(
                "%s: Phase 1 metrics of %s need a Gram eigendecomposition larger than %d x %d "
                "every %d steps (on the probe's batch size); pass metric_samples=, layers= "
                "or tokens=False to make them cheaper",
                self.experiment,
                ", ".join(big[:4]) + (" ..." if len(big) > 4 else ""),
                _LARGE_GRAM,
                _LARGE_GRAM,
                self.every,
            )

    def _check_attention_found(self, attn: Mapping[str, Any]) -> None:
        if not self.attention or attn:
            return
        asked = bool(self.attention_kwargs or self.attention_from_output)
        if not (asked or self._attn_sources):
            return  # a model without attention: nothing to say
        found = ", ".join(list(self._attn_sources)[:4]) or "none"
        msg = (
            f"{self.experiment}: attention was asked for but the probe forward returned no "
            f"attention weights (attention modules: {found}); snapshots will have no "
            "attention. Modules must return (output, weights) or pass attention_from_output="
        )
        log.warning(msg)
        warnings.warn(msg, NdtStoreWarning, stacklevel=4)

    def _enter(self, torch: Any) -> None:
        assert self._stack is not None
        self._prepare(torch)
        self._stack.enter_context(self.store.writer(self.experiment))
        self.store.create_run(self.experiment, self._metadata(), self.layers)
        self._resume_state()
        log.warning(self.describe_estimate())
        if self.max_bytes is not None and self._est["snapshot"] > self.max_bytes:
            log.warning(
                "%s: one snapshot (%s) exceeds max_bytes=%d; no snapshot will be stored",
                self.experiment,
                _human(self._est["snapshot"]),
                self.max_bytes,
            )

        self.jumps = self.jump_policy.build(self._write_triggered) if self.jump_policy else None
        if self.jumps is not None:
            self.jumps.mark_stored(self.store.snapshot_steps(self.experiment))
        self._writer = BackgroundWriter(
            self.store,
            self.experiment,
            self.layers,
            labels=self.labels,
            probe_hash=self.probe_hash,
            on_record=self._on_record if self.jumps is not None else None,
            on_snapshot=self.jumps.mark_stored_one if self.jumps else None,
            **self._writer_kw,  # type: ignore[arg-type]
        )
        if self.metrics_from == "batch":
            self._stack.callback(self._disarm)
            self._arm()
        self._t0 = time.perf_counter()

    # The training forward of a measurement step is caught by hooks attached just
    # for it (armed after the previous step() call, removed by the next), so other
    # steps run with no hooks at all.
    def _arm(self) -> None:
        torch = require("torch", "torch")
        k = self.metric_samples

        def keep(name: str, module: Any, t: Any) -> Any:
            # a copy: the training loop may modify the output in place afterwards
            return (t if k is None else t[:k]).clone()

        def training_forward(module: Any) -> bool:
            return bool(module.training) and torch.is_grad_enabled()

        self._disarm()
        stack = ExitStack()
        self._batch_outs = stack.enter_context(
            capture_outputs(self._modules, transform=keep, when=training_forward)
        )
        self._batch_hooks = stack

    def _disarm(self) -> dict[str, Any]:
        """Remove the batch hooks; return what they caught."""
        got, self._batch_outs = self._batch_outs, {}
        if self._batch_hooks is not None:
            self._batch_hooks.close()
            self._batch_hooks = None
        return got

    def _resume_state(self) -> None:
        meta = self.store.metadata(self.experiment)
        stored_hash = meta.get("capture", {}).get(D.PROBE_HASH)
        if stored_hash is not None and stored_hash != self.probe_hash:
            raise InputError(
                f"experiment {self.experiment!r} was recorded with probe batch "
                f"{stored_hash[:12]}; this probe batch is {self.probe_hash[:12]}",
                field="probe",
            )
        steps = self.store.phase1(self.experiment)[D.STEP].values
        self._stored_snapshots = set(self.store.snapshot_steps(self.experiment))
        # resume after the last Phase 1 record, from step 0 when there is none (a
        # snapshot committed after it, whose record was still buffered when the run
        # died, is kept and not re-taken)
        self.last_stored_step = int(steps[-1]) if steps.size else None
        self.start_step = 0 if self.last_stored_step is None else self.last_stored_step + 1
        if self.last_stored_step is not None:
            log.info(
                "resuming %r after step %d (%d records stored)",
                self.experiment,
                self.last_stored_step,
                steps.size,
            )

    def _metadata(self) -> dict[str, Any]:
        torch = require("torch", "torch")
        from ndt_store._version import __version__

        n_params = sum(int(p.numel()) for p in self.model.parameters())
        capture = {
            "recorder": "ndt_store.capture.Recorder",
            "model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
            "num_params": n_params,
            "trainable_params": sum(
                int(p.numel()) for p in self.model.parameters() if p.requires_grad
            ),
            "layers": self.layers,
            "attention_layers": self.attention_layers,
            D.PROBE_HASH: self.probe_hash,
            "probe_shape": list(self.probe_inputs.shape),
            "metric_samples": self.metric_samples or int(self.probe_inputs.shape[0]),
            "metrics_from": "training batch (outputs of the training forward)"
            if self.metrics_from == "batch"
            else "probe batch",
            "probe_source": "fixed probe batch, eval mode"
            if self.eval_probe
            else "fixed probe batch, train mode",
            "stable_rank": "spectral (||A||_F^2 / ||A||_2^2)",
            "every": self.every,
            "device": str(self.device),
            "seed": self.seed,
            "torch_initial_seed": int(torch.initial_seed()),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "numpy": np.__version__,
                "ndt_store": __version__,
            },
            "estimate_bytes": self._est,
            "phase1_samples": {
                n: "tokens (sample x position)" if n in self.token_layers else "sequences"
                for n in self.layers
            },
            "tied_parameters": dict(self.weight_aliases),
            "transposed_weights": list(self.transposed_weights),
            "attention_implementation": "eager for snapshot probe forwards"
            if self._attn_sources and can_switch_to_eager(self.model)
            else None,
            "attention_heads": self.attention_heads,
            "attention_queries": self.attention_queries,
            "attention_layer_patterns": self.attention_layer_patterns,
            "max_bytes": self.max_bytes,
        }
        meta: dict[str, Any] = {
            D.ARCH_NAME: self.arch_name,
            D.DATASET: self.dataset,
            D.MEASUREMENT_INTERVAL: self.every,
            D.ARCHITECTURE_PARAMS: {"num_params": n_params, "depth": len(self.layers)},
            "capture": capture,
        }
        if self.weight_aliases:
            meta[D.WEIGHT_ALIASES] = dict(self.weight_aliases)
        if self.attention_heads is not None or self.attention_queries is not None:
            meta[D.ATTENTION_SUBSET] = {
                D.HEAD: self.attention_heads,
                D.QUERY: self.attention_queries,
            }
        if self.total_steps is not None:
            meta[D.NUM_STEPS] = int(self.total_steps)
        meta.update(self.extra_metadata)
        return meta

    def _estimate(self, outs: Mapping[str, Any], attn: Mapping[str, Any]) -> dict[str, Any]:
        record = _RECORD_BYTES_PER_LAYER * len(self.layers) + _RECORD_BYTES_FIXED
        w = sum(
            int(v.numel() * v.element_size())
            for k, v in self.model.state_dict().items()
            if k not in self.weight_aliases
        )
        a = sum(int(outs[n].numel() * outs[n].element_size()) for n in self.layers)
        t = sum(int(v.numel() * v.element_size()) for v in attn.values())
        snap = (w if self.capture_weights else 0) + (a if self.capture_activations else 0) + t
        # what a snapshot keeps on disk: each tensor compressed as the store will do it
        stored = sum(_stored_bytes(t_, adaptive=True) for t_ in attn.values())
        if self.capture_weights:
            stored += sum(
                _stored_bytes(v)
                for k, v in self.model.state_dict().items()
                if k not in self.weight_aliases
            )
        if self.capture_activations:
            stored += sum(_stored_bytes(outs[n]) for n in self.layers)
        total = self.total_steps
        n_records = None if total is None else total // self.every + 1
        scheduled: int | None = None
        if total is not None:
            steps = {s for s in self.snapshot_steps if s < total}
            if self.snapshot_every:
                steps |= set(range(0, total, self.snapshot_every))
            scheduled = len(steps)
        elif not self.snapshot_every:
            scheduled = len(self.snapshot_steps)
        jump_bytes: int | None = 0
        if self.jump_policy is not None:
            caps = []
            if self.jump_policy.max_bytes is not None:
                caps.append(int(self.jump_policy.max_bytes))
            if self.jump_policy.max_count is not None:
                caps.append(int(self.jump_policy.max_count) * snap)
            jump_bytes = min(caps) if caps else None
        snapshots = (
            None if scheduled is None or jump_bytes is None else scheduled * snap + jump_bytes
        )
        if self.max_bytes is not None:  # every snapshot counts against max_bytes
            snapshots = self.max_bytes if snapshots is None else min(snapshots, self.max_bytes)
        parts = [None if n_records is None else n_records * record, snapshots]
        return {
            "phase1_record": record,
            "phase1_records": n_records,
            "snapshot": snap,
            "snapshot_stored": stored,
            "snapshot_weights": w,
            "snapshot_activations": a,
            "snapshot_attention": t,
            "scheduled_snapshots": scheduled,
            "jump_budget": jump_bytes,
            "max_bytes": self.max_bytes,
            "total": None if any(p is None for p in parts) else int(sum(parts)),  # type: ignore[arg-type]
        }

    def describe_estimate(self) -> str:
        """One line: what the chosen capture settings will write (uncompressed; a snapshot's
        bytes on disk too, estimated by compressing each tensor's first MiB at entry)."""
        e = self._est
        recs = e["phase1_records"]
        text = (
            f"{self.experiment}: {len(self.layers)} layers, Phase 1 "
            f"{_human(e['phase1_record'])}/record"
            + (f" x {recs} = {_human(recs * e['phase1_record'])}" if recs is not None else "")
            + f"; snapshot {_human(e['snapshot'])} (~{_human(e['snapshot_stored'])} on disk; "
            f"weights {_human(e['snapshot_weights'])}, "
            f"activations {_human(e['snapshot_activations'])}, "
            f"attention {_human(e['snapshot_attention'])})"
        )
        if e["scheduled_snapshots"] is not None:
            text += f" x {e['scheduled_snapshots']} scheduled"
        if self.jump_policy is not None:
            jb = e["jump_budget"]
            text += "; jump budget " + ("unlimited" if jb is None else f"<= {_human(jb)}")
        if e["total"] is not None:
            text += f"; total ~ {_human(e['total'])}"
        if self.max_bytes is not None:
            text += f"; snapshot budget max_bytes {_human(self.max_bytes)}"
        return text

    # -------------------------------------------------------------- capture
    def _probe(
        self, *, want_attention: bool, samples: int | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        torch = require("torch", "torch")
        inputs = self.probe_inputs if samples is None else self.probe_inputs[:samples]
        kwargs = self.attention_kwargs if want_attention else {}
        with ExitStack() as stack:
            # buffers, train/eval flags and RNGs are put back: training never sees this
            stack.enter_context(untouched(self.model))
            # copies: a later in-place op (ReLU(inplace=True)) would change the output
            outs = stack.enter_context(capture_outputs(self._modules, transform=_copy))
            attn: dict[str, Any] = {}
            module_attn: dict[str, Any] = {}
            if want_attention and self._attn_modules:
                attn = stack.enter_context(capture_attention(self._attn_modules))
            if want_attention and self._attn_sources:
                stack.enter_context(eager_attention(self.model))
                module_attn = stack.enter_context(capture_module_attention(self._attn_sources))
            stack.enter_context(torch.no_grad())
            if self.eval_probe:
                self.model.eval()
            output = self.model(inputs, **kwargs)
        attn = {**attn, **module_attn}
        if want_attention and (
            self.attention_from_output is not None or (self.attention_kwargs and not attn)
        ):
            attn.update(self._output_attention(output))
        return dict(outs), self._attention_subset(attn)

    def _attention_subset(self, attn: dict[str, Any]) -> dict[str, Any]:
        """The stored part of each attention map (``attention_layers/heads/queries``)."""
        pats = self.attention_layer_patterns
        if pats is not None:
            attn = {n: t for n, t in attn.items() if any(fnmatch.fnmatchcase(n, p) for p in pats)}
        out = {}
        for name, t in attn.items():
            if self.attention_heads is not None:
                t = t[:, self.attention_heads]
            if self.attention_queries is not None:
                t = t[:, :, self.attention_queries]
            out[name] = t
        return out

    def _output_attention(self, output: Any) -> dict[str, Any]:
        if self.attention_from_output is not None:
            got = self.attention_from_output(output)
        else:
            got = getattr(output, "attentions", None)
        if got is None:
            raise InputError(
                "the model output has no attentions; pass attention_from_output=",
                field="attention_from_output",
            )
        if isinstance(got, Mapping):
            items = list(got.items())
        else:
            items = [(f"attentions.{i}", t) for i, t in enumerate(got)]
        return {name: t.detach() for name, t in items if t is not None}

    def _grad_norm(self) -> Any:
        torch = require("torch", "torch")
        # the parameter list is taken once, on entry (walking the modules every
        # measurement cost more than the norms themselves)
        grads = [p.grad.detach() for p in self._params if p.grad is not None]
        if not grads:
            return None
        norms = (
            torch._foreach_norm(grads)
            if hasattr(torch, "_foreach_norm")
            else [torch.linalg.vector_norm(g) for g in grads]
        )
        if len({n.device for n in norms}) > 1:  # a model split across devices
            norms = [n.to(self.device) for n in norms]
        return torch.linalg.vector_norm(torch.stack(norms).to(torch.float64))

    def _snapshot_payload(self, outs: Mapping[str, Any], attn: Mapping[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        if self.capture_weights:
            state = stored_state(
                self.model.state_dict(),
                aliases=self.weight_aliases,
                transposed=self.transposed_weights,
            )
            payload[D.WEIGHTS] = {k: to_host(v) for k, v in state.items()}
        if self.capture_activations:
            payload[D.ACTIVATIONS] = {n: to_host(outs[n]) for n in self.layers if n in outs}
        if attn:
            payload[D.ATTENTION] = {n: to_host(t) for n, t in attn.items()}
        return payload

    def _metric_view(self, name: str, act: Any) -> Any:
        """A layer's output as the Phase 1 metrics see it: tokens as samples or not."""
        if name in self.token_layers:
            return act.reshape(act.shape[0] * act.shape[1], *act.shape[2:])
        return act

    def _admit(self, step: int, trigger: str) -> bool:
        """Whether a snapshot at ``step`` still fits ``max_bytes`` (and spend it if so)."""
        size = int(self._est["snapshot"])
        if self.budget.fits(size):
            self.budget.spend(size)
            return True
        self.skipped_snapshots.append(int(step))
        if len(self.skipped_snapshots) == 1:
            log.warning(
                "%s: snapshot budget reached at step %d: max_bytes=%d (%s), %d snapshots "
                "stored (%s); this %s snapshot and later ones that do not fit are skipped",
                self.experiment,
                step,
                self.max_bytes,
                _human(self.max_bytes or 0),
                self.budget.used_count,
                _human(self.budget.used_bytes),
                trigger,
            )
        return False

    def is_scheduled(self, step: int) -> bool:
        """Whether ``step`` is a scheduled snapshot step."""
        return step in self.snapshot_steps or bool(
            self.snapshot_every and step % self.snapshot_every == 0
        )

    def step(
        self,
        step: int,
        *,
        loss: Any = None,
        grad_norm: Any = None,
        epoch: int | None = None,
    ) -> bool:
        """Record training ``step`` if it is a measurement or snapshot step.

        Parameters
        ----------
        step
            The training step just taken (increasing).
        loss
            The step's loss (tensor or float); stored with the Phase 1 record.
        grad_norm
            Total gradient norm; default: computed from the parameters' ``.grad``
            (NaN if they were already zeroed/set to ``None``).
        epoch
            Epoch number, stored with the record (``-1`` if not given).

        Returns
        -------
        bool
            Whether anything was captured at this step.
        """
        if self._writer is None:
            raise NdtStoreError("Recorder.step() called outside its `with` block")
        step = int(step)
        if self._last_step is not None and step <= self._last_step:
            raise InputError(
                f"steps must increase: got {step} after {self._last_step}", field="step"
            )
        start = time.perf_counter()
        self._phase1 = None
        captured = False
        batch = self._disarm() if self.metrics_from == "batch" else {}
        try:
            if self.jumps is not None:
                self._make_deferred()
            captured = self._record(step, loss, grad_norm, epoch, batch)
            return captured
        finally:
            if self.metrics_from == "batch" and (step + 1) % self.every == 0:
                self._arm()
            end = time.perf_counter()
            self.cost.add_step(start, end, captured=captured, phase1=self._phase1)
            self._warn_if_costly()

    def _warn_if_costly(self) -> None:
        """Warn once when recording holds training back by more than a quarter."""
        c = self.cost
        if not c.should_warn():
            return
        log.warning(
            "%s: recording has added %.0f%% to the training time so far: Phase 1 metrics "
            "%.0f ms per record (every %d steps, %d layers), probe forwards and snapshots "
            "%.0f ms per record, against %.1f ms per training step. To spend less: a larger "
            "every=, tokens=False, metric_samples=, fewer layers=, or fewer snapshots "
            "(docs: 'Recording real models', overhead)",
            self.experiment,
            100 * c.share,
            1e3 * c.phase1_seconds / max(1, c.phase1_records),
            self.every,
            len(self.layers),
            1e3 * (c.seconds - c.phase1_seconds) / max(1, c.records),
            1e3 * c.training_seconds / max(1, c.steps),
        )

    def _record(
        self, step: int, loss: Any, grad_norm: Any, epoch: int | None, batch: dict[str, Any]
    ) -> bool:
        assert self._writer is not None
        self._last_step = step
        self._steps_seen += 1
        if self.last_stored_step is not None and step <= self.last_stored_step:
            return False
        measure = step % self.every == 0
        snap = self.is_scheduled(step) and step not in self._stored_snapshots
        snap = snap and self._admit(step, "scheduled")  # within max_bytes
        ring = measure and self.jumps is not None
        if not (measure or snap):
            self._writer._check()
            return False
        from_batch = measure and self.metrics_from == "batch" and set(batch) >= set(self.layers)
        if measure and self.metrics_from == "batch" and not from_batch:
            self._batch_fallbacks += 1
            if self._batch_fallbacks == 1:
                log.warning(
                    "step %d: no training forward was seen since the previous Recorder.step "
                    "call; its Phase 1 metrics are taken on the probe batch (call step() "
                    "after every training step, or use metrics_from='probe')",
                    step,
                )
        outs: dict[str, Any] = {}
        attn: dict[str, Any] = {}
        if snap or not from_batch:
            full = snap or not self.eval_probe
            outs, attn = self._probe(
                want_attention=self.attention and snap,
                samples=None if full else self.metric_samples,
            )
        if snap:
            payload = self._snapshot_payload(outs, attn)
            self._writer.put(PendingSnapshot(step, payload, {"trigger": "scheduled"}))
        # the budget counts a deferred snapshot as the full snapshot it stands for
        kept = DeferredSnapshot(step, self._kept_state(), self._est["snapshot"]) if ring else None
        if measure:
            started = time.perf_counter()
            k = self.metric_samples
            acts = [
                self._metric_view(n, batch[n] if from_batch else outs[n][:k]) for n in self.layers
            ]
            on_cpu = all(a.device.type == "cpu" for a in acts)
            if grad_norm is None:
                grad_norm = self._grad_norm()
            self._writer.put(
                PendingRecord(
                    step,
                    # CPU: the writer thread does the eigendecompositions (in parallel
                    # with training); accelerators: on the device, where the data are
                    # (on a GPU they hold the training thread: see RecordingCost)
                    [] if on_cpu else [to_host(s) for s in gram_singular_values(acts)],
                    loss=_host_scalar(loss),
                    grad_norm=_host_scalar(grad_norm),
                    epoch=-1 if epoch is None else int(epoch),
                    snapshot=kept,
                    # batch and probe outputs are private copies already (the snapshot
                    # payload takes its own)
                    activations=[HostTensor(a) for a in acts] if on_cpu else None,
                )
            )
            self._phase1 = time.perf_counter() - started
        return True

    def snapshot(self, step: int, **info: Any) -> None:
        """Store a full snapshot now, at training ``step`` (``info``: JSON scalars)."""
        if self._writer is None:
            raise NdtStoreError("Recorder.snapshot() called outside its `with` block")
        if not self._admit(int(step), "manual"):
            return
        outs, attn = self._probe(want_attention=self.attention)
        self._writer.put(
            PendingSnapshot(
                int(step), self._snapshot_payload(outs, attn), {"trigger": "manual", **info}
            )
        )

    def _on_record(self, step: int, rows: dict[str, np.ndarray], snap: Any) -> None:
        assert self.jumps is not None
        if snap is None:
            return
        sr = {layer: float(row[0]) for layer, row in rows.items()}
        self.jumps.observe(step, sr, snap)

    def _write_triggered(self, step: int, snap: DeferredSnapshot, info: dict[str, Any]) -> None:
        # writer thread: the snapshot is made on the training thread (it needs the model)
        self._deferred.put((snap, info))

    def _state_copy(self) -> dict[str, Any]:
        """A copy of the model's state on its devices (to put it back after a rewind)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _kept_state(self) -> dict[str, HostTensor]:
        """A host copy of the model's state for a deferred snapshot: kept in host memory
        (asynchronously from a GPU), as several records may wait in the writer's queue."""
        return {
            k: to_host(v)
            for k, v in self.model.state_dict().items()
            if k not in self.weight_aliases
        }

    def _make_deferred(self) -> int:
        """Make the jump snapshots the writer asked for since the last call (training
        thread): load each kept state for one probe forward, then put the current state
        back. Returns how many were made."""
        todo: list[tuple[DeferredSnapshot, dict[str, Any]]] = []
        while True:
            try:
                todo.append(self._deferred.get_nowait())
            except queue.Empty:
                break
        if not todo:
            return 0
        torch = require("torch", "torch")
        assert self._writer is not None
        now = self._state_copy()
        try:
            for kept, info in todo:
                if not self._admit(kept.step, str(info.get("trigger", "jump"))):
                    continue
                with torch.no_grad():
                    self.model.load_state_dict(
                        {k: h.ready() for k, h in kept.state.items()},
                        strict=not self.weight_aliases,  # aliases share the kept tensor
                    )
                outs, attn = self._probe(want_attention=self.attention)
                payload = self._snapshot_payload(outs, attn)  # the kept weights
                self._writer.put(PendingSnapshot(kept.step, payload, info))
        finally:
            with torch.no_grad():
                self.model.load_state_dict(now)
        return len(todo)

    def flush(self) -> None:
        """Block until everything recorded so far is committed to the store."""
        if self._writer is not None:
            self._writer.flush()
            while self._make_deferred():  # jump snapshots found by that flush
                self._writer.flush()

    def set_result(self, **fields: Any) -> None:
        """Metadata to store when the run ends (e.g. ``final_accuracy=0.97``)."""
        self.results.update(fields)

    # -------------------------------------------------------------- tear-down
    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._stack is not None
        try:
            writer_error: BaseException | None = None
            if self._writer is not None:
                try:
                    if self.jumps is not None:
                        self.flush()  # jumps found in the last records get their snapshots
                    self._writer.close()
                except BaseException as err:
                    writer_error = err
            if self.jumps is not None:
                self.jumps.close()
            if writer_error is None:
                self.store.update_metadata(self.experiment, **self._final_metadata(exc_type))
        finally:
            self._writer = None
            self._stack.close()
        if writer_error is not None:
            if exc_type is None:
                raise writer_error
            log.error("recording %r also failed: %s", self.experiment, writer_error)

    def _final_metadata(self, exc_type: Any) -> dict[str, Any]:
        meta = self.store.metadata(self.experiment)
        capture = dict(meta.get("capture", {}))
        w = self._writer
        capture.update(
            {
                "status": "complete" if exc_type is None else f"interrupted ({exc_type.__name__})",
                "last_step": self._last_step,
                "append_seconds": None if w is None else round(w.append_seconds, 4),
                "snapshot_seconds": None if w is None else round(w.snapshot_seconds, 4),
                "batch_metric_fallbacks": self._batch_fallbacks,
                "snapshot_budget": {
                    "max_bytes": self.max_bytes,
                    "used_bytes": self.budget.used_bytes,
                    "stored": self.budget.used_count,
                    "skipped_steps": list(self.skipped_snapshots),
                },
                "peak_queue_bytes": None if w is None else w.peak_queued_bytes,
                "writer_metric_seconds": None if w is None else round(w.metric_seconds, 4),
                "training_thread_cost": self.cost.as_dict(),
            }
        )
        if self.jumps is not None:
            capture["online_jumps"] = [
                {"step": j.step, "layers": list(j.layers), "z": round(j.z, 4)}
                for j in self.jumps.jumps
            ]
            capture["jump_snapshots"] = [{"step": s, "role": r} for s, r in self.jumps.written]
            capture["jump_budget_used"] = {
                "bytes": self.jumps.budget.used_bytes,
                "count": self.jumps.budget.used_count,
            }
        fields: dict[str, Any] = {"capture": capture}
        elapsed = time.perf_counter() - self._t0 + float(meta.get(D.ELAPSED_TIME) or 0.0)
        fields[D.ELAPSED_TIME] = round(elapsed, 3)
        if self.total_steps is None and self._last_step is not None:
            fields[D.NUM_STEPS] = self._last_step + 1
        fields.update(self.results)
        return fields


def _copy(name: str, module: Any, t: Any) -> Any:
    return t.clone()


def _host_scalar(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "detach"):
        return to_host(value.detach().reshape(-1)[:1])
    return float(value)
