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
  were interrupted, invisible uncommitted experiment groups). By default only the
  directories where an interrupted write can leave a ``.partial`` file that no
  later write replaced are listed (not each committed row's chunk directories,
  which would cost as much as reading every chunk); ``strict=True`` lists all.

Frames write every chunk, even one equal to the fill value everywhere, so an
absent chunk inside a frame's committed rows is always an error. Tables use
Zarr's default (all-fill chunks are not written): there an absent chunk is a
*warning* unless ``strict=True``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ndt_store import _dims as D
from ndt_store import _leftovers
from ndt_store._array_spec import ArraySpec, simple_group_attributes
from ndt_store._frame import FRAME_ATTR, child_groups
from ndt_store._verify_chunks import ChunkPass, VerifyProgress

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

    The metadata are walked first (a local store's documents read as files, arrays
    of the frames' layout described without opening them in Zarr); then every
    chunk of the committed region is fetched, checked and decoded once, by
    ``workers`` threads at once for remote stores and local chunks of 1 MiB or
    more (smaller local chunks are faster in the calling thread); the semantic
    checks (steps increasing, snapshot rows) run last, on what the chunk pass read.
    Leftover ``*.partial`` files are searched for where interrupted writes leave
    them, or in every directory with ``strict=True`` (see :mod:`ndt_store._leftovers`).

    Parameters
    ----------
    store
        An open store (any mode; nothing is written).
    strict
        Also treat absent chunks of tables as errors (absent frame chunks always
        are), and search every directory of a local store for leftovers.
    workers
        Threads reading chunks (default 8).
    progress
        Called from the calling thread with a :class:`VerifyProgress` as chunks are
        checked (a few times a second at most, and once at the end).

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
    meta = _Metadata(store)
    layout = _leftovers.Layout()
    missing: Severity = "error" if strict else "warning"
    jobs = ChunkPass(meta.local, meta.zstore)
    later: list[Callable[[], None]] = []  # semantic checks, after the chunk pass
    for name, doc in _experiment_metadata(meta, report):
        entry = doc.get("attributes", {}).get("ndt_experiment")
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
        group = _GroupRef(meta, path)
        layout.group(group.store_path)
        if simple_group_attributes(doc) is None:  # let Zarr judge the document
            try:
                group.open()
            except Exception as exc:
                report.add("error", path, f"group unreadable ({type(exc).__name__}: {exc})")
                continue
        if "phase1" in entry:
            frame = _check_frame(report, jobs, layout, group, entry["phase1"], snapshots=False)
            if frame is not None:
                later.append(functools.partial(_check_phase1, report, frame, jobs))
        snaps = entry.get("snapshots", [])
        if snaps:
            name = str(entry.get("snapshot_frame", "snapshots"))
            frame = _check_frame(report, jobs, layout, group, name, snapshots=True)
            if frame is not None:
                later.append(functools.partial(_check_snapshots, report, frame, snaps, jobs))
    _check_tables(store, report, jobs, layout, missing)
    jobs.run(report.add, workers or _WORKERS, progress)
    for check in later:
        check()
    _check_leftovers(meta, None if strict else layout, report)
    return report


class _Metadata:
    """Reads the store's metadata documents: files of a local store, else Zarr's store."""

    def __init__(self, store: Store) -> None:
        self.root = store.zarr_group
        self.zstore = self.root.store
        self.base = self.root.path
        root = getattr(self.zstore, "root", None)
        self.local = None if store._local is None or root is None else os.fspath(root)

    def key(self, path: str) -> str:
        """The store key of ``path`` (relative to the store's root group)."""
        return f"{self.base}/{path}" if self.base else path

    def raw(self, key: str) -> bytes | None:
        """The bytes stored at ``key`` (``None`` when absent)."""
        if self.local is not None:
            try:
                with open(os.path.join(self.local, key), "rb") as fh:
                    return fh.read()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        buf = sync(self.zstore.get(key, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def document(self, key: str) -> Any:
        """The parsed JSON at ``key``, ``None`` when absent or not JSON."""
        try:
            data = self.raw(key)
            return None if data is None else json.loads(data)
        except (OSError, ValueError):
            return None

    def names(self, path: str) -> list[str]:
        """The entries directly under ``path``, sorted."""
        prefix = self.key(path)
        if self.local is not None:
            try:
                return sorted(os.listdir(os.path.join(self.local, prefix)))
            except (FileNotFoundError, NotADirectoryError):
                return []

        async def names() -> list[str]:
            return [n async for n in self.zstore.list_dir(prefix)]

        return sorted(sync(names()))


class _GroupRef:
    """A group by path: its documents read directly, opened through Zarr only when needed."""

    def __init__(self, meta: _Metadata, path: str) -> None:
        self.meta = meta
        self.path = path  # relative to the store's root group
        self.store_path = meta.key(path)  # Zarr's ``Group.path``
        self._group: zarr.Group | None = None

    def open(self) -> zarr.Group:
        """The group opened through Zarr (raises what Zarr raises)."""
        if self._group is None:
            group = self.meta.root[self.path]
            if not isinstance(group, zarr.Group):
                raise TypeError(f"{self.path} is an array, not a group")
            self._group = group
        return self._group

    def child(self, name: str) -> _GroupRef:
        """The subgroup ``name``."""
        return _GroupRef(self.meta, f"{self.path}/{name}")

    def attributes(self) -> dict[str, Any]:
        """The group's attributes (raises what Zarr raises when it must open it)."""
        doc = self.meta.document(f"{self.store_path}/zarr.json")
        attrs = simple_group_attributes(doc)
        return dict(self.open().attrs) if attrs is None else attrs

    def array(self, name: str) -> ArraySpec:
        """The array ``name`` (raises what Zarr raises when it must open it)."""
        path = f"{self.store_path}/{name}"
        spec = ArraySpec.from_document(path, self.meta.document(f"{path}/zarr.json"))
        if spec is not None:
            return spec
        arr = self.open()[name]
        if not isinstance(arr, zarr.Array):
            raise _NotAnArray
        return ArraySpec.from_zarr(arr)


class _NotAnArray(Exception):
    pass


def _experiment_metadata(meta: _Metadata, report: IntegrityReport) -> Iterator[tuple[str, Any]]:
    for name in meta.names("experiments"):
        if name == "zarr.json":
            continue
        key = meta.key(f"experiments/{name}/zarr.json")
        data = meta.raw(key)
        if data is None:
            continue
        try:
            doc = json.loads(data)
        except ValueError as exc:
            report.add("error", key, f"metadata is not valid JSON ({exc})")
            continue
        yield name, doc


@dataclass
class _FrameView:
    path: str
    rows: int
    columns: dict[str, Any]
    arrays: dict[str, ArraySpec]


def _check_frame(
    report: IntegrityReport,
    jobs: ChunkPass,
    layout: _leftovers.Layout,
    group: _GroupRef,
    name: str,
    *,
    snapshots: bool,
) -> _FrameView | None:
    """Check a committed frame's registry and arrays; queue its chunks (absent: errors)."""
    frame = group.child(name)
    path = frame.store_path
    try:
        info = frame.attributes().get(FRAME_ATTR)
    except Exception as exc:
        report.add("error", path, f"committed frame unreadable ({type(exc).__name__}: {exc})")
        return None
    if not isinstance(info, dict) or not isinstance(info.get("rows"), int):
        report.add("error", path, f"frame registry {FRAME_ATTR!r} missing or malformed")
        return None
    report.checked["frames"] += 1
    layout.group(path)
    rows = int(info["rows"])
    view = _FrameView(path, rows, dict(info.get("columns", {})), {})
    statics = dict(info.get("static", {}))
    for col, dims in {**view.columns, **statics}.items():
        apath = f"{path}/{col}"
        try:
            arr = frame.array(col)
        except _NotAnArray:
            report.add("error", apath, "listed as an array but is a group")
            continue
        except Exception as exc:
            report.add("error", apath, f"array unreadable ({type(exc).__name__}: {exc})")
            continue
        report.checked["arrays"] += 1
        names = arr.dimension_names
        if names is not None and list(names) != list(dims):
            report.add("error", apath, f"dims {names} != registry {dims}")
        n = arr.shape[0] if col in statics or not arr.shape else rows
        layout.array(arr, n)
        if col not in statics and arr.shape[0] < rows:
            report.add("error", apath, f"{arr.shape[0]} rows but {rows} are committed")
            continue
        view.arrays[col] = arr
        keep = col == D.STEP or col.startswith("present/")
        report.checked["chunks"] += jobs.add(
            arr, n if arr.shape else 0, "error", keep=keep, nan_rows=snapshots
        )
    return view


def _zarr_array(spec: ArraySpec, zstore: Any) -> zarr.Array:
    """``spec``'s array opened through Zarr."""
    if spec.arr is not None:
        return spec.arr
    arr = zarr.open_array(store=zstore, path=spec.path, mode="r", zarr_format=3)
    object.__setattr__(spec, "arr", arr)
    return arr


def _read(frame: _FrameView, col: str, jobs: ChunkPass) -> np.ndarray | None:
    """Rows of ``col`` from the chunk pass, else read through Zarr; ``None`` if unreadable."""
    spec = frame.arrays.get(col)
    if spec is None:
        return None
    values = jobs.values(spec.path)
    if values is not None and col in frame.columns:
        return values[: frame.rows]
    try:
        arr = _zarr_array(spec, jobs.zstore)
        return np.asarray(arr[: frame.rows] if col in frame.columns else arr[...])
    except Exception:  # already reported chunk by chunk
        return None


def _check_phase1(report: IntegrityReport, frame: _FrameView, jobs: ChunkPass) -> None:
    steps = _read(frame, D.STEP, jobs)
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
    report: IntegrityReport, frame: _FrameView, snaps: list[Any], jobs: ChunkPass
) -> None:
    steps = _read(frame, D.STEP, jobs)
    present = {col: _read(frame, col, jobs) for col in frame.arrays if col.startswith("present/")}
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
            flag = present.get(f"present/{kind}")
            if flag is not None and not bool(flag[row]):
                report.add("error", where, f"{kind} listed but its presence flag is unset")
            for col, arr in frame.arrays.items():
                if not col.startswith(f"{kind}/") or arr.dtype.kind != "f":
                    continue
                if _all_nan(arr, row, jobs):
                    report.add(
                        "warning",
                        f"{frame.path}/{col} row {row}",
                        "tensor reads entirely as NaN (its chunk may be lost)",
                    )


def _all_nan(spec: ArraySpec, row: int, jobs: ChunkPass) -> bool:
    """Whether ``row`` of ``spec`` reads entirely as NaN (False when unreadable)."""
    known = jobs.all_nan(spec.path, row)  # seen by the chunk pass
    if known is not None:
        return known
    try:
        values = np.asarray(_zarr_array(spec, jobs.zstore)[row])
    except Exception:
        return False  # reported as an undecodable chunk
    return bool(values.size and np.isnan(values).all())


def _check_tables(
    store: Store,
    report: IntegrityReport,
    jobs: ChunkPass,
    layout: _leftovers.Layout,
    missing: Severity,
) -> None:
    root = store.zarr_group
    try:
        parent = root.get("tables")
    except Exception as exc:
        report.add("error", "tables", f"unreadable ({type(exc).__name__}: {exc})")
        return
    if not isinstance(parent, zarr.Group):
        return
    for name, holder in child_groups(parent):
        where = f"tables/{name}"
        group, current = holder, holder.attrs.get("current")
        if current is not None:  # the table's pointer to its current version group
            where = f"{where}/{current}"
            try:
                version = holder[str(current)]
            except Exception as exc:
                report.add("error", where, f"current table version unreadable ({exc})")
                continue
            if not isinstance(version, zarr.Group):
                report.add("error", where, "current table version is not a group")
                continue
            group = version
        elif not holder.attrs.get("committed"):  # the layout before table versions
            continue
        report.checked["tables"] += 1
        layout.group(group.path)
        lengths = set()
        columns = group.attrs.get("columns", [])
        for col in columns if isinstance(columns, list) else []:
            col = str(col)
            apath = f"{where}/{col}"
            try:
                arr = group[col]
            except Exception as exc:
                report.add("error", apath, f"array unreadable ({type(exc).__name__}: {exc})")
                continue
            assert isinstance(arr, zarr.Array)
            report.checked["arrays"] += 1
            lengths.add(arr.shape[0])
            spec = ArraySpec.from_zarr(arr)
            layout.array(spec, arr.shape[0])
            report.checked["chunks"] += jobs.add(spec, arr.shape[0], missing)
        if len(lengths) > 1:
            report.add("error", where, f"columns differ in length: {sorted(lengths)}")


def _check_leftovers(
    meta: _Metadata, layout: _leftovers.Layout | None, report: IntegrityReport
) -> None:
    if meta.local is None:
        return
    found = _leftovers.find_partials(meta.local, layout)
    if found:
        report.add(
            "warning",
            os.path.relpath(found[0], meta.local),
            f"{len(found)} leftover *.partial file(s) of interrupted writes (harmless)",
        )


__all__ = ["IntegrityReport", "Problem", "VerifyProgress", "verify_store"]
