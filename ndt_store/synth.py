"""Synthetic stores of any size, written through the public :class:`~ndt_store.store.Store` API.

The generated data look like the study's: Phase 1 series are smooth saturating
curves with small noise and a few planted jumps; layer sets and names differ per
architecture (``network.0``, ``conv_layers.1``, ``transformer.layers.0.linear1`` ...);
attention rows are softmax probabilities whose entropy drifts smoothly over
training and changes abruptly at a planted step; activations have a power-law
singular-value spectrum whose decay steepens over training; weights drift
smoothly with a planted jump. The planted jumps are recorded in each
experiment's metadata (``synth``) so tests can check that they are found.

Snapshot steps are generated from a few precomputed arrays by convex blending,
in batches of at most :data:`BATCH_BYTES`, and each batch is committed by one
:meth:`~ndt_store.store.Store.write_snapshots` call (still one chunk per step
and array), so gigabytes are produced at close to disk speed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ndt_store import _dims as D
from ndt_store.errors import InputError
from ndt_store.store import Store, open_store

__all__ = ["SynthExperiment", "SynthSpec", "synth_experiment", "synth_nbytes", "synth_store"]

KINDS: tuple[str, ...] = (D.PHASE1, D.ATTENTION, D.ACTIVATIONS, D.WEIGHTS)
"""What :func:`synth_store` can write."""

_ARCHS = ("mlp", "cnn", "transformer")
_DATASETS = ("mnist", "fashion_mnist", "qmnist", "ag_news")
_DRIFT = 0.3

BATCH_BYTES = 64 * 2**20
"""Largest batch of snapshot steps :func:`synth_store` generates and commits at once
(uncompressed tensor bytes; a step larger than this is a batch of its own). Bounds
the memory of each writing thread to about this much."""


@dataclass(frozen=True)
class SynthSpec:
    """Sizes of a synthetic store (see :func:`synth_store` for their meaning)."""

    experiments: int = 3
    steps: int = 20
    layers: int = 3
    heads: int = 4
    seq: int = 16
    samples: int = 8
    features: int = 32
    records: int = 400
    kinds: tuple[str, ...] = KINDS

    def snapshot_nbytes(self) -> int:
        """Uncompressed bytes of one experiment's tensors at one step."""
        n = 0
        if D.ATTENTION in self.kinds:
            n += self.layers * self.samples * self.heads * self.seq * self.seq * 4
        if D.ACTIVATIONS in self.kinds:
            n += self.layers * self.samples * self.features * 4
        if D.WEIGHTS in self.kinds:
            n += self.layers * self.features * self.features * 4
        return n


def synth_nbytes(**sizes: Any) -> int:
    """Uncompressed size in bytes of the tensors :func:`synth_store` would write.

    Examples
    --------
    >>> synth_nbytes(experiments=1, steps=10, layers=1, heads=2, seq=4, samples=1,
    ...              kinds=("attention",))
    1280
    """
    fields: dict[str, Any] = {k: tuple(v) if k == "kinds" else v for k, v in sizes.items()}
    spec = SynthSpec(**fields)
    return spec.experiments * spec.steps * spec.snapshot_nbytes()


def phase1_layer_names(arch: str, n: int) -> list[str]:
    """Layer names in the study's style for an architecture family.

    Examples
    --------
    >>> phase1_layer_names("transformer", 3)
    ['input_proj', 'transformer.layers.0.linear1', 'transformer.layers.0.linear2']
    """
    if arch == "mlp":
        return [f"network.{2 * i}" for i in range(n)]
    if arch == "cnn":
        n_conv = max(1, (2 * n) // 3)
        return [f"conv_layers.{i}" for i in range(n_conv)] + [
            f"fc_layers.{i}" for i in range(n - n_conv)
        ]
    names = ["input_proj"]
    i = 0
    while len(names) < n:
        names.append(f"transformer.layers.{i // 2}.linear{1 + i % 2}")
        i += 1
    return names[:n]


def phase1_dataset(
    rng: np.random.Generator, layers: Sequence[str], records: int, interval: int
) -> tuple[xr.Dataset, list[list[Any]]]:
    """One experiment's Phase 1 series and its planted stable-rank jumps.

    Returns the dataset over ``(step, layer)`` and ``[[layer, record index, size], ...]``.
    """
    n_l = len(layers)
    t = np.arange(records, dtype=np.float64)[:, None]
    start = rng.uniform(1.5, 4.0, n_l)
    rise = rng.uniform(-1.0, 6.0, n_l)
    tau = rng.uniform(0.05, 0.4, n_l) * max(records, 1)
    noise = rng.uniform(1e-3, 2e-2, n_l)
    sr = start + rise * (1.0 - np.exp(-t / tau)) + noise * rng.standard_normal((records, n_l))
    jumps: list[list[Any]] = []
    if records >= 10:
        for j in rng.choice(n_l, size=max(1, n_l // 3), replace=False):
            index = int(rng.integers(records // 10, records - records // 10))
            size = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5) * (abs(rise[j]) + 1.0))
            if float(np.min(sr[index:, j])) - abs(size) < 1.05:  # keep stable rank >= 1: jump up
                size = abs(size)
            sr[index:, j] += size
            jumps.append([layers[j], index, size])
    sr = np.maximum(sr, 1.0)
    pr = sr * rng.uniform(1.4, 2.2, n_l) + 0.05 * rng.standard_normal((records, n_l))
    er = np.floor(sr * rng.uniform(1.5, 3.0, n_l))
    nn = np.sqrt(sr) * rng.uniform(1.0, 1.6, n_l)
    loss = 2.3 * np.exp(-t[:, 0] / (0.3 * max(records, 1))) + 0.05
    loss = loss + 0.01 * rng.standard_normal(records)
    steps = np.arange(records, dtype=np.int64) * interval
    ds = xr.Dataset(
        {
            D.STABLE_RANK: ((D.STEP, D.LAYER), sr),
            D.PARTICIPATION_RATIO: ((D.STEP, D.LAYER), pr),
            D.EFFECTIVE_RANK_90: ((D.STEP, D.LAYER), er),
            D.NUCLEAR_NORM_RATIO: ((D.STEP, D.LAYER), nn),
            D.LOSS: (D.STEP, loss),
            D.GRAD_NORM: (D.STEP, np.abs(rng.standard_normal(records)) + 0.1),
            D.EPOCH: (D.STEP, 1 + steps // 500),
        },
        coords={D.STEP: steps, D.LAYER: np.asarray(layers, dtype=str)},
    )
    return ds, jumps


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


class _AttentionGen:
    """Rows blended between two softmax states, switching state at a planted step."""

    def __init__(self, rng: np.random.Generator, spec: SynthSpec, causal: bool) -> None:
        shape = (spec.samples, spec.heads, spec.seq, spec.seq)
        temp = rng.uniform(0.2, 4.0, spec.heads).astype(np.float32)[None, :, None, None]
        mask = np.triu(np.ones((spec.seq, spec.seq), bool), 1) if causal else None

        def state(sharpen: float) -> np.ndarray:
            logits = rng.standard_normal(shape, dtype=np.float32) * (temp * np.float32(sharpen))
            if mask is not None:
                logits[..., mask] = -np.inf
            return _softmax(logits)

        # the planted jump switches to sharper (lower-entropy) attention
        self.p0, self.p1, self.p2 = state(1.0), state(1.0), state(3.0)
        # smooth drift towards p1 (a third of the way over the run)
        self.d1 = (self.p1 - self.p0) * np.float32(_DRIFT)
        self.d2 = (self.p1 - self.p2) * np.float32(_DRIFT)

    def at(self, alpha: float, jumped: bool, *, out: np.ndarray) -> np.ndarray:
        """The attention at ``alpha`` (0..1 through the run), written into ``out``."""
        base, diff = (self.p2, self.d2) if jumped else (self.p0, self.d1)
        np.multiply(diff, np.float32(alpha), out=out)
        out += base
        return out


def _orthonormal(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return q.astype(np.float32)


def synth_store(
    location: str | os.PathLike[str] | Store,
    *,
    experiments: int = 3,
    steps: int = 20,
    layers: int = 3,
    heads: int = 4,
    seq: int = 16,
    samples: int = 8,
    features: int = 32,
    records: int = 400,
    kinds: Iterable[str] = KINDS,
    seed: int = 0,
    interval: int = 5,
    snapshot_every: int = 10,
    causal: bool = False,
    prefix: str = "synth",
    storage_options: dict[str, Any] | None = None,
    progress: bool = False,
    workers: int = 4,
) -> Store:
    """Write a synthetic store of any size through the public Store API.

    Parameters
    ----------
    location
        Store location (directory or URL) or an open :class:`Store`.
    experiments
        Number of experiments; architectures and datasets cycle through
        mlp/cnn/transformer and mnist/fashion_mnist/qmnist/ag_news.
    steps
        Snapshot steps per experiment (training steps ``0, snapshot_every, ...``).
    layers
        Tensor layers per experiment; Phase 1 layer counts vary around it.
    heads, seq, samples, features
        Attention heads, sequence length, probe-batch size, activation width
        (weights are ``features × features``).
    records
        Phase 1 records per experiment (one every ``interval`` training steps).
    kinds
        Subset of ``("phase1", "attention", "activations", "weights")``; the
        Phase 1 series is always written (it creates the experiment).
    seed
        Seed; the same arguments give the same store content.
    causal
        Zero the attention above the diagonal (causal masking; compresses ~2×).
    prefix
        Experiment names are ``{prefix}_{arch}_{index:04d}``.
    storage_options
        fsspec options when ``location`` is a URL.
    progress
        Show a progress bar (one tick per experiment-step).
    workers
        Experiments written at once, each by its own thread through its own
        :class:`Store` (one writer per experiment, as the store requires);
        their commits interleave, each experiment's steps stay in order.
        Chunk writes and compression release the GIL, so the threads overlap
        the disk's and the metadata's latency.

    Returns
    -------
    Store
        The store, open for writing.

    Examples
    --------
    >>> import tempfile
    >>> store = synth_store(tempfile.mkdtemp() + "/s.zarr", experiments=2, steps=3,
    ...                     layers=2, records=20, kinds=("phase1", "attention"))
    >>> store.experiments()
    ['synth_cnn_0001', 'synth_mlp_0000']
    >>> store.attention("synth_mlp_0000", "layers.0").sizes["step"]
    3
    """
    kinds_t = tuple(kinds)
    unknown = sorted(set(kinds_t) - set(KINDS))
    if unknown:
        raise InputError(f"unknown kinds {unknown}; choose from {list(KINDS)}", field="kinds")
    for name, value in (
        ("experiments", experiments),
        ("layers", layers),
        ("heads", heads),
        ("seq", seq),
        ("samples", samples),
        ("features", features),
        ("records", records),
    ):
        if int(value) < 1:
            raise InputError(f"{name} must be at least 1", field=name, value=value)
    if steps < 0:
        raise InputError("steps must not be negative", field="steps", value=steps)
    spec = SynthSpec(experiments, steps, layers, heads, seq, samples, features, records, kinds_t)
    store = (
        location
        if isinstance(location, Store)
        else open_store(location, storage_options=storage_options)
    )
    if int(workers) < 1:
        raise InputError("workers must be at least 1", field="workers", value=workers)
    tensors = [k for k in kinds_t if k != D.PHASE1]
    bar = _bar(experiments * (steps if tensors and steps else 1), progress)
    n_threads = min(int(workers), experiments)

    stop = threading.Event()  # set on Ctrl-C or a failure: threads stop between experiments

    def write(w: int) -> None:
        # each thread its own Store: no cache shared between writers
        own = store if w == 0 else open_store(store.location, storage_options=storage_options)
        for e in range(w, experiments, n_threads):
            if stop.is_set():
                return
            synth_experiment(
                e,
                spec,
                seed=seed,
                interval=interval,
                snapshot_every=snapshot_every,
                causal=causal,
                prefix=prefix,
            ).write(own, bar)

    try:
        if n_threads == 1:
            write(0)
        else:
            pool = ThreadPoolExecutor(max_workers=n_threads)
            try:
                for done in [pool.submit(write, w) for w in range(n_threads)]:
                    done.result()  # re-raise the first failure
            except BaseException:
                stop.set()  # each thread commits the experiment it is writing, then stops
                raise
            finally:
                pool.shutdown(wait=True)
    finally:
        if bar is not None:
            bar.close()
    store.refresh()
    return store


@dataclass
class SynthExperiment:
    """One synthetic experiment, ready to write (see :func:`synth_experiment`)."""

    name: str
    phase1: xr.Dataset
    metadata: dict[str, Any]
    batches: Iterable[dict[str, Any]]
    """Keyword arguments of :meth:`~ndt_store.store.Store.write_snapshots`, one batch of
    steps each (at most :data:`BATCH_BYTES` of tensors), generated as they are iterated."""

    def write(self, store: Store, bar: Any = None) -> None:
        """Write the experiment to ``store``: its Phase 1 series, then each batch of steps."""
        store.write_experiment(self.name, self.phase1, self.metadata, overwrite=True)
        wrote = False
        for batch in self.batches:
            store.write_snapshots(self.name, **batch)
            wrote = True
            if bar is not None:
                bar.update(len(batch["steps"]))
        if not wrote and bar is not None:
            bar.update(1)


def synth_experiment(
    e: int,
    spec: SynthSpec,
    *,
    seed: int = 0,
    interval: int = 5,
    snapshot_every: int = 10,
    causal: bool = False,
    prefix: str = "synth",
) -> SynthExperiment:
    """Experiment number ``e`` of :func:`synth_store` with these arguments, not yet written.

    Its tensors are generated batch by batch while :attr:`SynthExperiment.batches`
    is iterated (``list(...)`` generates them all, e.g. to time only the writes).

    Examples
    --------
    >>> exp = synth_experiment(0, SynthSpec(steps=5, kinds=("phase1", "weights")))
    >>> exp.name, [b["steps"] for b in exp.batches]
    ('synth_mlp_0000', [[0, 10, 20, 30, 40]])
    """
    tensors = [k for k in spec.kinds if k != D.PHASE1]
    rng = np.random.default_rng([seed, e])
    arch = _ARCHS[e % len(_ARCHS)]
    name = f"{prefix}_{arch}_{e:04d}"
    n_p1 = max(1, spec.layers + int(rng.integers(-1, 3)))
    p1_layers = phase1_layer_names(arch, n_p1)
    ds, jumps = phase1_dataset(rng, p1_layers, spec.records, interval)
    tensor_layers = [f"layers.{i}" for i in range(spec.layers)]
    jump_step = int(rng.integers(spec.steps // 3, max(spec.steps // 3 + 1, 2 * spec.steps // 3)))
    metadata = {
        D.ARCH_NAME: f"{arch}_{n_p1}",
        D.DATASET: _DATASETS[e % len(_DATASETS)],
        D.NUM_STEPS: spec.records * interval,
        D.MEASUREMENT_INTERVAL: interval,
        D.FINAL_ACCURACY: float(rng.uniform(0.6, 0.99)),
        D.ELAPSED_TIME: float(rng.uniform(10, 1000)),
        D.ARCHITECTURE_PARAMS: {"depth": n_p1, "width": spec.features},
        "synth": {
            "seed": seed,
            "phase1_jumps": jumps,
            "snapshot_jump_step": jump_step * snapshot_every if tensors else None,
        },
    }
    if not tensors or not spec.steps:
        return SynthExperiment(name, ds, metadata, [])
    gens = _tensor_generators(rng, spec, tensors, tensor_layers, causal)

    def batches() -> Iterator[dict[str, Any]]:
        labels = np.arange(spec.samples) % 10
        per_batch = max(1, BATCH_BYTES // max(1, spec.snapshot_nbytes()))
        for first in range(0, spec.steps, per_batch):
            batch = range(first, min(spec.steps, first + per_batch))
            out = _tensor_batch(gens, tensors, batch, spec.steps, jump_step)
            alphas = [_progress(t, spec.steps) for t in batch]
            yield {
                "steps": [t * snapshot_every for t in batch],
                "weights": out.get(D.WEIGHTS) or None,
                "activations": out.get(D.ACTIVATIONS) or None,
                "attention": out.get(D.ATTENTION) or None,
                "labels": labels if (D.ACTIVATIONS in tensors or D.ATTENTION in tensors) else None,
                "probe_hash": f"synth-{seed}",
                "infos": [{D.LOSS: float(2.3 * np.exp(-3 * a) + 0.05)} for a in alphas],
                "overwrite": True,
            }

    return SynthExperiment(name, ds, metadata, batches())


def _progress(t: int, steps: int) -> float:
    """How far snapshot step ``t`` of ``steps`` is through the run, 0 to 1."""
    return t / max(steps - 1, 1)


def _tensor_batch(
    gens: dict[str, dict[str, Any]],
    tensors: list[str],
    batch: Sequence[int],
    steps: int,
    jump_step: int,
) -> dict[str, dict[str, np.ndarray]]:
    """The tensors of snapshot steps ``batch``, each stacked along a leading step axis."""
    out: dict[str, dict[str, np.ndarray]] = {k: {} for k in tensors}
    k = len(batch)
    for layer, gen in gens.items():
        att = act = wgt = None
        if D.ATTENTION in gen:
            att = np.empty((k, *gen[D.ATTENTION].p0.shape), np.float32)
            out[D.ATTENTION][layer] = att
        if D.ACTIVATIONS in gen:
            z, v = gen[D.ACTIVATIONS]
            act = np.empty((k, z.shape[0], v.shape[0]), np.float32)
            out[D.ACTIVATIONS][layer] = act
        if D.WEIGHTS in gen:
            wgt = np.empty((k, *gen[D.WEIGHTS][0].shape), np.float32)
            out[D.WEIGHTS][f"{layer}.weight"] = wgt
        for i, t in enumerate(batch):
            alpha = _progress(t, steps)
            jumped = t >= jump_step
            if att is not None:
                gen[D.ATTENTION].at(alpha, jumped, out=att[i])
            if act is not None:
                decay = np.arange(1, z.shape[1] + 1, dtype=np.float32) ** -(0.5 + alpha)
                act[i] = (z * decay) @ v.T
            if wgt is not None:
                w0, dw, jw = gen[D.WEIGHTS]
                wgt[i] = w0 + np.float32(alpha) * dw + (jw if jumped else 0.0)
    return out


def _tensor_generators(
    rng: np.random.Generator,
    spec: SynthSpec,
    tensors: list[str],
    layers: list[str],
    causal: bool,
) -> dict[str, dict[str, Any]]:
    gens: dict[str, dict[str, Any]] = {}
    r = min(spec.samples, spec.features)
    for layer in layers:
        gen: dict[str, Any] = {}
        if D.ATTENTION in tensors:
            gen[D.ATTENTION] = _AttentionGen(rng, spec, causal)
        if D.ACTIVATIONS in tensors:
            z = rng.standard_normal((spec.samples, r), dtype=np.float32)
            gen[D.ACTIVATIONS] = (z, _orthonormal(rng, spec.features, r))
        if D.WEIGHTS in tensors:
            f = spec.features
            scale = np.float32(1.0 / np.sqrt(f))
            w0 = rng.standard_normal((f, f), dtype=np.float32) * scale
            dw = 0.1 * rng.standard_normal((f, f), dtype=np.float32) * scale
            jw = 0.5 * rng.standard_normal((f, f), dtype=np.float32) * scale
            gen[D.WEIGHTS] = (w0, dw, jw)
        gens[layer] = gen
    return gens


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="synth", unit="step")
