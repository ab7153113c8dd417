"""Experiment entries: which experiments a store holds, read from their group metadata.

Each experiment group's ``zarr.json`` carries an entry under the ``ndt_experiment``
attribute (``committed``, ``revision``, ``phase1``, ``content_hash``, ``metadata``);
an experiment is visible only once ``committed`` is true. This module reads those
entries (one or all, concurrently) without opening any array, and names what the
cross-experiment catalog needs from a store (:class:`EntrySource`), so the catalog
and :class:`ndt_store.store.Store` both build on this module and never on each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ndt_store import _dims as D
from ndt_store._entry_format import (
    EXP_ATTR,
    EXPERIMENTS,
    Entry,
    parse_entry,
)
from ndt_store._frame import FRAME_ATTR, gather_all, read_frame_arrays
from ndt_store.errors import CorruptStoreError


class EntrySource(Protocol):
    """What the catalog reads of a store: its location, root group and entries."""

    @property
    def location(self) -> str:
        """The store's location as the user gave it (path or URL)."""
        ...

    @property
    def read_only(self) -> bool:
        """Whether the store was opened read-only."""
        ...

    @property
    def zarr_group(self) -> zarr.Group:
        """The store's root group."""
        ...

    def entries(self) -> Mapping[str, Mapping[str, Any]]:
        """Committed experiments' entries by name, sorted by name."""
        ...

    def experiments(self) -> list[str]:
        """Committed experiments' names, sorted."""
        ...

    def metadata(self, experiment: str) -> dict[str, Any]:
        """Run metadata of one experiment."""
        ...


def experiments_prefix(root: zarr.Group) -> str:
    """The key prefix of the experiment groups under ``root``."""
    return f"{root.path}/{EXPERIMENTS}" if root.path else EXPERIMENTS


def read_entry(root: zarr.Group, location: str, experiment: str) -> Entry | None:
    """Read one experiment's committed entry (``None`` if absent or uncommitted)."""
    zstore = root.store
    key = f"{experiments_prefix(root)}/{experiment}/zarr.json"

    async def get() -> Any:
        return await zstore.get(key, prototype=default_buffer_prototype())

    buf = sync(get())
    return None if buf is None else parse_entry(location, experiment, buf.to_bytes())


def list_entries(root: zarr.Group, location: str) -> dict[str, Entry]:
    """Read every committed experiment's entry concurrently, sorted by name."""
    zstore = root.store
    prefix = experiments_prefix(root)

    async def gather() -> dict[str, Entry]:
        names = [n async for n in zstore.list_dir(prefix)]
        names = [n for n in names if n != "zarr.json"]
        proto = default_buffer_prototype()
        bufs = await gather_all(
            *(zstore.get(f"{prefix}/{n}/zarr.json", prototype=proto) for n in names)
        )
        out: dict[str, Entry] = {}
        for name, buf in zip(names, bufs, strict=True):
            entry = None if buf is None else parse_entry(location, name, buf.to_bytes())
            if entry is not None:
                out[name] = entry
        return out

    return dict(sorted(sync(gather()).items()))


__all__ = [
    "EXPERIMENTS",
    "EXP_ATTR",
    "Entry",
    "EntrySource",
    "experiments_prefix",
    "list_entries",
    "parse_entry",
    "read_entry",
    "read_phase1_arrays",
]


def read_phase1_arrays(
    store: EntrySource, names: list[str], fields: tuple[str, ...]
) -> dict[str, dict[str, np.ndarray]]:
    """Read ``fields`` of many experiments' Phase 1 frames concurrently (not cached)."""
    import asyncio

    entries = store.entries()
    base = store.zarr_group.store_path

    async def one(name: str) -> dict[str, np.ndarray]:
        frame = base / f"{EXPERIMENTS}/{name}/{entries[name]['phase1']}"
        buf = await frame.store.get(f"{frame.path}/zarr.json", default_buffer_prototype())
        if buf is None:
            raise CorruptStoreError(f"{store.location}: Phase 1 group of {name!r} is missing")
        rows = int(json.loads(buf.to_bytes())["attributes"][FRAME_ATTR]["rows"])
        if rows == 0:
            empty = {f: np.zeros((0,), dtype=np.int64 if f == D.STEP else float) for f in fields}
            layers = await read_frame_arrays(frame, [D.LAYER], 0, {D.LAYER})
            return {**empty, **layers} if D.LAYER in fields else empty
        return await read_frame_arrays(frame, fields, rows, {D.LAYER})

    async def gather() -> list[dict[str, np.ndarray]]:
        sem = asyncio.Semaphore(64)

        async def bounded(name: str) -> dict[str, np.ndarray]:
            async with sem:
                return await one(name)

        return await gather_all(*(bounded(n) for n in names))

    return dict(zip(names, sync(gather()), strict=True))
