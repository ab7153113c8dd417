"""Check a store's committed content: every unit readable, complete and consistent.

:func:`verify_store` walks every committed unit (experiments, their Phase 1 and
snapshot frames, tables) and reports, naming the array and chunk at fault:

- metadata that does not parse (experiment attributes, frame registries, array
  ``zarr.json``);
- arrays shorter than their frame's committed row count;
- chunks of the committed region that fail to decode (truncated, garbage);
- chunks of the committed region that are absent (Zarr silently reads them as
  the fill value: NaN for floats, 0 for integers);
- semantic inconsistencies that a lost chunk would cause: Phase 1 steps not
  strictly increasing, a snapshot row whose stored step or presence flag differs
  from the experiment's snapshot list, a snapshot tensor that reads entirely as
  the fill value;
- leftovers that are harmless but take space (``*.partial`` files of writes that
  were interrupted, invisible uncommitted experiment groups).

Frames write every chunk, even one equal to the fill value everywhere, so an
absent chunk inside a frame's committed rows is always an error. Tables use
Zarr's default (all-fill chunks are not written): there an absent chunk is a
*warning* unless ``strict=True``.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ndt_store import _dims as D
from ndt_store._frame import (
    FRAME_ATTR,
    _fast_layout,
    child_groups,
    decode_chunk,
    stored_chunk_problem,
)

if TYPE_CHECKING:
    from ndt_store.store import Store

Severity = Literal["error", "warning"]
_WORKERS = 8


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`verify_store`.

    Attributes
    ----------
    severity
        ``"error"`` (committed data unreadable or wrong) or ``"warning"``.
    path
        Store-relative path of the group, array or chunk at fault.
    message
        What is wrong.
    """

    severity: Severity
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"


@dataclass
class IntegrityReport:
    """Result of :func:`verify_store`.

    Attributes
    ----------
    location
        The store checked.
    problems
        Every finding, errors and warnings.
    checked
        Counts of what was checked (experiments, frames, arrays, chunks, snapshots, tables).
    """

    location: str
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("experiments", "frames", "arrays", "chunks", "snapshots", "tables"), 0
        )
    )

    @property
    def errors(self) -> list[Problem]:
        """The problems of severity ``"error"``."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """The problems of severity ``"warning"``."""
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when no error was found (warnings allowed)."""
        return not self.errors

    def add(self, severity: Severity, path: str, message: str) -> None:
        """Record a problem."""
        self.problems.append(Problem(severity, path, message))

    def format(self) -> str:
        """A human-readable report: one line per problem, then a summary line."""
        counts = ", ".join(f"{v} {k}" for k, v in self.checked.items())
        lines = [str(p) for p in self.problems]
        verdict = "OK" if self.ok else f"{len(self.errors)} error(s)"
        lines.append(
            f"{self.location}: {verdict}, {len(self.warnings)} warning(s); checked {counts}"
        )
        return "\n".join(lines)


def verify_store(
    store: Store,
    *,
    strict: bool = False,
    workers: int | None = None,
    progress: Callable[[VerifyProgress], None] | None = None,
) -> IntegrityReport:
    """Check every committed unit of ``store``; never raises for a damaged store.

    The metadata are walked first; then every chunk of the committed region is
    fetched, checked and decoded by ``workers`` threads at once (fetching and
    Blosc decoding release the GIL), each chunk read once; the semantic checks
    (steps increasing, snapshot rows) run last, reusing what the chunk pass saw.

    Parameters
    ----------
    store
        An open store (any mode; nothing is written).
    strict
        Also treat absent chunks of tables as errors (absent frame chunks always are).
    workers
        Chunks read at once (default 8).
    progress
        Called from the calling thread with a :class:`VerifyProgress` after
        each batch of chunks (a few times a second at most).

    Returns
    -------
    IntegrityReport
        ``report.ok`` is False when committed data are unreadable or inconsistent.

    Examples
    --------
    >>> import tempfile, ndt_store
    >>> from ndt_store.testing import write_phase1_json
    >>> tmp = tempfile.mkdtemp()
    >>> store = ndt_store.open_store(tmp + "/s.zarr")
    >>> _ = ndt_store.ingest_phase1(store, write_phase1_json(tmp + "/run.json", n_records=8))
    >>> report = verify_store(store)
    >>> report.ok, report.checked["experiments"]
    (True, 1)
    """
    report = IntegrityReport(store.location)
    root = store.zarr_group
    missing: Severity = "error" if strict else "warning"
    jobs = _ChunkJobs(local=_local_root(store))
    later: list[Callable[[], None]] = []  # semantic checks, after the chunk pass
    for name, meta in _experiment_metadata(store, report):
        entry = meta.get("attributes", {}).get("ndt_experiment")
        path = f"experiments/{name}"
        if not isinstance(entry, dict):
            report.add("warning", path, "group without ndt_experiment attributes (ignored)")
            continue
        if not entry.get("committed"):
            if entry.get("removed_at") is None:
                report.add("warning", path, "uncommitted leftover (invisible; removed on rewrite)")
            continue  # a removed experiment kept for its readers is not a problem
        report.checked["experiments"] += 1
        for key in ("revision", "phase1"):
            if key not in entry:
                report.add("error", path, f"committed experiment lacks {key!r}")
        try:
            group = root[path]
        except Exception as exc:
            report.add("error", path, f"group unreadable ({type(exc).__name__}: {exc})")
            continue
        assert isinstance(group, zarr.Group)
        if "phase1" in entry:
            frame = _check_frame(report, jobs, group, entry["phase1"], "error")
            if frame is not None:
                later.append(functools.partial(_check_phase1, report, frame))
        snaps = entry.get("snapshots", [])
        if snaps:
            name = str(entry.get("snapshot_frame", "snapshots"))
            frame = _check_frame(report, jobs, group, name, "error")
            if frame is not None:
                later.append(functools.partial(_check_snapshots, report, frame, snaps, jobs))
    _check_tables(store, report, jobs, missing)
    jobs.run(report, workers or _WORKERS, progress)
    for check in later:
        check()
    _check_leftovers(store, report)
    return report


def _local_root(store: Store) -> Path | None:
    """The directory the zarr keys of ``store`` are relative to, when it is local."""
    local = store._local
    zstore = store.zarr_group.store
    root = getattr(zstore, "root", None)
    if local is None or root is None:
        return None
    return Path(root)


def _experiment_metadata(store: Store, report: IntegrityReport) -> Iterator[tuple[str, Any]]:
    zstore = store.zarr_group.store
    base = store.zarr_group.path
    prefix = f"{base}/experiments" if base else "experiments"

    async def names() -> list[str]:
        return [n async for n in zstore.list_dir(prefix) if n != "zarr.json"]

    for name in sorted(sync(names())):
        key = f"{prefix}/{name}/zarr.json"
        buf = sync(zstore.get(key, prototype=default_buffer_prototype()))
        if buf is None:
            continue
        try:
            meta = json.loads(buf.to_bytes())
        except ValueError as exc:
            report.add("error", key, f"metadata is not valid JSON ({exc})")
            continue
        yield name, meta


@dataclass
class _FrameView:
    path: str
    rows: int
    columns: dict[str, Any]
    arrays: dict[str, zarr.Array]


def _check_frame(
    report: IntegrityReport, jobs: _ChunkJobs, group: zarr.Group, name: str, missing: Severity
) -> _FrameView | None:
    path = f"{group.path}/{name}"
    try:
        fgroup = group[name]
    except Exception as exc:
        report.add("error", path, f"committed frame unreadable ({type(exc).__name__}: {exc})")
        return None
    info = fgroup.attrs.get(FRAME_ATTR)
    if not isinstance(info, dict) or not isinstance(info.get("rows"), int):
        report.add("error", path, f"frame registry {FRAME_ATTR!r} missing or malformed")
        return None
    report.checked["frames"] += 1
    rows = int(info["rows"])
    view = _FrameView(path, rows, dict(info.get("columns", {})), {})
    statics = dict(info.get("static", {}))
    for col, dims in {**view.columns, **statics}.items():
        apath = f"{path}/{col}"
        try:
            arr = fgroup[col]
        except Exception as exc:
            report.add("error", apath, f"array unreadable ({type(exc).__name__}: {exc})")
            continue
        if not isinstance(arr, zarr.Array):
            report.add("error", apath, "listed as an array but is a group")
            continue
        report.checked["arrays"] += 1
        names = getattr(arr.metadata, "dimension_names", None)
        if names is not None and list(names) != list(dims):
            report.add("error", apath, f"dims {names} != registry {dims}")
        n = arr.shape[0] if col in statics or not arr.shape else rows
        if col not in statics and arr.shape[0] < rows:
            report.add("error", apath, f"{arr.shape[0]} rows but {rows} are committed")
            continue
        view.arrays[col] = arr
        jobs.add_array(report, arr, n if arr.shape else 0, missing)
    return view


@dataclass
class VerifyProgress:
    """Where :func:`verify_store` stands in its chunk pass."""

    chunks_done: int
    chunks_total: int
    bytes_read: int
    seconds: float


@dataclass
class _Chunk:
    arr: zarr.Array
    coords: tuple[int, ...]
    key: str
    rel: str
    n: int
    missing: Severity


@dataclass
class _ChunkResult:
    nbytes: int = 0
    problem: tuple[Severity, str] | None = None
    nan_rows: np.ndarray | None = None  # per row of the chunk: every value NaN


@dataclass
class _ChunkJobs:
    """Every chunk of the committed region, checked concurrently by :meth:`run`."""

    local: Path | None = None  # a local store's directory: chunk files are read directly
    chunks: list[_Chunk] = field(default_factory=list)
    nan_rows: dict[tuple[str, int], bool] = field(default_factory=dict)

    def add_array(
        self, report: IntegrityReport, arr: zarr.Array, n: int, missing: Severity
    ) -> None:
        if not arr.shape or n == 0 or any(s == 0 for s in arr.shape[1:]):
            return
        chunks = arr.chunks
        grid = [range(-(-n // chunks[0]))] + [
            range(-(-s // c)) for s, c in zip(arr.shape[1:], chunks[1:], strict=True)
        ]
        for coords in itertools.product(*grid):
            rel = arr.metadata.encode_chunk_key(coords)
            key = f"{arr.store_path.path}/{rel}"
            report.checked["chunks"] += 1
            self.chunks.append(_Chunk(arr, coords, key, rel, n, missing))

    def run(
        self,
        report: IntegrityReport,
        workers: int,
        progress: Callable[[VerifyProgress], None] | None,
    ) -> None:
        start = time.perf_counter()
        total, done, nbytes, last = len(self.chunks), 0, 0, 0.0
        fast = {}
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            # a bounded window of chunks in flight; results in the chunks' order
            window = max(1, workers) * 4
            for base in range(0, total, window):
                part = self.chunks[base : base + window]
                for chunk in part:
                    if id(chunk.arr) not in fast:
                        fast[id(chunk.arr)] = _fast_layout(chunk.arr)
                results = pool.map(lambda c: _check_chunk(c, fast[id(c.arr)], self.local), part)
                for chunk, res in zip(part, results, strict=True):
                    done += 1
                    nbytes += res.nbytes
                    if res.problem is not None:
                        report.add(res.problem[0], chunk.key, res.problem[1])
                    if res.nan_rows is not None:
                        first = chunk.coords[0] * chunk.arr.chunks[0]
                        for i, flag in enumerate(res.nan_rows.tolist()):
                            self.nan_rows[(chunk.arr.path, first + i)] = flag
                now = time.perf_counter()
                if progress is not None and (now - last >= 0.25 or done == total):
                    progress(VerifyProgress(done, total, nbytes, now - start))
                    last = now


def _fetch(chunk: _Chunk, local: Path | None) -> bytes | None:
    """The stored bytes of a chunk (``None`` if absent): a plain file read when local."""
    if local is not None:
        try:
            return (local / chunk.key).read_bytes()
        except FileNotFoundError:
            return None
    buf = sync(chunk.arr.store_path.store.get(chunk.key, prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def _check_chunk(chunk: _Chunk, fast: bool, local: Path | None) -> _ChunkResult:
    """Fetch one chunk once: presence, size, decoding (runs in a worker thread)."""
    arr = chunk.arr
    data = _fetch(chunk, local)
    if data is None:
        message = (
            "chunk absent: reads as the fill value "
            f"{arr.metadata.fill_value!r} (never written, or lost)"
        )
        return _ChunkResult(problem=(chunk.missing, message))
    damaged = stored_chunk_problem(arr, data)
    if damaged:
        return _ChunkResult(len(data), ("error", f"chunk {damaged}"))
    chunks = arr.chunks
    sel = tuple(
        slice(c * k, min((c + 1) * k, (chunk.n if i == 0 else arr.shape[i])))
        for i, (c, k) in enumerate(zip(chunk.coords, chunks, strict=True))
    )
    try:
        values = decode_chunk(arr, chunk.rel, data) if fast else np.asarray(arr[sel])
    except Exception as exc:
        return _ChunkResult(
            len(data), ("error", f"chunk does not decode ({type(exc).__name__}: {exc})")
        )
    nan_rows = None
    one_row = chunks[0] == 1 and tuple(chunks[1:]) == tuple(arr.shape[1:])
    if one_row and arr.dtype.kind == "f" and values.ndim > 1:  # a snapshot tensor's row
        rows = values[: sel[0].stop - sel[0].start]
        nan_rows = np.isnan(rows.reshape(rows.shape[0], -1)).all(axis=-1)
    return _ChunkResult(len(data), None, nan_rows)


def _read(report: IntegrityReport, frame: _FrameView, col: str) -> np.ndarray | None:
    arr = frame.arrays.get(col)
    if arr is None:
        return None
    try:
        return np.asarray(arr[: frame.rows] if col in frame.columns else arr[...])
    except Exception:  # already reported chunk by chunk
        return None


def _check_phase1(report: IntegrityReport, frame: _FrameView) -> None:
    steps = _read(report, frame, D.STEP)
    if steps is None:
        if frame.rows:
            report.add("error", f"{frame.path}/{D.STEP}", "Phase 1 steps unreadable")
        return
    if steps.size > 1 and not np.all(np.diff(steps) > 0):
        bad = int(np.argmax(np.diff(steps) <= 0)) + 1
        report.add(
            "error",
            f"{frame.path}/{D.STEP}",
            f"steps not strictly increasing at row {bad} ({steps[bad - 1]} then "
            f"{steps[bad]}): a chunk was lost or overwritten",
        )


def _check_snapshots(
    report: IntegrityReport, frame: _FrameView, snaps: list[Any], jobs: _ChunkJobs
) -> None:
    steps = _read(report, frame, D.STEP)
    for snap in snaps:
        report.checked["snapshots"] += 1
        row, step = snap.get("row"), snap.get("step")
        where = f"{frame.path} row {row} (step {step})"
        if not isinstance(row, int) or not 0 <= row < frame.rows:
            report.add("error", where, f"listed snapshot row outside the {frame.rows} committed")
            continue
        if steps is not None and int(steps[row]) != step:
            report.add("error", where, f"stored step is {int(steps[row])}")
        for kind in snap.get("kinds", []):
            flag = frame.arrays.get(f"present/{kind}")
            if flag is not None and not bool(flag[row]):
                report.add("error", where, f"{kind} listed but its presence flag is unset")
            for col, arr in frame.arrays.items():
                if not col.startswith(f"{kind}/") or arr.dtype.kind != "f":
                    continue
                all_nan = jobs.nan_rows.get((arr.path, row))  # seen by the chunk pass
                if all_nan is None:
                    try:
                        values = np.asarray(arr[row])
                    except Exception:
                        continue  # reported as an undecodable chunk
                    all_nan = bool(values.size and np.isnan(values).all())
                if all_nan:
                    report.add(
                        "warning",
                        f"{frame.path}/{col} row {row}",
                        "tensor reads entirely as NaN (its chunk may be lost)",
                    )


def _check_tables(
    store: Store, report: IntegrityReport, jobs: _ChunkJobs, missing: Severity
) -> None:
    root = store.zarr_group
    try:
        parent = root.get("tables")
    except Exception as exc:
        report.add("error", "tables", f"unreadable ({type(exc).__name__}: {exc})")
        return
    if not isinstance(parent, zarr.Group):
        return
    for name, group in child_groups(parent):
        if not group.attrs.get("committed"):
            continue
        report.checked["tables"] += 1
        lengths = set()
        columns = group.attrs.get("columns", [])
        for col in columns if isinstance(columns, list) else []:
            col = str(col)
            apath = f"tables/{name}/{col}"
            try:
                arr = group[col]
            except Exception as exc:
                report.add("error", apath, f"array unreadable ({type(exc).__name__}: {exc})")
                continue
            assert isinstance(arr, zarr.Array)
            report.checked["arrays"] += 1
            lengths.add(arr.shape[0])
            jobs.add_array(report, arr, arr.shape[0], missing)
        if len(lengths) > 1:
            report.add("error", f"tables/{name}", f"columns differ in length: {sorted(lengths)}")


def _check_leftovers(store: Store, report: IntegrityReport) -> None:
    local = store._local
    if local is None:
        return
    partial = [p for p in Path(local).rglob("*.partial") if ".locks" not in p.parts]
    if partial:
        report.add(
            "warning",
            str(partial[0].relative_to(local)),
            f"{len(partial)} leftover *.partial file(s) of interrupted writes (harmless)",
        )


__all__ = ["IntegrityReport", "Problem", "VerifyProgress", "verify_store"]
