"""The chunk pass of :func:`~ndt_store._integrity.verify_store`.

Every chunk of the committed region of every array is fetched once and checked:

- present (an absent chunk reads as the fill value);
- whole: an uncompressed chunk is exactly the chunk's size, a Blosc chunk is one
  whole Blosc frame decoding to that size (:func:`~ndt_store._frame.stored_chunk_problem`);
- decodable: Blosc chunks are decoded (an uncompressed chunk of the right size
  always is); other layouts are read through Zarr;
- for the float tensors of snapshot frames: which rows read entirely as NaN. A row
  whose first value is a number is not; only rows starting with NaN are scanned.

The chunks of each array go in batches to a thread pool (file reads, fetches and
Blosc decoding release the GIL), all submitted at once and collected in order, so
findings come out in the chunks' order whatever the number of threads; batches of
small local chunks are checked in the calling thread instead (see
:data:`POOL_MIN_BYTES`). Local chunks are read into a buffer reused by each
thread; uncompressed ones are checked there, never copied.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ndt_store._array_spec import ArraySpec
from ndt_store._chunk_codecs import (
    blosc_decompress,
    check_blosc_header,
    check_raw_size,
    decode_strings,
)
from ndt_store._frame import stored_chunk_problem

Severity = Literal["error", "warning"]

BATCH_BYTES = 4 << 20
"""Decoded bytes of the chunks one task checks (at least one chunk, at most 256)."""
POOL_MIN_BYTES = 1 << 20
"""Local chunks smaller than this are checked in the calling thread: for them a
thread pool costs more than it gains (each system call hands the GIL over to
another thread; measured on 2 cores with page-cached files: 12-50 KiB chunks
took twice the CPU time in 8 threads, 2 MiB chunks ~1.1-1.4x). Larger local chunks
and every chunk of a remote store go to the pool."""
_BLOSC_OVERHEAD = 16  # a Blosc frame is at most this much larger than its data


@dataclass
class ChunkJob:
    """The chunks of one array to check: rows ``[0, n)`` of its first dimension."""

    spec: ArraySpec
    n: int
    missing: Severity
    keep: bool = False  # keep the values (1-d arrays the semantic checks read)
    nan_rows: bool = False  # find the rows that read entirely as NaN
    values: np.ndarray | None = None
    kept_chunks: int = 0
    nan_all: np.ndarray | None = None
    nan_seen: np.ndarray | None = None

    grid: list[range] = field(init=False)
    count: int = field(init=False)  # chunks to check
    per_row: int = field(init=False)  # chunks holding one row

    def __post_init__(self) -> None:
        spec = self.spec
        self.grid = [range(-(-self.n // spec.chunks[0]))] + [
            range(-(-s // c)) for s, c in zip(spec.shape[1:], spec.chunks[1:], strict=True)
        ]
        self.per_row = math.prod(len(r) for r in self.grid[1:])
        self.count = len(self.grid[0]) * self.per_row


@dataclass
class VerifyProgress:
    """Where :func:`~ndt_store._integrity.verify_store` stands in its chunk pass."""

    chunks_done: int
    chunks_total: int
    bytes_read: int
    seconds: float


@dataclass
class _BatchResult:
    nbytes: int = 0
    done: int = 0
    kept: int = 0
    problems: list[tuple[str, Severity, str]] = field(default_factory=list)
    nan_rows: tuple[int, np.ndarray, np.ndarray] | None = None  # first row, all-NaN, chunks seen


class _Reader:
    """Fetches chunk bytes: local files into a reused buffer, else from the Zarr store."""

    def __init__(self, local: str | None, zstore: Any, buffers: threading.local) -> None:
        self.local = local
        self.zstore = zstore
        self.buffers = buffers

    def full(self, key: str) -> bytes | None:
        """The whole stored value of ``key`` (``None`` when absent)."""
        if self.local is not None:
            try:
                with open(os.path.join(self.local, key), "rb") as fh:
                    return fh.read()
            except (FileNotFoundError, NotADirectoryError):
                return None
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buf = sync(self.zstore.get(key, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def many(self, keys: list[str], limit: int) -> Iterator[bytes | memoryview | None]:
        """Each key's bytes, ``None`` when absent.

        Local files are read into one buffer, reused for the next key, and at most
        ``limit + 1`` bytes of each: more than ``limit`` means a damaged chunk, which
        the caller rereads whole for the report.
        """
        if self.local is None:
            yield from self._remote(keys)
            return
        view = _buffer(self.buffers, limit + 1)
        head = os.path.join(self.local, "")
        for key in keys:
            try:
                got = _read_into(head + key, view)
            except (FileNotFoundError, NotADirectoryError):
                yield None
                continue
            yield view[:got]

    def _remote(self, keys: list[str]) -> Iterator[bytes | None]:
        import asyncio

        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        proto = default_buffer_prototype()

        async def fetch() -> list[Any]:
            return await asyncio.gather(*(self.zstore.get(k, prototype=proto) for k in keys))

        for buf in sync(fetch()):
            yield None if buf is None else buf.to_bytes()


_ALIGN = 2 << 20  # a huge page on x86-64: copies into the buffer miss the TLB less


def _buffer(buffers: threading.local, size: int) -> memoryview:
    """A buffer of ``size`` bytes kept in ``buffers`` for the calling thread's next use.

    Aligned to 2 MiB, so that where the kernel backs it with huge pages it does
    (reading page-cached files into a 4 KiB-page buffer was ~1.7x slower here).
    """
    buf = getattr(buffers, "buf", None)
    if buf is None or len(buf) < size:
        raw = np.empty(size + _ALIGN, dtype=np.uint8)
        start = -raw.ctypes.data % _ALIGN
        buf = buffers.buf = memoryview(raw[start : start + size].data)
    return buf[:size]


def _read_into(path: str, view: memoryview) -> int:
    """Read the file at ``path`` into ``view`` (one read: a short one shows as damage,
    which the caller then checks by rereading the whole file)."""
    if hasattr(os, "readv"):  # one open, read and close, no Python file object
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.readv(fd, [view])
        finally:
            os.close(fd)
    with open(path, "rb", buffering=0) as fh:  # pragma: no cover - no readv (Windows)
        return fh.readinto(view) or 0


def _row_flags(values: np.ndarray) -> np.ndarray:
    """Per row (first axis) of ``values``: whether every value is NaN.

    A row whose first value is a number is settled by that value; only rows
    starting with NaN are scanned in full.
    """
    rows = values.shape[0]
    flat = values.reshape(rows, -1)
    if flat.shape[1] == 0:
        return np.ones(rows, dtype=bool)
    if rows == 1:
        first = flat[0, 0]
        return np.array([first != first and bool(np.isnan(flat).all())])
    flags = np.isnan(flat[:, 0])
    for i in np.flatnonzero(flags):
        flags[i] = np.isnan(flat[i]).all()
    return flags


class ChunkPass:
    """Every chunk of the committed region, checked concurrently by :meth:`run`."""

    def __init__(self, local: str | None, zstore: Any) -> None:
        self.local = local
        self.zstore = zstore
        self.jobs: list[ChunkJob] = []
        self._by_path: dict[str, ChunkJob] = {}
        self._buffers = threading.local()  # per thread, for the chunk pass only

    def add(
        self,
        spec: ArraySpec,
        n: int,
        missing: Severity,
        *,
        keep: bool = False,
        nan_rows: bool = False,
    ) -> int:
        """Queue the chunks of rows ``[0, n)`` of ``spec``; the number of chunks queued."""
        if not spec.shape or n == 0 or any(s == 0 for s in spec.shape[1:]):
            return 0
        job = ChunkJob(spec, n, missing)
        job.keep = keep and len(spec.shape) == 1
        job.nan_rows = nan_rows and spec.dtype.kind == "f" and len(spec.shape) > 1
        if job.keep:
            job.values = np.empty(n, dtype=spec.dtype)
        if job.nan_rows:
            job.nan_all = np.ones(n, dtype=bool)
            job.nan_seen = np.zeros(n, dtype=np.int64)
        self.jobs.append(job)
        self._by_path[spec.path] = job
        return job.count

    def values(self, path: str) -> np.ndarray | None:
        """The rows of a kept array, when every chunk of it was read and whole."""
        job = self._by_path.get(path)
        if job is None or job.values is None or job.kept_chunks != job.count:
            return None
        return job.values

    def all_nan(self, path: str, row: int) -> bool | None:
        """Whether ``row`` of the array reads entirely as NaN; ``None`` when not known."""
        job = self._by_path.get(path)
        if job is None or job.nan_all is None or job.nan_seen is None or not 0 <= row < job.n:
            return None
        if job.nan_seen[row] != job.per_row:
            return None  # a chunk of that row is absent or damaged
        return bool(job.nan_all[row])

    def run(
        self,
        report: Callable[[Severity, str, str], None],
        workers: int,
        progress: Callable[[VerifyProgress], None] | None,
    ) -> None:
        """Check every queued chunk; findings go to ``report(severity, key, message)``."""
        start = time.perf_counter()
        total = sum(job.count for job in self.jobs)
        done = nbytes = 0
        last = 0.0
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            work: list[tuple[ChunkJob, list[tuple[int, ...]], Future[_BatchResult] | None]] = [
                (job, batch, pool.submit(self._check_batch, job, batch) if threaded else None)
                for job in self.jobs
                for threaded in [self.local is None or job.spec.chunk_nbytes >= POOL_MIN_BYTES]
                for batch in _batches(job)
            ]
            for job, batch, future in work:
                res = self._check_batch(job, batch) if future is None else future.result()
                done += res.done
                job.kept_chunks += res.kept
                nbytes += res.nbytes
                for key, severity, message in res.problems:
                    report(severity, key, message)
                if res.nan_rows is not None and job.nan_all is not None:
                    assert job.nan_seen is not None
                    lo, flags, seen = res.nan_rows
                    job.nan_all[lo : lo + len(flags)] &= flags
                    job.nan_seen[lo : lo + len(seen)] += seen
                now = time.perf_counter()
                if progress is not None and (now - last >= 0.25 or done == total):
                    progress(VerifyProgress(done, total, nbytes, now - start))
                    last = now
        self._buffers = threading.local()

    def _check_batch(self, job: ChunkJob, coords: list[tuple[int, ...]]) -> _BatchResult:
        """Check some chunks of one array (runs in a worker thread)."""
        from numcodecs import blosc

        spec = job.spec
        res = _BatchResult(done=len(coords))
        if spec.arr is None:
            head, sep = f"{spec.path}/{spec.key_prefix}", spec.separator
            keys = [head + sep.join(map(str, c)) for c in coords]
        else:
            keys = [f"{spec.path}/{spec.chunk_key(c)}" for c in coords]
        rows_lo = coords[0][0] * spec.chunks[0]
        flags = seen = None
        if job.nan_rows:
            rows_hi = min(job.n, (coords[-1][0] + 1) * spec.chunks[0])
            flags = np.ones(rows_hi - rows_lo, dtype=bool)
            seen = np.zeros(rows_hi - rows_lo, dtype=np.int64)
            res.nan_rows = (rows_lo, flags, seen)
        reader = _Reader(self.local, self.zstore, self._buffers)
        if spec.codec in ("raw", "blosc"):
            fetched: Iterator[Any] = reader.many(keys, spec.chunk_nbytes + _BLOSC_OVERHEAD)
        else:
            fetched = map(reader.full, keys)
        shape, dtype, nbytes, codec = spec.chunks, spec.dtype, spec.chunk_nbytes, spec.codec
        cut = _cut_chunks(spec, job.n)
        one_row = shape[0] == 1
        for coord, key, data in zip(coords, keys, fetched, strict=True):
            if data is None:
                message = (
                    "chunk absent: reads as the fill value "
                    f"{spec.fill_value!r} (never written, or lost)"
                )
                res.problems.append((key, job.missing, message))
                continue
            got = len(data)
            res.nbytes += got
            values: np.ndarray | None = None
            if codec == "raw" and got == nbytes:
                values = np.frombuffer(data, dtype=dtype)
            elif (
                codec == "blosc"
                and got >= 16
                and int.from_bytes(data[12:16], "little") == got
                and int.from_bytes(data[4:8], "little") == nbytes
            ):
                try:
                    values = np.frombuffer(blosc.decompress(data), dtype=dtype)
                except Exception:
                    values = None  # the careful path below words the report
            if values is None:
                try:
                    values, whole = _careful(spec, job.n, coord, key, data, reader)
                except _Damaged as exc:
                    res.problems.append((key, "error", f"chunk {exc}"))
                    continue
                except _Undecodable as exc:
                    res.problems.append((key, "error", f"chunk does not decode ({exc})"))
                    continue
                res.nbytes += whole - got
            edge = any(coord[i] == last for i, last in cut)
            if job.values is not None:
                r0 = coord[0] * shape[0]
                stop = min(shape[0], job.n - r0)
                job.values[r0 : r0 + stop] = values[:stop]  # disjoint rows per chunk
                res.kept += 1
            if flags is not None and seen is not None:
                lo = coord[0] * shape[0] - rows_lo
                if one_row and not edge:
                    first = values[0]
                    flags[lo] &= first != first and bool(np.isnan(values).all())
                    seen[lo] += 1
                else:
                    block = values.reshape(shape)[_valid(spec, job.n, coord)]
                    rows = _row_flags(block)
                    flags[lo : lo + len(rows)] &= rows
                    seen[lo : lo + len(rows)] += 1
        return res


def _cut_chunks(spec: ArraySpec, n: int) -> list[tuple[int, int]]:
    """(dimension, chunk index) of the last chunks cut short by the edge (rows ``n``)."""
    sizes = (n, *spec.shape[1:])
    pairs = enumerate(zip(sizes, spec.chunks, strict=True))
    return [(i, size // k) for i, (size, k) in pairs if size % k]


def _careful(
    spec: ArraySpec,
    n: int,
    coord: tuple[int, ...],
    key: str,
    data: bytes | memoryview,
    reader: _Reader,
) -> tuple[np.ndarray, int]:
    """Check one chunk the slow way: its flat values and its size in bytes.

    For chunks the fast checks did not pass, and for layouts only Zarr decodes. A
    local chunk is reread whole first (the fast read stops past a chunk's size).
    """
    whole: bytes | memoryview | None = data
    if spec.codec in ("raw", "blosc") and reader.local is not None:
        whole = reader.full(key)
        if whole is None:
            raise _Damaged("vanished while being read")
    assert whole is not None
    return _decode(spec, whole, n, coord).reshape(-1), len(whole)


def _damage(spec: ArraySpec, data: bytes | memoryview) -> str | None:
    """Why ``data`` is not one whole stored chunk (the words of ``stored_chunk_problem``)."""
    if spec.codec == "zarr":
        return stored_chunk_problem(spec.arr, bytes(data))
    if spec.codec == "vlen-utf8":
        return None  # variable length: only decoding tells
    nbytes = spec.chunk_nbytes
    try:
        if spec.codec == "blosc":
            check_blosc_header(data, nbytes)
        else:
            check_raw_size(len(data), nbytes)
    except ValueError as exc:
        return f"is damaged ({exc})"
    return None


def _decode(
    spec: ArraySpec, data: bytes | memoryview, n: int, coord: tuple[int, ...]
) -> np.ndarray:
    """The values of one stored chunk (chunk-shaped), checked first.

    Raises :class:`_Damaged` (with the report's words) when the bytes are not one
    whole chunk, :class:`_Undecodable` when they do not decode.
    """
    damaged = _damage(spec, data)
    if damaged:
        raise _Damaged(damaged)
    try:
        if spec.codec == "raw":
            return np.frombuffer(data, dtype=spec.dtype).reshape(spec.chunks)
        if spec.codec == "blosc":
            flat = np.frombuffer(blosc_decompress(data), dtype=spec.dtype)
            return flat.reshape(spec.chunks)
        if spec.codec == "vlen-utf8":
            return decode_strings(spec, data)
        sel = tuple(
            slice(c * k, min((c + 1) * k, n if i == 0 else s))
            for i, (c, k, s) in enumerate(zip(coord, spec.chunks, spec.shape, strict=True))
        )
        got = np.asarray(spec.arr[sel])  # through Zarr's codecs: a second fetch
        full = np.empty(spec.chunks, dtype=got.dtype)
        full[tuple(slice(0, e) for e in got.shape)] = got
        return full
    except Exception as exc:
        raise _Undecodable(f"{type(exc).__name__}: {exc}") from None


class _Damaged(Exception):
    """The stored bytes are not one whole chunk (size or header)."""


class _Undecodable(Exception):
    """The stored bytes do not decode."""


def _valid(spec: ArraySpec, n: int, coord: tuple[int, ...]) -> tuple[slice, ...]:
    """The part of chunk ``coord`` inside rows ``[0, n)`` and the array's shape."""
    return tuple(
        slice(0, min(k, (n if i == 0 else spec.shape[i]) - c * k))
        for i, (c, k) in enumerate(zip(coord, spec.chunks, strict=True))
    )


def _batches(job: ChunkJob) -> Iterator[list[tuple[int, ...]]]:
    """The chunk coordinates of ``job`` in C order, in batches of about BATCH_BYTES."""
    size = max(1, min(256, BATCH_BYTES // max(1, job.spec.chunk_nbytes)))
    coords = itertools.product(*job.grid)
    while batch := list(itertools.islice(coords, size)):
        yield batch


__all__ = ["ChunkJob", "ChunkPass", "VerifyProgress"]
