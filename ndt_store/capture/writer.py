"""Background writer: store writes off the training thread, through a bounded queue.

The training thread hands over *host copies* of tensors (:func:`to_host`): on a
GPU the copy goes to pinned memory with ``non_blocking=True`` and a CUDA event
is recorded; the writer thread waits on that event, never the training thread.
Phase 1 records are buffered and appended in batches (``flush_every`` records or
``flush_seconds``, whichever comes first: one append per record costs 50–100 ms,
ten per call ~7.5 ms a record). Their metrics are computed in batches too
(``metric_batch`` records, or fewer holding ``metric_batch_bytes`` of
activations): the writer thread shares the interpreter lock with the training
loop, and a few large tensor operations hold it far less than many small ones.
Snapshots are written one committed unit each.

When the queue is full (``max_queue`` items or ``max_queue_bytes`` bytes of
host copies), :meth:`BackgroundWriter.put` blocks: memory stays bounded and the
training loop slows down to the disk's pace instead of growing without limit.
An error in the writer thread is raised again on the training thread at the
next ``put``, ``flush`` or ``close``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ndt_store import _dims as D
from ndt_store._kernels import dimensionality as _kd
from ndt_store.errors import NdtStoreError

__all__ = [
    "BackgroundWriter",
    "HostTensor",
    "PendingRecord",
    "PendingSnapshot",
    "item_nbytes",
    "metrics_from_spectra",
    "to_host",
]

log = logging.getLogger("ndt_store.capture")


@dataclass
class HostTensor:
    """A host (CPU) copy of a tensor, possibly still in flight from a GPU."""

    tensor: Any
    event: Any = None

    def ready(self) -> Any:
        """Wait for the copy (if any) and return the host ``torch.Tensor``."""
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        return self.tensor

    def numpy(self) -> np.ndarray:
        """Wait for the copy (if any) and return a numpy array."""
        t = self.ready()
        if t.dtype.is_floating_point and t.dtype.itemsize < 4:
            t = t.float()
        return t.numpy()

    @property
    def nbytes(self) -> int:
        """Bytes of the copy."""
        return int(self.tensor.numel() * self.tensor.element_size())


def to_host(tensor: Any) -> HostTensor:
    """Start copying ``tensor`` to the host without waiting for it.

    CUDA tensors go to pinned memory with ``non_blocking=True`` and a recorded
    event; CPU tensors are cloned (the original may change in place at the next
    optimizer step).

    Examples
    --------
    >>> import torch
    >>> to_host(torch.arange(3)).numpy().tolist()
    [0, 1, 2]
    """
    import torch

    t = tensor.detach()
    if t.device.type == "cuda":
        dst = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        dst.copy_(t, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return HostTensor(dst, event)
    if t.device.type != "cpu":
        return HostTensor(t.to("cpu"))
    return HostTensor(t.clone())


_NUMPY_BLAS: Any = None


def _numpy_blas_on_one_thread() -> contextlib.AbstractContextManager[Any]:
    """numpy's own BLAS limited to one thread for the duration (the writer's spectra).

    The writer works beside training: with its default of one thread per core,
    OpenBLAS would take every core and its idle threads spin, which costs training
    about as much CPU again (``benchmarks/bench_spectra.py``). Only the BLAS library
    numpy loaded is limited (``threadpoolctl``), never torch's, and only while the
    block runs; without ``threadpoolctl`` nothing is limited.
    """
    global _NUMPY_BLAS
    if _NUMPY_BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a declared dependency
            _NUMPY_BLAS = False
        else:
            ctl = ThreadpoolController()
            mine = [
                c.filepath
                for c in ctl.lib_controllers
                if c.user_api == "blas" and "numpy" in Path(c.filepath).parent.name
            ]
            _NUMPY_BLAS = ctl.select(filepath=mine) if mine else False
    return _NUMPY_BLAS.limit(limits=1) if _NUMPY_BLAS else contextlib.nullcontext()


def _as_matrix(a: np.ndarray) -> np.ndarray:
    """``(samples, features...)`` as ``samples × features`` (a 0-d value as 1 × 1)."""
    return a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)


def _numpy(value: Any) -> Any:
    if isinstance(value, HostTensor):
        return value.numpy()
    if isinstance(value, Mapping):
        return {k: _numpy(v) for k, v in value.items()}
    return value


def metrics_from_spectra(spectra: Sequence[np.ndarray]) -> np.ndarray:
    """``(layers, 4)`` Phase 1 metrics from each layer's singular values (numpy kernels).

    Spectra of equal length are stacked and measured in one call per metric.

    Examples
    --------
    >>> metrics_from_spectra([np.ones(4), np.ones(2)]).round(6).tolist()
    [[4.0, 4.0, 4.0, 4.0], [2.0, 2.0, 2.0, 2.0]]
    """
    out = np.zeros((len(spectra), len(D.PHASE1_METRICS)), dtype=np.float64)
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(spectra):
        groups.setdefault(int(np.shape(s)[-1]), []).append(i)
    for idx in groups.values():
        s = np.stack([np.asarray(spectra[i], dtype=np.float64) for i in idx])
        out[idx] = np.stack(
            [
                _kd.stable_rank(s),
                _kd.participation_ratio(s),
                _kd.effective_rank(s),
                _kd.nuclear_norm_ratio(s),
            ],
            axis=-1,
        )
    return out


@dataclass
class PendingRecord:
    """One Phase 1 record on its way to the store.

    ``spectra`` holds each tracked layer's singular values (host copies); the
    writer thread turns them into the four metrics with the numpy kernels of
    :mod:`ndt_store._kernels.dimensionality`, off the training thread.
    """

    step: int
    spectra: Sequence[HostTensor]
    """Singular values per layer; empty when ``activations`` are given instead."""
    loss: HostTensor | float | None = None
    grad_norm: HostTensor | float | None = None
    epoch: int = -1
    snapshot: Any = None
    """Optional snapshot for the jump trigger's ring buffer (a
    :class:`~ndt_store.capture.trigger.DeferredSnapshot`), passed to ``on_record``."""
    activations: Sequence[HostTensor] | None = None
    """Per-layer probe activations (CPU models): their spectra are computed here, on
    the writer thread, so the training step only pays for the probe forward pass."""


@dataclass
class PendingSnapshot:
    """A snapshot (``weights``/``activations``/``attention`` of host tensors) to store."""

    step: int
    tensors: Mapping[str, Mapping[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)


def item_nbytes(item: Any) -> int:
    """Bytes of host copies a queued item holds (activations, kept state, snapshot).

    Examples
    --------
    >>> import torch
    >>> item_nbytes(PendingSnapshot(0, {"weights": {"w": to_host(torch.zeros(4))}}))
    16
    """
    if isinstance(item, PendingSnapshot):
        return sum(
            int(getattr(v, "nbytes", 0)) for group in item.tensors.values() for v in group.values()
        )
    if isinstance(item, PendingRecord):
        n = sum(h.nbytes for h in item.activations or ())
        state = getattr(item.snapshot, "state", None) or {}
        return n + sum(int(getattr(v, "nbytes", 0)) for v in state.values())
    return 0


def _scalar(value: HostTensor | float | None) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, HostTensor):
        return float(np.asarray(value.numpy()).reshape(-1)[0])
    return float(value)


class BackgroundWriter:
    """A thread that appends Phase 1 records and writes snapshots for one experiment.

    Parameters
    ----------
    store
        An open, writable :class:`~ndt_store.Store`.
    experiment
        The experiment (created beforehand with ``store.create_run``).
    layers
        Layer names, in the order of the rows of each record's ``metrics``.
    labels, probe_hash
        Passed to every ``write_snapshot`` that has activations or attention.
    flush_every
        Phase 1 records per append.
    flush_seconds
        Append buffered records at least this often.
    metric_batch, metric_batch_bytes
        Records whose metrics are computed together (at most this many, holding at
        most this many bytes of activations).
    max_queue
        Items the queue holds before :meth:`put` blocks.
    max_queue_bytes
        Bytes of host copies the queued items may hold: :meth:`put` blocks while a
        new item would exceed it (an item larger than the bound waits for an empty
        queue and is then admitted alone).
    on_record
        Called in the writer thread with each record's step, ``{layer: metrics row}``
        and the record's ``snapshot`` as it was put, e.g. by the jump trigger.
    on_snapshot
        Called in the writer thread with the step of each snapshot written.
    """

    def __init__(
        self,
        store: Any,
        experiment: str,
        layers: Sequence[str],
        *,
        labels: np.ndarray | None = None,
        probe_hash: str | None = None,
        flush_every: int = 200,
        flush_seconds: float = 5.0,
        metric_batch: int = 8,
        metric_batch_bytes: int = 32 * 2**20,
        max_queue: int = 8,
        max_queue_bytes: int = 512 * 2**20,
        on_record: Callable[[int, dict[str, np.ndarray], Any], None] | None = None,
        on_snapshot: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.experiment = experiment
        self.layers = list(layers)
        self.labels = labels
        self.probe_hash = probe_hash
        self.flush_every = max(1, int(flush_every))
        self.flush_seconds = float(flush_seconds)
        self.on_record = on_record
        self.on_snapshot = on_snapshot
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, int(max_queue)))
        self.max_queue_bytes = int(max_queue_bytes)
        self.queued_bytes = 0
        """Bytes of host copies held by queued items now."""
        self.peak_queued_bytes = 0
        """Most bytes the queue held at once."""
        self._bytes_free = threading.Condition()
        self.metric_batch = max(1, int(metric_batch))
        self.metric_batch_bytes = int(metric_batch_bytes)
        self._pending: list[PendingRecord] = []
        self._pending_bytes = 0
        self._buffer: list[tuple[int, np.ndarray, float, float, int]] = []
        self._oldest = 0.0
        self._error: BaseException | None = None
        self.records_written = 0
        self.snapshots_written: list[int] = []
        self.append_seconds = 0.0
        self.metric_seconds = 0.0
        """Seconds spent computing Phase 1 metrics here (models on the CPU)."""
        self.snapshot_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="ndt-store-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ training side
    def _check(self) -> None:
        if self._error is not None:
            err = self._error
            raise NdtStoreError(f"recording to {self.experiment!r} failed: {err}") from err

    def put(self, item: PendingRecord | PendingSnapshot) -> None:
        """Queue an item (blocks while the queue is full, in items or in bytes)."""
        n = item_nbytes(item)
        with self._bytes_free:
            while self.queued_bytes and self.queued_bytes + n > self.max_queue_bytes:
                self._check()
                if not self._thread.is_alive():
                    raise NdtStoreError(f"the writer thread of {self.experiment!r} is not running")
                self._bytes_free.wait(0.5)
            self.queued_bytes += n
            self.peak_queued_bytes = max(self.peak_queued_bytes, self.queued_bytes)
        while True:
            self._check()
            if not self._thread.is_alive():
                raise NdtStoreError(f"the writer thread of {self.experiment!r} is not running")
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def flush(self) -> None:
        """Block until everything queued so far is committed to the store."""
        done = threading.Event()
        self.put(("flush", done))  # type: ignore[arg-type]
        while not done.wait(0.5):
            if not self._thread.is_alive():
                break
        self._check()

    def close(self) -> None:
        """Commit everything queued, stop the thread, raise any writer error."""
        if self._thread.is_alive():
            while True:
                try:
                    self._queue.put(("stop", None), timeout=0.5)
                    break
                except queue.Full:
                    if not self._thread.is_alive():
                        break
            self._thread.join()
        self._check()

    # ------------------------------------------------------------- writer side
    def _run(self) -> None:
        while True:
            timeout = None
            if self._buffer or self._pending:
                timeout = max(0.0, self._oldest + self.flush_seconds - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                self._safe(self._commit)
                continue
            if isinstance(item, tuple):
                kind, payload = item
                self._safe(self._commit)
                if kind == "flush":
                    payload.set()
                    continue
                return
            try:
                if self._error is not None:
                    continue  # drain without writing after a failure
                if isinstance(item, PendingRecord):
                    self._safe(self._take_record, item)
                else:
                    self._safe(self.write_snapshot_now, item.step, item.tensors, item.info)
            finally:
                self._release(item)

    def _release(self, item: Any) -> None:
        with self._bytes_free:
            self.queued_bytes -= item_nbytes(item)
            self._bytes_free.notify_all()

    def _safe(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._error is not None:
            return
        try:
            fn(*args)
        except BaseException as exc:  # handed to the training thread
            log.error("ndt_store writer: %s", exc)
            self._error = exc

    def _take_record(self, rec: PendingRecord) -> None:
        if not (self._buffer or self._pending):
            self._oldest = time.monotonic()
        self._pending.append(rec)
        self._pending_bytes += sum(h.nbytes for h in rec.activations or ())
        if (
            len(self._pending) >= min(self.metric_batch, self.flush_every)
            or self._pending_bytes >= self.metric_batch_bytes
        ):
            self._measure_pending()

    def _measure_pending(self) -> None:
        """Metrics of the pending records (batched), in order, into the append buffer."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not pending:
            return
        t0 = time.perf_counter()
        # numpy, not torch, on the host: its `A.T @ A` is a symmetric rank-k update (half
        # the work of torch's product) and its eigvalsh is faster (benchmarks/bench_spectra.py)
        acts = [_as_matrix(h.numpy()) for r in pending for h in r.activations or ()]
        with _numpy_blas_on_one_thread():
            computed = iter(_kd.gram_singular_values(acts))
        spectra: list[np.ndarray] = []
        for r in pending:
            if r.activations is not None:
                spectra.extend(next(computed) for _ in r.activations)
            else:
                spectra.extend(h.numpy() for h in r.spectra)
        metrics = metrics_from_spectra(spectra).reshape(len(pending), -1, len(D.PHASE1_METRICS))
        self.metric_seconds += time.perf_counter() - t0
        for rec, m in zip(pending, metrics, strict=True):
            self._buffer.append(
                (rec.step, m, _scalar(rec.loss), _scalar(rec.grad_norm), int(rec.epoch))
            )
            if self.on_record is not None:
                rows = {layer: m[i] for i, layer in enumerate(self.layers)}
                self.on_record(rec.step, rows, rec.snapshot)
            if len(self._buffer) >= self.flush_every:
                self._append()

    def _commit(self) -> None:
        self._measure_pending()
        self._append()

    def _append(self) -> None:
        if not self._buffer:
            return
        t0 = time.perf_counter()
        steps = np.asarray([r[0] for r in self._buffer], dtype=np.int64)
        metrics = np.stack([r[1] for r in self._buffer])
        dims = (D.STEP, D.LAYER)
        data: dict[str, tuple[Any, np.ndarray]] = {
            m: (dims, metrics[:, :, k]) for k, m in enumerate(D.PHASE1_METRICS)
        }
        data[D.LOSS] = (D.STEP, np.asarray([r[2] for r in self._buffer]))
        data[D.GRAD_NORM] = (D.STEP, np.asarray([r[3] for r in self._buffer]))
        data[D.EPOCH] = (D.STEP, np.asarray([r[4] for r in self._buffer], dtype=np.int64))
        rows = xr.Dataset(data, coords={D.STEP: steps, D.LAYER: self.layers})
        self.store.append_phase1(self.experiment, rows)
        self.records_written += len(self._buffer)
        self._buffer = []
        self.append_seconds += time.perf_counter() - t0

    def write_snapshot_now(
        self, step: int, tensors: Mapping[str, Any], info: Mapping[str, Any] | None = None
    ) -> None:
        """Write one snapshot from the writer thread (host tensors or numpy)."""
        t0 = time.perf_counter()
        arrays = _numpy(tensors)
        has_probe = bool(arrays.get(D.ACTIVATIONS) or arrays.get(D.ATTENTION))
        self.store.write_snapshot(
            self.experiment,
            int(step),
            weights=arrays.get(D.WEIGHTS) or None,
            activations=arrays.get(D.ACTIVATIONS) or None,
            attention=arrays.get(D.ATTENTION) or None,
            labels=self.labels if has_probe else None,
            probe_hash=self.probe_hash if has_probe else None,
            info=dict(info or {}),
        )
        self.snapshots_written.append(int(step))
        if self.on_snapshot is not None:
            self.on_snapshot(int(step))
        self.snapshot_seconds += time.perf_counter() - t0
