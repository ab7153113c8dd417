"""The store's metadata documents (root, experiment entries, frames), parsed without Zarr.

The root group's ``zarr.json`` names the store format under :data:`ROOT_ATTR`.
Each experiment group's ``zarr.json`` carries an entry under the ``ndt_experiment``
attribute (``committed``, ``revision``, ``phase1``, ``content_hash``, ``metadata``);
an experiment is visible only once ``committed`` is true. A frame group names its
committed row count under :data:`FRAME_ATTR`. :mod:`ndt_store._entries` reads
these documents through Zarr, :mod:`ndt_store._local_read` straight from disk;
both parse them here.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import numpy as np

from ndt_store import _dims as D
from ndt_store.errors import CorruptStoreError

ROOT_ATTR = "ndt_store"
FORMAT_VERSION = 1
EXP_ATTR = "ndt_experiment"
EXPERIMENTS = "experiments"
FRAME_ATTR = "ndt_frame"
TABLES = "tables"

Entry = dict[str, Any]


class MetadataSource(Protocol):
    """Anything that serves the run metadata of its experiments."""

    def metadata(self, experiment: str) -> dict[str, Any]:
        """Run metadata of one experiment."""
        ...


def parse_entry(location: str, name: str, raw: bytes) -> Entry | None:
    """The committed entry in one experiment group's ``zarr.json`` bytes, else ``None``.

    Raises
    ------
    CorruptStoreError
        If ``raw`` is not valid JSON.

    Examples
    --------
    >>> parse_entry("s.zarr", "a", b'{"attributes": {"ndt_experiment": {"committed": true}}}')
    {'committed': True}
    >>> parse_entry("s.zarr", "a", b'{"attributes": {}}') is None
    True
    """
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise CorruptStoreError(
            f"{location}: metadata of experiment {name!r} is not valid JSON ({exc})"
        ) from None
    entry = meta.get("attributes", {}).get(EXP_ATTR) if isinstance(meta, dict) else None
    return entry if isinstance(entry, dict) and entry.get("committed") else None


def metadata_columns(store: MetadataSource, names: list[str]) -> dict[str, np.ndarray]:
    """Each metadata field of ``names`` as one array, in the order of ``names``.

    A field is a float array where every value is a number (NaN where absent),
    else strings (``""`` where absent); fields no experiment has are left out.
    """
    coords: dict[str, np.ndarray] = {}
    metas = [store.metadata(n) for n in names]
    for field in D.METADATA_FIELDS:
        values = [m.get(field) for m in metas]
        if all(v is None for v in values):
            continue
        if all(
            (isinstance(v, (int, float)) and not isinstance(v, bool)) or v is None for v in values
        ):
            coords[field] = np.asarray([np.nan if v is None else v for v in values])
        else:
            coords[field] = np.asarray(["" if v is None else str(v) for v in values])
    return coords


def summary_row(experiment: str, entry: Entry, steps: np.ndarray, n_layers: int) -> dict[str, Any]:
    """What ``ndt-store ls`` shows of one experiment, from its entry and Phase 1 steps.

    Returns
    -------
    dict
        ``experiment``, ``arch`` and ``dataset`` (from the metadata), ``records``,
        ``first_step`` and ``last_step`` (``None`` without records), ``layers`` and
        ``snapshots`` (counts: distinct snapshot steps listed in the entry).

    Examples
    --------
    >>> entry = {"metadata": {"arch_name": "mlp"}, "snapshots": [{"step": 5}, {"step": 5}]}
    >>> summary_row("e", entry, np.array([0, 5, 10]), 2)["snapshots"]
    1
    """
    meta = entry.get("metadata", {})
    return {
        "experiment": experiment,
        "arch": str(meta.get("arch_name", "")),
        "dataset": str(meta.get("dataset", "")),
        "records": int(steps.size),
        "first_step": int(steps[0]) if steps.size else None,
        "last_step": int(steps[-1]) if steps.size else None,
        "layers": int(n_layers),
        "snapshots": len({s["step"] for s in entry.get("snapshots", [])}),
    }
