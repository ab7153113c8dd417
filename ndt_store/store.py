"""The store: labeled Zarr datasets of training dynamics, one group per experiment.

Layout (Zarr v3)::

    <root>/zarr.json                       attrs: ndt_store = {format: 1}
    <root>/experiments/<name>/zarr.json    attrs: ndt_experiment = {committed, revision,
                                                  phase1, content_hash, metadata,
                                                  snapshots, retired}
    <root>/experiments/<name>/phase1-<id>/ frame: step, layer, metrics, loss, grad_norm, epoch
    <root>/experiments/<name>/snapshots/   frame: step, weights/*, activations/*, attention/*
    <root>/tables/<name>/                  published tables, one 1-D array per column
    <root>/_cache/phase1-<id>/             derived cross-experiment view (rebuilt when stale)
    <root>/.locks/                         writer locks (local files, S3 leases)

An experiment is visible only once its group's ``committed`` flag is set, which
happens in the last write of an ingest; frames commit their rows last (see
:mod:`ndt_store._frame`). Writers merge into the entry as stored (read under the
lock), never a cached copy. Groups superseded by a replace or a removal are listed
under ``retired`` and kept for :data:`GRACE_SECONDS` for readers that opened them.
See ``docs/data-model.md`` and ``docs/guarantees.md``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.errors import ContainsGroupError

from ndt_store import _dims as D
from ndt_store._entries import (
    experiments_prefix,
    list_entries,
    parse_entry,
    read_entry,
)
from ndt_store._entry_format import (
    EXP_ATTR,
    EXPERIMENTS,
    FORMAT_VERSION,
    ROOT_ATTR,
    TABLES,
    summary_row,
)
from ndt_store._frame import (
    FRAME_ATTR,
    Frame,
    child_groups,
    choose_compressors,
    take_rows,
)
from ndt_store._location import (
    check_local_target,
    check_new_location,
    local_path,
    make_zarr_store,
    storage_errors,
)
from ndt_store._lock import store_lock
from ndt_store._names import normalize_name, validate_name
from ndt_store.errors import (
    ConflictError,
    CorruptStoreError,
    ExperimentExistsError,
    InputError,
    NdtStoreError,
    NotFoundError,
    ReadOnlyError,
)

if TYPE_CHECKING:  # xarray and pandas load on first use: `ls`, `show`, `verify` need neither
    import pandas as pd
    import xarray as xr

SNAPSHOTS = "snapshots"

GRACE_SECONDS = 3600.0
"""How long the groups of a replaced or removed experiment are kept for readers
that opened them before (the same grace rule as the derived cache's generations)."""

Mode = Literal["r", "r+", "a", "w", "w-"]

_PARAM_DIMS = {
    1: ("out",),
    2: ("out", "in"),
    3: ("out", "in", "kernel"),
    4: ("out", "in", "kernel_h", "kernel_w"),
}


def parameter_dims(ndim: int) -> tuple[str, ...]:
    """Names of a parameter tensor's own dims (``out``, ``in``, kernel dims)."""
    return _PARAM_DIMS.get(ndim, tuple(f"dim_{i}" for i in range(ndim)))


SNAPSHOT_CHUNK_BYTES = 64 * 2**20
"""Largest stored chunk of a snapshot tensor: smaller tensors are one chunk a step."""


def snapshot_chunks(shape: Sequence[int], itemsize: int) -> tuple[int, ...]:
    """Chunk of one step of a snapshot tensor: whole if it fits :data:`SNAPSHOT_CHUNK_BYTES`,
    else split along its leading axes.

    Examples
    --------
    >>> snapshot_chunks((8, 12, 1024, 1024), 4)  # 48 MiB a sample
    (1, 1, 12, 1024, 1024)
    >>> snapshot_chunks((2, 12, 2048, 2048), 4)  # 192 MiB a sample: 4 heads a chunk
    (1, 1, 4, 2048, 2048)
    >>> snapshot_chunks((16, 32), 4)
    (1, 16, 32)
    """
    chunk = [int(n) for n in shape]
    for axis in range(len(chunk)):
        rest = int(np.prod(chunk[axis + 1 :], dtype=np.int64)) * itemsize
        if rest * chunk[axis] <= SNAPSHOT_CHUNK_BYTES:
            break
        chunk[axis] = max(1, SNAPSHOT_CHUNK_BYTES // max(1, rest))
        if chunk[axis] > 1 or rest <= SNAPSHOT_CHUNK_BYTES:
            break
    return (1, *chunk)


def activation_dims(ndim: int) -> tuple[str, ...]:
    """Names of one sample's activation dims (``feature`` or ``channel, height, width``)."""
    if ndim == 1:
        return (D.FEATURE,)
    if ndim == 2:
        return ("position", D.FEATURE)
    if ndim == 3:
        return ("channel", "height", "width")
    return tuple(f"dim_{i}" for i in range(ndim))


class Store:
    """A ndt_store store. Create one with :func:`open_store`.

    An open store reads a consistent snapshot: what it has read is cached until
    :meth:`refresh` is called or this object writes. Writes to one experiment
    hold that experiment's writer lock.
    """

    def __init__(self, location: str | os.PathLike[str], root: zarr.Group, mode: Mode) -> None:
        self.location = os.fspath(location)
        self._root = root
        self._mode = mode
        self._local = local_path(location)
        self._entries: dict[str, dict[str, Any]] = {}
        self._listed = False
        self._exact: set[str] = set()  # entries known current: read or written under our lock
        # per experiment: revision, Phase 1 arrays, and their dataset once built
        self._phase1_cache: dict[str, tuple[str, dict[str, np.ndarray], xr.Dataset | None]] = {}

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        return f"<ndt_store.Store {self.location!r} mode={self._mode!r}>"

    @property
    def read_only(self) -> bool:
        """Whether this store was opened read-only."""
        return self._mode == "r"

    @property
    def zarr_group(self) -> zarr.Group:
        """The root Zarr group (for advanced use)."""
        return self._root

    def refresh(self) -> None:
        """Forget cached reads so the next call sees other writers' commits."""
        self._entries = {}
        self._listed = False
        self._phase1_cache.clear()
        fs = getattr(self._root.store, "fs", None)
        if fs is not None and hasattr(fs, "invalidate_cache"):
            fs.invalidate_cache()  # fsspec caches directory listings of remote stores

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError(f"store {self.location!r} is open read-only (mode='r')")

    def _experiments_group(self) -> zarr.Group:
        grp = self._root.get(EXPERIMENTS)
        if grp is None:
            self._check_writable()
            try:
                grp = self._root.create_group(EXPERIMENTS)
            except ContainsGroupError:  # another writer created it just now
                grp = self._root[EXPERIMENTS]
        assert isinstance(grp, zarr.Group)
        return grp

    @contextmanager
    def writer(self, experiment: str) -> Iterator[None]:
        """Hold the writer lock of ``experiment`` (re-entrant within this object).

        Raises
        ------
        ConflictError
            If another process is writing this experiment.
        """
        self._check_writable()
        experiment = validate_name(experiment)  # the lock file is named after it
        held: set[str] = getattr(self, "_held", set())
        self._held = held
        if experiment in held:
            yield
            return
        locks = None if self._local is None else self._local / ".locks"
        what = f"experiment {experiment!r}"
        lock = store_lock(self._root.store, locks, experiment, what=what)
        with storage_errors(self.location), lock:
            held.add(experiment)
            try:
                yield
            finally:
                held.discard(experiment)
                self._exact.discard(experiment)

    # ------------------------------------------------------------ experiments
    def _experiments_prefix(self) -> str:
        return experiments_prefix(self._root)

    def _parse_entry(self, name: str, raw: bytes) -> dict[str, Any] | None:
        return parse_entry(self.location, name, raw)

    def _read_entry(self, experiment: str) -> dict[str, Any] | None:
        """Read one experiment's committed entry from storage (None if absent); cache it."""
        entry = read_entry(self._root, self.location, experiment)
        if entry is None:
            self._entries.pop(experiment, None)
        else:
            self._entries[experiment] = entry
        return entry

    def _list_entries(self) -> dict[str, dict[str, Any]]:
        """Read every experiment's attributes concurrently; cached until :meth:`refresh`."""
        if self._listed:
            return self._entries
        self._entries = list_entries(self._root, self.location)
        self._listed = True
        return self._entries

    def entries(self) -> Mapping[str, Mapping[str, Any]]:
        """Committed experiments' entries (``revision``, ``phase1``, ``metadata``...) by name.

        Read once and cached until :meth:`refresh`; sorted by name. Read-only view.
        """
        return MappingProxyType(self._list_entries())

    def experiments(self) -> list[str]:
        """Names of the committed experiments, sorted.

        Examples
        --------
        >>> import tempfile, ndt_store
        >>> ndt_store.open_store(tempfile.mkdtemp() + "/s.zarr").experiments()
        []
        """
        return list(self._list_entries())

    def __contains__(self, experiment: object) -> bool:
        if not isinstance(experiment, str):
            return False
        experiment = normalize_name(experiment)
        if experiment in self._entries:
            return True
        if self._listed:
            return False
        try:
            validate_name(experiment)
        except NdtStoreError:
            return False
        return self._read_entry(experiment) is not None

    def _entry(self, experiment: str) -> dict[str, Any]:
        entry = self._entries.get(experiment)
        if entry is not None:
            return entry
        entry = self._read_entry(experiment)  # one small read, not a listing
        if entry is None:
            self.refresh()
            entries = self._list_entries()
            known = ", ".join(entries) or "none"
            raise NotFoundError(
                f"experiment {experiment!r} is not in store {self.location!r} (known: {known})"
            )
        return entry

    def _committed(self, experiment: str) -> dict[str, Any]:
        """The current committed entry of ``experiment``, for a writer holding its lock.

        Never the cached copy a reader may hold: another writer may have committed
        since (a writer merges into what is stored, it never writes back a stale
        copy). While this object has held the lock without a break (a local lock
        excludes every other writer), what it read or wrote under it is current.
        """
        assert experiment in getattr(self, "_held", ()), "call under self.writer()"
        if experiment in self._exact and experiment in self._entries:
            return self._entries[experiment]
        entry = self._read_entry(experiment)
        if entry is None:
            self._entry(experiment)  # raises NotFoundError naming the known experiments
            raise NotFoundError(f"experiment {experiment!r} is not in store {self.location!r}")
        if self._local is not None:
            self._exact.add(experiment)
        return entry

    def metadata(self, experiment: str) -> dict[str, Any]:
        """Run metadata of ``experiment`` (arch_name, dataset, num_steps, ...)."""
        return dict(self._entry(normalize_name(experiment)).get("metadata", {}))

    def _exp_group(self, experiment: str) -> zarr.Group:
        grp = self._experiments_group()[experiment]
        assert isinstance(grp, zarr.Group)
        return grp

    def _set_entry(self, experiment: str, entry: dict[str, Any]) -> None:
        self._exp_group(experiment).attrs.update({EXP_ATTR: entry})
        self._entries[experiment] = entry
        if self._local is not None and experiment in getattr(self, "_held", ()):
            self._exact.add(experiment)
        if self._listed:
            self._entries = dict(sorted(self._entries.items()))
        self._phase1_cache.pop(experiment, None)

    def delete_experiment(self, experiment: str, *, keep_for_readers: bool = True) -> None:
        """Delete ``experiment`` and everything stored for it.

        The experiment disappears from listings at once (one metadata write). Its
        arrays are kept for :data:`GRACE_SECONDS` for readers that opened it before,
        then removed by :meth:`collect_garbage` (called here, and by the next
        write of the same name).

        Parameters
        ----------
        experiment
            The experiment to delete.
        keep_for_readers
            ``False`` removes the arrays at once (for undoing an experiment that a
            failed command has just created, which no reader relies on); groups an
            earlier removal keeps for readers still stay their grace period.
        """
        experiment = validate_name(experiment)
        self._entry(experiment)
        with self.writer(experiment):
            entry = self._committed(experiment)
            self._guard_local(experiment)
            grp = self._exp_group(experiment)
            if not keep_for_readers and not entry.get("retired"):
                grp.attrs.update({EXP_ATTR: {"committed": False}})
                self._experiments_group().__delitem__(experiment)
                self._entries.pop(experiment, None)
                self.refresh()
                return
            now = time.time()
            live = [r for r in _live_groups(entry, now) if r["group"] in grp]
            retired = [*entry.get("retired", []), *live]
            grp.attrs.update(
                {EXP_ATTR: {"committed": False, "removed_at": now, "retired": retired}}
            )
            self._entries.pop(experiment, None)
        self.refresh()
        self.collect_garbage()

    def collect_garbage(self) -> int:
        """Remove groups of replaced or removed experiments older than the grace period.

        Groups superseded less than :data:`GRACE_SECONDS` ago stay for readers that
        opened them; experiments being written by another process are skipped.

        Returns
        -------
        int
            The number of groups removed.
        """
        self._check_writable()
        parent = self._experiments_group()
        removed = 0
        now = time.time()
        for name, grp in child_groups(parent):
            entry = grp.attrs.get(EXP_ATTR)
            if not isinstance(entry, dict) or not entry.get("retired"):
                continue
            due = [r for r in entry["retired"] if now - float(r.get("at", 0)) > GRACE_SECONDS]
            gone = entry.get("removed_at") is not None and len(due) == len(entry["retired"])
            if not due:
                continue
            try:
                with self.writer(name):
                    removed += self._collect_one(name, gone)
            except ConflictError:
                continue
        return removed

    def _collect_one(self, experiment: str, gone: bool) -> int:
        """Under the lock: drop the expired retired groups of ``experiment``."""
        self._guard_local(experiment)
        parent = self._experiments_group()
        grp = self._exp_group(experiment)
        entry = grp.attrs.get(EXP_ATTR)
        if not isinstance(entry, dict):
            return 0
        now = time.time()
        keep = [r for r in entry.get("retired", []) if now - float(r.get("at", 0)) <= GRACE_SECONDS]
        due = [r for r in entry.get("retired", []) if r not in keep]
        if gone and not keep and not entry.get("committed"):
            parent.__delitem__(experiment)
            return len(due)
        grp.attrs.update({EXP_ATTR: {**entry, "retired": keep}})
        if entry.get("committed"):
            self._entries.pop(experiment, None)
        for r in due:
            if r.get("group") in grp:
                grp.__delitem__(r["group"])
        return len(due)

    def _guard_local(self, experiment: str) -> None:
        """Refuse to write through an experiment directory that leads out of the store."""
        if self._local is None:
            return
        base = self._local / EXPERIMENTS
        path = base / experiment
        if (
            path.is_symlink()
            or base.is_symlink()
            or (path.exists() and path.resolve().parent != base.resolve())
        ):
            raise CorruptStoreError(
                f"{path} is a symbolic link (to {os.path.realpath(path)}); ndt_store never "
                "writes or deletes through links out of the store: remove the link by hand"
            )

    def _fresh_experiment_group(self, experiment: str) -> tuple[zarr.Group, list[dict[str, Any]]]:
        """An (invisible) experiment group to write, and the retired groups it keeps.

        Leftovers of interrupted writes are removed; groups of a removed experiment
        of the same name stay for their readers until the grace period is over.
        """
        self._guard_local(experiment)
        parent = self._experiments_group()
        attrs = {EXP_ATTR: {"committed": False}}
        if experiment not in parent:
            return parent.create_group(experiment, attributes=attrs), []
        grp = self._exp_group(experiment)
        old = grp.attrs.get(EXP_ATTR)
        now = time.time()
        retired = old.get("retired", []) if isinstance(old, dict) else []
        keep = [r for r in retired if now - float(r.get("at", 0)) <= GRACE_SECONDS]
        if not keep:
            parent.__delitem__(experiment)
            return parent.create_group(experiment, attributes=attrs), []
        kept = {r["group"] for r in keep}
        for name, _ in child_groups(grp):
            if name not in kept:
                grp.__delitem__(name)
        grp.attrs.update({EXP_ATTR: {"committed": False, "retired": keep}})
        return grp, keep

    # ------------------------------------------------------------------ phase 1
    def write_experiment(
        self,
        experiment: str,
        phase1: xr.Dataset,
        metadata: Mapping[str, Any],
        *,
        content_hash: str | None = None,
        overwrite: bool = False,
    ) -> Literal["created", "unchanged", "replaced"]:
        """Write a whole Phase 1 experiment atomically.

        Parameters
        ----------
        experiment
            Experiment name (validated).
        phase1
            Dataset over ``(step, layer)`` with the four metrics and ``loss``,
            ``grad_norm``, ``epoch`` over ``step``.
        metadata
            JSON-serialisable run metadata.
        content_hash
            Identity of the content; re-writing the same hash is a no-op.
        overwrite
            Replace an experiment with different content (otherwise an error).

        Returns
        -------
        str
            ``"created"``, ``"unchanged"`` or ``"replaced"``.
        """
        experiment = validate_name(experiment)
        self._check_writable()
        layers = [validate_name(str(x), kind="layer", path=False) for x in phase1[D.LAYER].values]
        with self.writer(experiment):
            old = self._read_entry(experiment)  # fresh, under the lock
            self._phase1_cache.pop(experiment, None)
            kept: list[dict[str, Any]] = []
            if old is not None:
                if content_hash is not None and old.get("content_hash") == content_hash:
                    return "unchanged"
                if not overwrite:
                    raise ExperimentExistsError(
                        f"experiment {experiment!r} already exists in {self.location!r} with "
                        "different content; pass overwrite=True (CLI: --overwrite) to replace it"
                    )
                self._guard_local(experiment)
                grp = self._exp_group(experiment)
            else:
                grp, kept = self._fresh_experiment_group(experiment)
            frame_name = f"phase1-{uuid.uuid4().hex[:12]}"
            frame = _create_phase1_frame(grp, frame_name, layers)
            _append_phase1_rows(frame, phase1, layers)
            entry = {
                "committed": True,
                "revision": uuid.uuid4().hex,
                "phase1": frame_name,
                "content_hash": content_hash,
                "metadata": dict(metadata),
                "snapshots": (old or {}).get("snapshots", []),
            }
            if old is not None:
                # the replaced Phase 1 group stays for readers that opened it (grace rule)
                retired = [*old.get("retired", []), {"group": old["phase1"], "at": time.time()}]
                entry.update(_carry(old), retired=_collect_due(grp, retired))
            else:
                entry.update(_new_layout(kept))
            self._set_entry(experiment, entry)
        return "replaced" if old is not None else "created"

    def create_run(
        self, experiment: str, metadata: Mapping[str, Any], layers: Sequence[str]
    ) -> None:
        """Create an experiment with an empty Phase 1 series, to be filled by appends.

        If the experiment exists with the same layers it is kept (resume).
        """
        experiment = validate_name(experiment)
        layers = [validate_name(layer, kind="layer", path=False) for layer in layers]
        with self.writer(experiment):
            old = self._read_entry(experiment)  # fresh, under the lock
            self._phase1_cache.pop(experiment, None)
            if old is not None:
                have = list(self._phase1_numpy(experiment)[D.LAYER])
                if have != list(layers):
                    raise ExperimentExistsError(
                        f"experiment {experiment!r} exists with layers {have}; cannot resume "
                        f"with layers {list(layers)}"
                    )
                return
            grp, kept = self._fresh_experiment_group(experiment)
            frame_name = f"phase1-{uuid.uuid4().hex[:12]}"
            _create_phase1_frame(grp, frame_name, list(layers))
            self._set_entry(
                experiment,
                {
                    "committed": True,
                    "revision": uuid.uuid4().hex,
                    "phase1": frame_name,
                    "content_hash": None,
                    "metadata": dict(metadata),
                    "snapshots": [],
                    **_new_layout(kept),
                },
            )

    def update_metadata(self, experiment: str, **fields: Any) -> None:
        """Merge ``fields`` into the run metadata of ``experiment``.

        The merge is made into the entry as stored now (read under the writer
        lock), so fields, records and snapshots committed by other writers stay.
        """
        experiment = normalize_name(experiment)
        with self.writer(experiment):
            entry = dict(self._committed(experiment))
            entry["metadata"] = {**entry.get("metadata", {}), **fields}
            self._set_entry(experiment, entry)

    def append_phase1(self, experiment: str, rows: xr.Dataset) -> int:
        """Append Phase 1 records (steps after the last stored one) and commit them.

        Returns the number of stored records.
        """
        experiment = normalize_name(experiment)
        with self.writer(experiment):
            entry = dict(self._committed(experiment))
            frame = Frame(self._exp_group(experiment)[entry["phase1"]])  # type: ignore[arg-type]
            layers = [str(x) for x in frame.read(D.LAYER)]
            if frame.rows:
                last = int(frame.read(D.STEP)[-1])
                first_new = int(np.min(rows[D.STEP].values))
                if first_new <= last:
                    raise InputError(
                        f"experiment {experiment!r}: cannot append step {first_new}; "
                        f"steps must increase past the last stored step {last}"
                    )
            count = _append_phase1_rows(frame, rows, layers)
            entry["revision"] = uuid.uuid4().hex
            self._set_entry(experiment, entry)
            return count

    def _phase1_numpy(self, experiment: str) -> dict[str, np.ndarray]:
        """The Phase 1 arrays of ``experiment`` (cached by revision; no xarray)."""
        entry = self._entry(experiment)
        cached = self._phase1_cache.get(experiment)
        if cached is not None and cached[0] == entry["revision"]:
            return cached[1]
        frame = self._frame_at(f"{EXPERIMENTS}/{experiment}/{entry['phase1']}", experiment)
        if frame.rows == 0:
            layers = frame.read(D.LAYER)
            arrays = {
                D.STEP: np.zeros(0, np.int64),
                "metrics": np.zeros((0, layers.size, len(D.PHASE1_METRICS))),
                D.LOSS: np.zeros(0),
                D.GRAD_NORM: np.zeros(0),
                D.EPOCH: np.zeros(0, np.int64),
                D.LAYER: layers,
            }
        else:
            arrays = frame.read_many((D.STEP, D.LAYER, "metrics", D.LOSS, D.GRAD_NORM, D.EPOCH))
        arrays[D.LAYER] = np.asarray([str(x) for x in arrays[D.LAYER]], dtype=object)
        self._phase1_cache[experiment] = (entry["revision"], arrays, None)
        return arrays

    def summary(self, experiment: str) -> dict[str, Any]:
        """What ``ndt-store ls`` shows of one experiment, read without building a dataset.

        Returns
        -------
        dict
            ``experiment``, ``arch`` and ``dataset`` (from the metadata), ``records``,
            ``first_step`` and ``last_step`` (``None`` without records), ``layers`` and
            ``snapshots`` (counts).

        Examples
        --------
        >>> import tempfile, ndt_store
        >>> store = ndt_store.open_store(tempfile.mkdtemp() + "/s.zarr")
        >>> store.create_run("e", {"arch_name": "mlp"}, ["fc1", "fc2"])
        >>> store.summary("e")["layers"]
        2
        """
        experiment = normalize_name(experiment)
        arrays = self._phase1_numpy(experiment)
        return summary_row(
            experiment, self._entry(experiment), arrays[D.STEP], arrays[D.LAYER].size
        )

    def _frame_at(self, path: str, experiment: str) -> Frame:
        """Open the frame group at ``path`` (relative to the root) in one metadata read."""
        full = f"{self._root.path}/{path}" if self._root.path else path
        try:
            group = zarr.open_group(self._root.store, path=full, mode="r", zarr_format=3)
        except (FileNotFoundError, KeyError, ValueError):
            raise CorruptStoreError(
                f"{self.location}: experiment {experiment!r} lists group {path!r} which is "
                "missing or unreadable"
            ) from None
        return Frame(group)

    def phase1(self, experiment: str) -> xr.Dataset:
        """Phase 1 dataset of one experiment over ``(step, layer)``.

        Layers are the experiment's own, in their original order; ``index`` is the
        record index along ``step``; metadata are attributes.
        """
        experiment = normalize_name(experiment)
        arrays = self._phase1_numpy(experiment)  # refreshes the cache entry if stale
        revision, _, ds = self._phase1_cache[experiment]
        if ds is None:
            meta = self._entry(experiment).get("metadata", {})
            ds = _phase1_dataset(arrays, meta, experiment)
            self._phase1_cache[experiment] = (revision, arrays, ds)
        return ds

    def record(self, experiment: str, step: int) -> dict[str, Any]:
        """The Phase 1 record closest to training ``step``, as the study's JSON dict.

        Ties go to the earlier record (as the legacy ``min`` over positions did).
        """
        arrays = self._phase1_numpy(normalize_name(experiment))
        steps = arrays[D.STEP]
        if steps.size == 0:
            raise NotFoundError(f"experiment {experiment!r} has no Phase 1 records yet")
        i = int(np.argmin(np.abs(steps - int(step))))
        return _record_dict(arrays, i)

    def measurements(self, experiments: Sequence[str] | None = None) -> xr.Dataset:
        """One lazy dataset over ``(experiment, step, layer)`` across experiments.

        Layers are the union of the experiments' layers (NaN where one lacks a
        layer), steps the union of their training steps; run metadata are
        coordinates on ``experiment``.
        """
        from ndt_store._catalog import catalog_dataset

        ds = catalog_dataset(self)
        if experiments is not None:
            missing = [e for e in experiments if e not in ds[D.EXPERIMENT].values]
            if missing:
                raise NotFoundError(f"experiments not in store {self.location!r}: {missing}")
            ds = ds.sel({D.EXPERIMENT: list(experiments)})
        return ds

    # ---------------------------------------------------------------- snapshots
    def _snapshot_frame(
        self, experiment: str, *, create: bool = False, entry: Mapping[str, Any] | None = None
    ) -> Frame | None:
        entry = self._entry(experiment) if entry is None else entry
        name = _snapshot_frame_name(entry)
        grp = self._exp_group(experiment)
        if name in grp:
            node = grp[name]
            listed = entry.get("snapshots")
            if create and not listed and FRAME_ATTR not in node.attrs:
                # left by a writer killed while creating it; nothing was committed there
                return Frame.create(grp, name)
            return Frame(node)  # type: ignore[arg-type]
        if not create:
            return None
        return Frame.create(grp, name)

    def write_snapshot(
        self,
        experiment: str,
        step: int,
        *,
        weights: Mapping[str, np.ndarray] | None = None,
        activations: Mapping[str, np.ndarray] | None = None,
        attention: Mapping[str, np.ndarray] | None = None,
        labels: np.ndarray | None = None,
        probe_hash: str | None = None,
        info: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Literal["created", "unchanged", "replaced"]:
        """Store tensors taken at training ``step`` as one committed unit.

        One step of :meth:`write_snapshots` (which commits several at once).

        Parameters
        ----------
        experiment
            An existing experiment.
        step
            Training step of the snapshot.
        weights
            ``{parameter name: array}``; dims ``(step, out, in, ...)``.
        activations
            ``{layer: array[sample, ...]}`` on the fixed probe batch.
        attention
            ``{layer: array[sample, head, query, key]}`` probabilities.
        labels
            Probe-batch labels (``[sample]``), stored once as the ``label`` coordinate.
        probe_hash
            Hash of the probe inputs; all snapshots of an experiment must share it.
        info
            Scalars recorded with the snapshot (``loss`` ...), JSON types.
        overwrite
            Replace a snapshot already stored at ``step``.

        Returns
        -------
        str
            ``"created"``, or ``"replaced"`` when a snapshot at ``step`` was replaced.
        """
        step = int(step)

        def one(tensors: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
            return None if tensors is None else {k: np.asarray(v)[None] for k, v in tensors.items()}

        done = self._write_snapshots(
            experiment,
            [step],
            weights=one(weights),
            activations=one(activations),
            attention=one(attention),
            labels=labels,
            probe_hash=probe_hash,
            infos=None if info is None else [info],
            overwrite=overwrite,
            caller="write_snapshot",
        )
        return done[step]

    def write_snapshots(
        self,
        experiment: str,
        steps: Sequence[int],
        *,
        weights: Mapping[str, np.ndarray] | None = None,
        activations: Mapping[str, np.ndarray] | None = None,
        attention: Mapping[str, np.ndarray] | None = None,
        labels: np.ndarray | None = None,
        probe_hash: str | None = None,
        infos: Sequence[Mapping[str, Any]] | None = None,
        overwrite: bool = False,
    ) -> dict[int, Literal["created", "replaced"]]:
        """Store the tensors of several training steps as **one** committed unit.

        The same as calling :meth:`write_snapshot` once per step, but committed
        together: one writer lock, one append of ``len(steps)`` rows to every
        tensor (zarr writes a tensor's chunks, one per step, concurrently) and one
        update of the experiment's entry listing every step. A reader, or a store
        left by a killed writer, shows either all of these steps or none of them.
        Memory: the caller holds every step's tensors at once, so batch by size
        (:func:`~ndt_store.synth.synth_store` writes batches of at most
        :data:`~ndt_store.synth.BATCH_BYTES`).

        Parameters
        ----------
        experiment
            An existing experiment.
        steps
            Training steps of the snapshots, unique; row ``i`` of every tensor
            belongs to ``steps[i]``.
        weights
            ``{parameter name: array[step, out, in, ...]}``.
        activations
            ``{layer: array[step, sample, ...]}`` on the fixed probe batch.
        attention
            ``{layer: array[step, sample, head, query, key]}`` probabilities.
        labels
            Probe-batch labels (``[sample]``), stored once as the ``label`` coordinate.
        probe_hash
            Hash of the probe inputs; all snapshots of an experiment must share it.
        infos
            Per step, the scalars recorded with its snapshot (``loss`` ...), JSON types.
        overwrite
            Replace snapshots already stored at some of ``steps`` (otherwise an error,
            and nothing is written).

        Returns
        -------
        dict
            ``{step: "created" | "replaced"}`` for every step, in the order given.

        Raises
        ------
        InputError
            Repeated steps, a tensor whose leading axis is not ``len(steps)`` long,
            malformed tensors or ``infos``, or a probe hash differing from the stored
            one; nothing is written.
        ExperimentExistsError
            A step already has a snapshot of the same kind and ``overwrite`` is false.

        Examples
        --------
        >>> import tempfile, numpy as np, ndt_store
        >>> store = ndt_store.open_store(tempfile.mkdtemp() + "/s.zarr")
        >>> store.create_run("run", {"arch_name": "mlp"}, ["fc"])
        >>> w = np.stack([np.full((2, 3), s, np.float32) for s in (0, 10, 20)])
        >>> store.write_snapshots("run", [0, 10, 20], weights={"fc.weight": w},
        ...                       infos=[{"loss": 2.0}, {"loss": 1.5}, {"loss": 1.2}])
        {0: 'created', 10: 'created', 20: 'created'}
        >>> store.snapshot_steps("run")
        [0, 10, 20]
        >>> float(store.weights("run")["fc.weight"].sel(step=10)[0, 0])
        10.0
        """
        return self._write_snapshots(
            experiment,
            steps,
            weights=weights,
            activations=activations,
            attention=attention,
            labels=labels,
            probe_hash=probe_hash,
            infos=infos,
            overwrite=overwrite,
            caller="write_snapshots",
        )

    def _write_snapshots(
        self,
        experiment: str,
        steps: Sequence[int],
        *,
        weights: Mapping[str, np.ndarray] | None,
        activations: Mapping[str, np.ndarray] | None,
        attention: Mapping[str, np.ndarray] | None,
        labels: np.ndarray | None,
        probe_hash: str | None,
        infos: Sequence[Mapping[str, Any]] | None,
        overwrite: bool,
        caller: str,
    ) -> dict[int, Literal["created", "replaced"]]:
        """:meth:`write_snapshots`; ``caller`` names the public method in error messages."""
        experiment = normalize_name(experiment)
        steps_list = _checked_steps(steps)
        k = len(steps_list)
        info_list = _checked_infos(infos, k)
        columns: dict[str, np.ndarray] = {D.STEP: np.asarray(steps_list, dtype=np.int64)}
        dims: dict[str, tuple[str, ...]] = {D.STEP: (D.STEP,)}
        chunks: dict[str, tuple[int, ...]] = {}
        kinds: list[str] = []
        for kind, tensors, dimfn in (
            (D.WEIGHTS, weights, parameter_dims),
            (D.ACTIVATIONS, activations, lambda n: (D.SAMPLE, *activation_dims(n - 1))),
            (D.ATTENTION, attention, lambda n: (D.SAMPLE, D.HEAD, D.QUERY, D.KEY)),
        ):
            if not tensors:
                continue
            kinds.append(kind)
            for name, value in tensors.items():
                name = validate_name(name, kind="parameter" if kind == D.WEIGHTS else "layer")
                arr = np.asarray(value)
                if arr.dtype.kind not in "fiub":
                    raise InputError(f"{kind} {name!r}: dtype {arr.dtype} is not numeric")
                if arr.ndim == 0 or arr.shape[0] != k:
                    got = "no leading axis" if arr.ndim == 0 else f"shape {arr.shape}"
                    raise InputError(
                        f"{kind} {name!r}: needs a leading step axis of length {k} "
                        f"(one row per step of {steps_list}); got {got}"
                    )
                row = arr.shape[1:]
                if kind == D.ATTENTION and len(row) != 4:
                    raise InputError(
                        f"attention {name!r} must be [sample, head, query, key]"
                        f"{' per step' if caller == 'write_snapshots' else ''}; got shape {row}"
                    )
                col = f"{kind}/{name}"
                columns[col] = arr
                dims[col] = (D.STEP, *dimfn(len(row)))
                chunks[col] = snapshot_chunks(row, arr.dtype.itemsize)
            columns[f"present/{kind}"] = np.ones(k, dtype=bool)
            dims[f"present/{kind}"] = (D.STEP,)
        if not kinds:
            raise InputError(f"{caller} needs weights, activations or attention")
        asked = set(steps_list)
        with self.writer(experiment):
            entry = dict(self._committed(experiment))  # as stored now: merge, never overwrite
            snaps = list(entry.get("snapshots", []))
            frame = self._snapshot_frame(experiment, create=True, entry=entry)
            assert frame is not None
            if probe_hash is not None:
                known: Any = frame.group.attrs.get(D.PROBE_HASH)
                if known is not None and known != probe_hash and (activations or attention):
                    raise InputError(
                        f"experiment {experiment!r}: probe batch hash {probe_hash[:12]} differs "
                        f"from the stored {known[:12]}; activations would not be comparable"
                    )
            existing = [s for s in snaps if s["step"] in asked and set(s["kinds"]) & set(kinds)]
            if existing and not overwrite:
                raise ExperimentExistsError(
                    f"experiment {experiment!r} already has a snapshot at step "
                    f"{existing[0]['step']} ({', '.join(existing[0]['kinds'])}); "
                    "pass overwrite=True to replace it"
                )
            extra: dict[str, Any] = {}
            if probe_hash is not None and (activations or attention):
                extra[D.PROBE_HASH] = probe_hash
            if labels is not None and D.LABEL not in frame.static:
                labels = np.asarray(labels)  # per sample, or per token (sample, position)
                frame.add_static(D.LABEL, labels, (D.SAMPLE, "position")[: max(1, labels.ndim)])
            # attention that does not compress (dense softmax) is stored raw: decoding
            # it would cost CPU on every read for ~5% of space (docs/data-model.md)
            codecs = {
                col: choose_compressors(values[0])
                for col, values in columns.items()
                if col.startswith(f"{D.ATTENTION}/") and col not in frame.columns
            }
            rows = frame.append(
                columns, dims=dims, chunks=chunks, extra_attrs=extra, compressors=codecs
            )
            snaps = [s for s in snaps if s not in existing]
            written = sorted(c for c in columns if c.split("/", 1)[0] in kinds)
            first = rows - k
            for i, (step, info) in enumerate(zip(steps_list, info_list, strict=True)):
                snaps.append(
                    {"step": step, "row": first + i, "kinds": kinds, "columns": written,
                     **dict(info or {})}
                )  # fmt: skip
            entry["snapshots"] = snaps
            entry["revision"] = uuid.uuid4().hex
            self._set_entry(experiment, entry)
        replaced = {int(s["step"]) for s in existing}
        return {s: "replaced" if s in replaced else "created" for s in steps_list}

    def snapshot_steps(self, experiment: str, kind: str | None = None) -> list[int]:
        """Sorted training steps with a committed snapshot (of ``kind`` if given)."""
        snaps = self._entry(normalize_name(experiment)).get("snapshots", [])
        return sorted({s["step"] for s in snaps if kind is None or kind in s["kinds"]})

    def _snapshot_selection(
        self, experiment: str, kind: str
    ) -> tuple[Frame, np.ndarray, np.ndarray, set[str] | None]:
        """The listed snapshots of ``kind``: frame, steps, rows, and the columns they wrote
        (``None`` when a snapshot predates that record: every column then counts)."""
        snaps = self._entry(experiment).get("snapshots", [])
        listed = [s for s in snaps if kind in s["kinds"]]
        written: set[str] | None = set()
        for s in listed:
            if written is not None and "columns" in s:
                written.update(s["columns"])
            else:
                written = None
        chosen = {s["step"]: s["row"] for s in listed}
        frame = self._snapshot_frame(experiment)
        if frame is None or not chosen:
            raise NotFoundError(f"experiment {experiment!r} has no stored {kind}")
        steps = np.asarray(sorted(chosen), dtype=np.int64)
        rows = np.asarray([chosen[s] for s in steps], dtype=np.int64)
        return frame, steps, rows, written

    def _snapshot_arrays(
        self, experiment: str, kind: str, name: str | None
    ) -> dict[str, xr.DataArray]:
        import xarray as xr

        experiment = normalize_name(experiment)
        name = None if name is None else normalize_name(name)
        frame, steps, rows, written = self._snapshot_selection(experiment, kind)
        prefix = f"{kind}/"
        # a column only the replaced snapshots wrote is not shown
        cols = {
            c: d
            for c, d in frame.columns.items()
            if c.startswith(prefix) and (written is None or c in written)
        }
        if name is not None:
            col = prefix + name
            if col not in cols:
                have = ", ".join(c[len(prefix) :] for c in cols)
                raise NotFoundError(
                    f"experiment {experiment!r} has no {kind} for {name!r} (stored: {have})"
                )
            cols = {col: cols[col]}
        coords: dict[str, Any] = {D.STEP: steps}
        attrs: dict[str, Any] = {}
        if kind != D.WEIGHTS:
            if D.LABEL in frame.static:
                coords[D.LABEL] = (tuple(frame.static[D.LABEL]), frame.read(D.LABEL))
            if D.PROBE_HASH in frame.group.attrs:
                attrs[D.PROBE_HASH] = frame.group.attrs[D.PROBE_HASH]
        # rows in storage order (the usual case) are a slice: no gather, no copy
        contiguous = rows.size and np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size))
        out = {}
        for col, dims in cols.items():
            # a row range stays known as stored chunks (reductions read them directly)
            data = (
                take_rows(frame.dask(col), int(rows[0]), int(rows[-1]) + 1)
                if contiguous
                else frame.dask(col)[rows]
            )
            label = col[len(prefix) :]
            here = {k: v for k, v in coords.items() if k == D.STEP or set(v[0]) <= set(dims)}
            da_ = xr.DataArray(data, dims=dims, coords=here, name=label, attrs=dict(attrs))
            da_.attrs["kind"] = kind
            da_.attrs["experiment"] = experiment
            if kind != D.WEIGHTS:
                da_.attrs["layer"] = label
            out[label] = da_
        return out

    def weights(
        self, experiment: str, *, steps: Sequence[int] | None = None
    ) -> dict[str, xr.DataArray]:
        """Stored parameters of ``experiment``: ``{name: DataArray(step, ...)}``, lazy, by step."""
        out = self._snapshot_arrays(experiment, D.WEIGHTS, None)
        # tied parameters are stored once; their other names serve the same array
        for alias, name in self.metadata(experiment).get(D.WEIGHT_ALIASES, {}).items():
            if name in out and alias not in out:
                out[alias] = out[name].rename(alias).assign_attrs(alias_of=name)
        if steps is not None:
            out = {k: v.sel({D.STEP: list(steps)}) for k, v in out.items()}
        return out

    def activations(self, experiment: str, layer: str | None = None) -> Any:
        """Probe-batch activations: one layer's DataArray, or ``{layer: DataArray}``."""
        out = self._snapshot_arrays(experiment, D.ACTIVATIONS, layer)
        return out[normalize_name(layer)] if layer is not None else out

    def attention(self, experiment: str, layer: str | None = None) -> Any:
        """Attention probabilities ``(step, sample, head, query, key)`` per layer."""
        out = self._snapshot_arrays(experiment, D.ATTENTION, layer)
        # a stored subset of heads / queries keeps the indices it was taken at
        subset = self.metadata(experiment).get(D.ATTENTION_SUBSET) or {}

        def label(v: xr.DataArray) -> xr.DataArray:
            coords = {D.HEAD: subset.get(D.HEAD) or np.arange(v.sizes[D.HEAD])}
            if subset.get(D.QUERY):
                coords[D.QUERY] = subset[D.QUERY]
            return v.assign_coords(coords)

        if layer is not None:
            layer = normalize_name(layer)
            return label(out[layer])
        return {k: label(v) for k, v in out.items()}

    # ------------------------------------------------------------------ tables
    def write_table(self, name: str, table: pd.DataFrame, *, overwrite: bool = False) -> str:
        """Store a small table (e.g. a published jump table) under ``tables/<name>``.

        The columns are written into a fresh version group; the table's pointer to
        it is written last, so a crash leaves either the old table or the new one.
        """
        name = validate_name(name, kind="table")
        self._check_writable()
        with self.writer(f"table-{name}"):
            parent = self._root.require_group(TABLES)
            assert isinstance(parent, zarr.Group)
            holder = parent.get(name)
            current: Any = holder.attrs.get("current") if isinstance(holder, zarr.Group) else None
            if current is not None:
                assert isinstance(holder, zarr.Group)
                if _table_equal(_read_table(holder[current]), table):  # type: ignore[arg-type]
                    return "unchanged"
                if not overwrite:
                    raise ExperimentExistsError(
                        f"table {name!r} already exists with different content; "
                        "pass overwrite=True to replace it"
                    )
            if not isinstance(holder, zarr.Group):
                holder = parent.create_group(name, overwrite=True)
            version = f"v-{uuid.uuid4().hex[:12]}"
            grp = holder.create_group(version)
            for col in table.columns:
                values = table[col].to_numpy()
                text = values.dtype.kind in "OUT"
                if text:
                    values = np.asarray(values.astype(str), dtype=str)
                arr = grp.create_array(
                    str(col),
                    shape=values.shape,
                    dtype=str if text else values.dtype,
                    dimension_names=("row",),
                    chunks=values.shape if values.size else (1,),
                )
                if values.size:
                    arr[...] = values
            grp.attrs.update({"columns": [str(c) for c in table.columns]})
            holder.attrs.update({"current": version})
            for old, _ in child_groups(holder):
                if old != version:
                    holder.__delitem__(old)
        return "replaced" if current is not None else "created"

    def table(self, name: str) -> pd.DataFrame:
        """A table stored with :meth:`write_table`."""
        found = self._table_version(name)
        if found is None:
            raise NotFoundError(f"no table {name!r} in store {self.location!r}")
        holder, current = found
        try:
            return _read_table(holder[current])  # type: ignore[arg-type]
        except KeyError:
            raise CorruptStoreError(
                f"{self.location}: table {name!r} points to missing version {current!r}"
            ) from None

    def _table_version(self, name: str) -> tuple[zarr.Group, str] | None:
        """The group of table ``name`` and the name of its current version, if it has one."""
        parent = self._root.get(TABLES)
        holder = parent.get(name) if isinstance(parent, zarr.Group) else None
        current: Any = holder.attrs.get("current") if isinstance(holder, zarr.Group) else None
        if current is None:
            return None
        assert isinstance(holder, zarr.Group)
        return holder, str(current)

    def _phase1_arrays(
        self, names: Sequence[str], fields: tuple[str, ...]
    ) -> dict[str, dict[str, np.ndarray]]:
        """``fields`` of each run's Phase 1 frame, read concurrently (not cached)."""
        from ndt_store._entries import read_phase1_arrays

        return read_phase1_arrays(self, list(names), fields)

    def _table_arrays(self, name: str, columns: Sequence[str]) -> dict[str, np.ndarray] | None:
        """``columns`` of a stored table as numpy arrays (no pandas); ``None`` if any is absent."""
        found = self._table_version(name)
        if found is None:
            return None
        holder, current = found
        group = holder.get(current)
        if not isinstance(group, zarr.Group) or not set(columns) <= set(
            group.attrs.get("columns", [])  # type: ignore[arg-type]
        ):
            return None
        return {c: np.asarray(group[c][...]) for c in columns}  # type: ignore[index]

    def tables(self) -> list[str]:
        """Names of stored tables."""
        parent = self._root.get(TABLES)
        if not isinstance(parent, zarr.Group):
            return []
        return sorted(n for n, g in child_groups(parent) if g.attrs.get("current"))


def _snapshot_frame_name(entry: Mapping[str, Any]) -> str:
    """Name of the snapshot frame group of an experiment entry."""
    return str(entry.get("snapshot_frame", SNAPSHOTS))


def _checked_steps(steps: Sequence[int]) -> list[int]:
    """``steps`` of :meth:`Store.write_snapshots` as ints; refused if empty or repeated."""
    if isinstance(steps, (str, bytes)) or np.ndim(steps) != 1:
        raise InputError(f"steps must be a sequence of training steps; got {steps!r}")
    out = [int(s) for s in steps]
    if not out:
        raise InputError("steps is empty: write_snapshots needs at least one step")
    repeated = sorted({s for s in out if out.count(s) > 1})
    if repeated:
        raise InputError(f"steps must be unique; {repeated} given more than once", field="steps")
    return out


def _checked_infos(
    infos: Sequence[Mapping[str, Any]] | None, k: int
) -> list[Mapping[str, Any] | None]:
    """Per-step ``infos`` of :meth:`Store.write_snapshots` (``None`` each when not given)."""
    if infos is None:
        return [None] * k
    if isinstance(infos, Mapping) or len(infos) != k:
        got = "a mapping" if isinstance(infos, Mapping) else f"{len(infos)} entries"
        raise InputError(f"infos must hold one mapping per step ({k}); got {got}", field="infos")
    for i, info in enumerate(infos):
        if info is not None and not isinstance(info, Mapping):
            raise InputError(
                f"infos[{i}] must be a mapping of scalars; got {type(info).__name__}",
                field="infos",
            )
    return list(infos)


def _live_groups(entry: Mapping[str, Any], now: float) -> list[dict[str, Any]]:
    """The groups a committed entry reads, as retired records stamped ``now``."""
    names = [entry.get("phase1"), _snapshot_frame_name(entry)]
    return [{"group": str(g), "at": now} for g in names if g]


def _carry(old: Mapping[str, Any]) -> dict[str, Any]:
    """Layout keys a replacement keeps from the entry it replaces."""
    return {k: old[k] for k in ("snapshot_frame",) if k in old}


def _new_layout(kept: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Layout keys of a new experiment whose group still holds ``kept`` retired groups."""
    out: dict[str, Any] = {"retired": list(kept)} if kept else {}
    if any(r.get("group") == SNAPSHOTS for r in kept):
        out["snapshot_frame"] = f"{SNAPSHOTS}-{uuid.uuid4().hex[:12]}"
    return out


def _collect_due(grp: zarr.Group, retired: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Delete the retired groups of ``grp`` past the grace period; return the others.

    Called by a writer holding the experiment's lock, before its commit: a group
    is deleted only once no committed entry written in the last
    :data:`GRACE_SECONDS` points to it.
    """
    now = time.time()
    keep = [r for r in retired if now - float(r.get("at", 0)) <= GRACE_SECONDS]
    for r in retired:
        name = str(r.get("group", ""))
        if r not in keep and name and name in grp:
            grp.__delitem__(name)
    return keep


def _read_table(group: zarr.Group) -> pd.DataFrame:
    import pandas as pd

    cols: Any = group.attrs.get("columns", [])
    data = {}
    for c in cols:
        values = np.asarray(group[c][...])  # type: ignore[index]
        if values.dtype.kind == "T" or values.dtype.kind == "U":
            values = values.astype(object)
        data[c] = values
    return pd.DataFrame(data, columns=cols)


def _table_equal(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    if list(a.columns) != [str(c) for c in b.columns] or len(a) != len(b):
        return False
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind in "OUT" or y.dtype.kind in "OUT":
            if list(map(str, x)) != list(map(str, y)):
                return False
        elif not np.array_equal(x, y, equal_nan=True):
            return False
    return True


def _create_phase1_frame(grp: zarr.Group, name: str, layers: list[str]) -> Frame:
    return Frame.create(
        grp,
        name,
        static={D.LAYER: (np.asarray(layers, dtype=str), (D.LAYER,))},
        attrs={"metrics": list(D.PHASE1_METRICS)},
    )


def _append_phase1_rows(frame: Frame, ds: xr.Dataset, layers: list[str]) -> int:
    missing = [v for v in (*D.PHASE1_METRICS, D.LOSS) if v not in ds]
    if missing:
        raise InputError(f"Phase 1 rows lack variables {missing}")
    ds = ds.transpose(D.STEP, D.LAYER, ...)
    given = [normalize_name(str(x)) for x in ds[D.LAYER].values]
    if given != [str(x) for x in ds[D.LAYER].values]:
        ds = ds.assign_coords({D.LAYER: given})  # layer names are compared in NFC
    if given != layers:
        try:
            ds = ds.sel({D.LAYER: layers})
        except KeyError:
            raise InputError(
                f"Phase 1 rows have layers {list(ds[D.LAYER].values)}; expected {layers}"
            ) from None
    metrics = np.stack([np.asarray(ds[m].values, dtype=np.float64) for m in D.PHASE1_METRICS], -1)
    n = ds.sizes[D.STEP]

    def scalar(name: str, dtype: Any, fill: Any) -> np.ndarray:
        if name in ds:
            return np.asarray(ds[name].values, dtype=dtype)
        return np.full(n, fill, dtype=dtype)

    cols = {
        D.STEP: np.asarray(ds[D.STEP].values, dtype=np.int64),
        "metrics": metrics,
        D.LOSS: scalar(D.LOSS, np.float64, np.nan),
        D.GRAD_NORM: scalar(D.GRAD_NORM, np.float64, np.nan),
        D.EPOCH: scalar(D.EPOCH, np.int64, -1),
    }
    dims = {
        D.STEP: (D.STEP,),
        "metrics": (D.STEP, D.LAYER, "metric"),
        D.LOSS: (D.STEP,),
        D.GRAD_NORM: (D.STEP,),
        D.EPOCH: (D.STEP,),
    }
    chunks = {k: (512, *v.shape[1:]) for k, v in cols.items()}
    return frame.append(cols, dims=dims, chunks=chunks)


def _phase1_dataset(
    arrays: dict[str, np.ndarray], metadata: dict[str, Any], name: str
) -> xr.Dataset:
    import xarray as xr

    steps = arrays[D.STEP]
    data_vars: dict[str, Any] = {
        m: ((D.STEP, D.LAYER), arrays["metrics"][:, :, i]) for i, m in enumerate(D.PHASE1_METRICS)
    }
    data_vars[D.LOSS] = (D.STEP, arrays[D.LOSS])
    data_vars[D.GRAD_NORM] = (D.STEP, arrays[D.GRAD_NORM])
    data_vars[D.EPOCH] = (D.STEP, arrays[D.EPOCH])
    attrs = {k: v for k, v in metadata.items() if not isinstance(v, dict)}
    attrs[D.EXPERIMENT] = name
    if isinstance(metadata.get(D.ARCHITECTURE_PARAMS), dict):
        attrs[D.ARCHITECTURE_PARAMS] = json.dumps(metadata[D.ARCHITECTURE_PARAMS])
    return xr.Dataset(
        data_vars,
        coords={
            D.STEP: steps,
            D.LAYER: arrays[D.LAYER].astype(str),
            D.INDEX: (D.STEP, np.arange(steps.size)),
        },
        attrs=attrs,
    )


def _record_dict(arrays: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    metrics = arrays["metrics"][i]
    layer_metrics = {
        str(layer): {m: _py(metrics[j, k]) for k, m in enumerate(D.PHASE1_METRICS)}
        for j, layer in enumerate(arrays[D.LAYER])
    }
    return {
        D.STEP: int(arrays[D.STEP][i]),
        D.EPOCH: int(arrays[D.EPOCH][i]),
        D.LOSS: _py(arrays[D.LOSS][i]),
        D.GRAD_NORM: _py(arrays[D.GRAD_NORM][i]),
        "layer_metrics": layer_metrics,
    }


def _py(value: Any) -> Any:
    value = float(value)
    return None if np.isnan(value) else value


def open_store(
    location: str | os.PathLike[str],
    mode: Mode = "a",
    *,
    storage_options: dict[str, Any] | None = None,
) -> Store:
    """Open or create a store.

    Parameters
    ----------
    location
        A local directory (created if needed) or a URL fsspec understands
        (``s3://bucket/prefix``); credentials come from the environment.
    mode
        ``"r"`` read-only; ``"r+"`` read/write, must exist; ``"a"`` read/write,
        created if missing (default); ``"w-"`` create, fail if it exists; ``"w"``
        create, deleting anything there.
    storage_options
        Extra fsspec options for URLs (e.g. ``{"endpoint_url": ...}``).

    Returns
    -------
    Store

    Examples
    --------
    >>> import tempfile, ndt_store
    >>> store = ndt_store.open_store(tempfile.mkdtemp() + "/demo.zarr")
    >>> store.experiments()
    []
    """
    if mode not in ("r", "r+", "a", "w", "w-"):
        raise NdtStoreError(f"mode must be one of 'r', 'r+', 'a', 'w', 'w-' (got {mode!r})")
    check_local_target(location)
    with storage_errors(os.fspath(location)):
        return _open_store(location, mode, storage_options)


def _open_store(
    location: str | os.PathLike[str], mode: Mode, storage_options: dict[str, Any] | None
) -> Store:
    """:func:`open_store` (arguments checked; OS errors converted by the caller)."""
    zstore = make_zarr_store(location, read_only=mode == "r", storage_options=storage_options)
    exists = _root_exists(zstore)
    if mode in ("r", "r+") and not exists:
        raise NotFoundError(f"no ndt_store store at {os.fspath(location)!r}")
    if mode == "w-" and exists:
        raise ExperimentExistsError(f"a store already exists at {os.fspath(location)!r}")
    if mode == "w" and exists:
        _check_is_store(zstore, location)  # "w" deletes: only ever an ndt_store store
    if not exists:
        try:
            check_new_location(location, _root_names(zstore))
        except NdtStoreError:
            if not _root_exists(zstore):  # not another process creating it just now
                raise
            exists = True
    created = False
    if mode == "w" or not exists:
        try:
            # root metadata and its format attribute in one write: never half-created
            root = zarr.open_group(
                zstore,
                mode="w" if mode == "w" else "a",
                zarr_format=3,
                attributes={ROOT_ATTR: {"format": FORMAT_VERSION}},
            )
            root.require_group(EXPERIMENTS)
            created = True
        except ContainsGroupError:  # another process created it at the same moment: open it
            pass
    if not created:
        try:
            root = zarr.open_group(zstore, mode="r" if mode == "r" else "r+", zarr_format=3)
        except (ValueError, TypeError) as exc:
            raise CorruptStoreError(
                f"{os.fspath(location)!r}: unreadable root metadata ({exc})"
            ) from None
        info = root.attrs.get(ROOT_ATTR)
        if info is None and mode != "r" and not list(root.members()):
            # an empty root left by an older writer killed mid-creation: finish it
            root.attrs.update({ROOT_ATTR: {"format": FORMAT_VERSION}})
            info = root.attrs.get(ROOT_ATTR)
        if not isinstance(info, dict) or "format" not in info:
            raise CorruptStoreError(
                f"{os.fspath(location)!r} is a Zarr group but not an ndt_store store "
                f"(no {ROOT_ATTR!r} attribute)"
            )
        if int(info["format"]) > FORMAT_VERSION:
            raise NdtStoreError(
                f"store {os.fspath(location)!r} has format {info['format']}, newer than this "
                f"ndt_store understands ({FORMAT_VERSION}); upgrade ndt-store"
            )
    return Store(location, root, mode)


def _root_names(zstore: Any) -> list[str]:
    """Entries at the root of ``zstore`` (empty when the location does not exist)."""

    async def names() -> list[str]:
        return [n async for n in zstore.list_dir("")]

    try:
        return sync(names())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _check_is_store(zstore: Any, location: str | os.PathLike[str]) -> None:
    """Raise unless the root metadata at ``zstore`` is an ndt_store store's."""
    buf = sync(zstore.get("zarr.json", prototype=default_buffer_prototype()))
    try:
        attrs = json.loads(buf.to_bytes()).get("attributes", {}) if buf is not None else {}
    except (ValueError, AttributeError):
        attrs = {}
    if not isinstance(attrs, dict) or ROOT_ATTR not in attrs:
        raise NdtStoreError(
            f"{os.fspath(location)!r} is a Zarr dataset but not an ndt_store store; "
            "mode='w' would delete it: nothing was written"
        )


def _root_exists(zstore: Any) -> bool:
    async def check() -> bool:
        return bool(await zstore.exists("zarr.json"))

    try:
        return sync(check())
    except FileNotFoundError:
        return False


__all__ = ["ConflictError", "Store", "open_store"]
