"""A read-only view of a local store's Phase 1 frames and tables that never imports Zarr.

``ndt-store jumps`` reads a few small arrays of every run and computes in memory;
importing Zarr (about a fifth of a second) and opening each array through it costs
more than the reading itself. :class:`LocalReader` reads the same committed state
straight from the files: the root, experiment and frame ``zarr.json`` documents
(:mod:`ndt_store._entry_format`), the arrays' documents (:mod:`ndt_store._array_spec`)
and their chunks (:mod:`ndt_store._chunk_codecs`), in the order a Zarr reader does
(an entry, then its frame's committed row count, then the chunks), so it sees what
:class:`ndt_store.store.Store` would.

It reads only the healthy, plain case. A remote location, a layout it does not
know, or anything missing or damaged raises :class:`LayoutUnsupported`, and the
caller then opens the store through :func:`ndt_store.open_store`, which reads every
layout and reports damage in its own words. Reading has no side effects, so
starting again is always safe.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from ndt_store import _dims as D
from ndt_store._array_spec import ArraySpec, simple_group_attributes, zstd_config
from ndt_store._chunk_codecs import decode_chunk, zstd_decompress
from ndt_store._entry_format import (
    EXPERIMENTS,
    FORMAT_VERSION,
    FRAME_ATTR,
    ROOT_ATTR,
    TABLES,
    Entry,
    parse_entry,
    summary_row,
)


class LayoutUnsupported(Exception):
    """The light reader met something it leaves to Zarr; open the store with ``open_store``."""


class LocalReader:
    """Committed experiments, Phase 1 frames and tables of a local store, read without Zarr.

    Create one with :meth:`open`. It offers the part of :class:`~ndt_store.store.Store`
    the jump table and ``ls`` read: :meth:`experiments`, :meth:`metadata`,
    :meth:`entries`, :meth:`summary`, ``_phase1_arrays`` and ``_table_arrays``.

    Examples
    --------
    >>> import tempfile, ndt_store
    >>> path = tempfile.mkdtemp() + "/s.zarr"
    >>> ndt_store.open_store(path).experiments()
    []
    >>> LocalReader.open(path).experiments()
    []
    """

    read_only = True

    def __init__(self, location: str, root: Path, entries: dict[str, Entry]) -> None:
        self.location = location
        self._root = root
        self._entries = entries

    @classmethod
    def open(cls, location: str | os.PathLike[str]) -> LocalReader:
        """Read the store's root and committed entries.

        Raises
        ------
        LayoutUnsupported
            For a URL, a missing or foreign root, or a newer store format.
        """
        text = os.fspath(location)
        if "://" in text and not text.startswith("file://"):
            raise LayoutUnsupported(f"{text}: not a local path")
        root = Path(text.removeprefix("file://")).expanduser().resolve()
        attrs = simple_group_attributes(_document(root / "zarr.json"))
        info = None if attrs is None else attrs.get(ROOT_ATTR)
        if not isinstance(info, dict) or type(info.get("format")) is not int:
            raise LayoutUnsupported(f"{text}: no plain ndt_store root")
        if info["format"] > FORMAT_VERSION:
            raise LayoutUnsupported(f"{text}: store format {info['format']}")
        return cls(text, root, _committed_entries(text, root / EXPERIMENTS))

    # ------------------------------------------------------------ experiments
    def entries(self) -> Mapping[str, Mapping[str, Any]]:
        """Committed experiments' entries by name, sorted by name (read-only view)."""
        return MappingProxyType(self._entries)

    def experiments(self) -> list[str]:
        """Names of the committed experiments, sorted."""
        return list(self._entries)

    def metadata(self, experiment: str) -> dict[str, Any]:
        """Run metadata of ``experiment``.

        Raises
        ------
        LayoutUnsupported
            For a name that is not exactly a committed experiment's: ``Store``
            normalises the name and words the error.
        """
        entry = self._entries.get(experiment)
        if entry is None:
            raise LayoutUnsupported(f"{self.location}: no experiment {experiment!r} as given")
        return dict(entry.get("metadata", {}))

    def summary(self, experiment: str) -> dict[str, Any]:
        """What ``ndt-store ls`` shows of one experiment (as :meth:`Store.summary`)."""
        entry = self._entries.get(experiment)
        if entry is None:
            raise LayoutUnsupported(f"{self.location}: no experiment {experiment!r} as given")
        arrays = self._phase1_arrays([experiment], (D.STEP, D.LAYER))[experiment]
        return summary_row(experiment, entry, arrays[D.STEP], arrays[D.LAYER].size)

    # ------------------------------------------------------------------ arrays
    def _phase1_arrays(
        self, names: Sequence[str], fields: tuple[str, ...]
    ) -> dict[str, dict[str, np.ndarray]]:
        """``fields`` of each run's Phase 1 frame, along-row ones cut to the committed rows."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for name in names:
            entry = self._entries.get(name)
            if entry is None or not isinstance(entry.get("phase1"), str):
                raise LayoutUnsupported(f"{self.location}: no Phase 1 frame for {name!r}")
            frame = self._root / EXPERIMENTS / name / entry["phase1"]
            attrs = simple_group_attributes(_document(frame / "zarr.json"))
            spec = None if attrs is None else attrs.get(FRAME_ATTR)
            rows = spec.get("rows") if isinstance(spec, dict) else None
            if type(rows) is not int or rows < 0:
                raise LayoutUnsupported(f"{frame}: no committed row count")
            out[name] = {f: self._frame_array(frame, f, rows) for f in fields}
        return out

    def _frame_array(self, frame: Path, field: str, rows: int) -> np.ndarray:
        if field == D.LAYER:  # the one static column: read whole
            return _read_array(frame / field, None)
        if rows == 0:  # what the Zarr path gives for an empty frame
            return np.zeros((0,), dtype=np.int64 if field == D.STEP else float)
        return _read_array(frame / field, rows)

    def _table_arrays(self, name: str, columns: Sequence[str]) -> dict[str, np.ndarray] | None:
        """``columns`` of a stored table; ``None`` if it or any column is absent."""
        holder = self._root / TABLES / name
        if not (holder / "zarr.json").exists():
            return None
        attrs = simple_group_attributes(_document(holder / "zarr.json"))
        if attrs is None:
            raise LayoutUnsupported(f"{holder}: not a plain group")
        current = attrs.get("current")
        if current is None:
            return None
        group = holder / str(current)
        if not (group / "zarr.json").exists():
            return None
        version = simple_group_attributes(_document(group / "zarr.json"))
        if version is None:
            raise LayoutUnsupported(f"{group}: not a plain group")
        if not set(columns) <= set(version.get("columns", [])):
            return None
        # tables are written through Zarr, which leaves out chunks of only the fill value
        return {c: _read_array(group / c, None, missing="fill") for c in columns}


def _document(path: Path) -> Any:
    """The parsed JSON document at ``path``."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise LayoutUnsupported(f"{path}: {exc}") from None


def _committed_entries(location: str, folder: Path) -> dict[str, Entry]:
    """Every committed experiment's entry under ``folder``, sorted by name."""
    try:
        names = sorted(n for n in os.listdir(folder) if n != "zarr.json")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise LayoutUnsupported(f"{folder}: {exc}") from None
    out: dict[str, Entry] = {}
    for name in names:
        try:
            raw = (folder / name / "zarr.json").read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            continue  # not an experiment group (yet)
        except OSError as exc:
            raise LayoutUnsupported(f"{folder / name}: {exc}") from None
        entry = parse_entry(location, name, raw)
        if entry is not None:
            out[name] = entry
    return out


def _read_array(
    path: Path, rows: int | None, *, missing: Literal["refuse", "fill"] = "refuse"
) -> np.ndarray:
    """The array at ``path``: its first ``rows`` rows, or all of it (``rows=None``).

    A missing chunk is damage in a frame (every committed chunk is written, and
    the store reports it: ``missing="refuse"``) and the fill value elsewhere
    (``missing="fill"``), as Zarr reads it.
    """
    spec, zstd = _spec(path)
    if rows is not None and spec.shape[0] < rows:
        raise LayoutUnsupported(f"{path}: fewer rows than committed")
    shape = spec.shape if rows is None else (rows, *spec.shape[1:])
    out = np.empty(shape, dtype=spec.dtype)
    grid = [range(math.ceil(n / k)) for n, k in zip(shape, spec.chunks, strict=True)]
    for coord in itertools.product(*grid):
        where = tuple(
            slice(c * k, min((c + 1) * k, n))
            for c, k, n in zip(coord, spec.chunks, shape, strict=True)
        )
        try:
            data = (path / spec.chunk_key(coord)).read_bytes()
        except FileNotFoundError:
            if missing == "refuse":
                raise LayoutUnsupported(f"{path}: chunk {coord} is missing") from None
            out[where] = spec.fill_value
            continue
        except OSError as exc:
            raise LayoutUnsupported(f"{path}: chunk {coord}: {exc}") from None
        try:
            if zstd is not None:
                data = zstd_decompress(data, *zstd)
            chunk = decode_chunk(spec, data)
        except Exception as exc:  # short or undecodable: Zarr's path words it
            raise LayoutUnsupported(f"{path}: chunk {coord}: {exc}") from None
        out[where] = chunk[tuple(slice(0, s.stop - s.start) for s in where)]
    return out


def _spec(path: Path) -> tuple[ArraySpec, tuple[int, bool] | None]:
    """The array's spec, and the ``zstd`` configuration of a numeric ``bytes``-then-``zstd``
    array (the tables' numeric columns: Zarr's default compressor), else ``None``."""
    doc = _document(path / "zarr.json")
    spec = ArraySpec.from_document(str(path), doc)
    zstd = None
    codecs = doc.get("codecs") if isinstance(doc, dict) else None
    if spec is None and isinstance(codecs, list) and len(codecs) == 2:
        try:
            zstd = zstd_config(codecs[1])
        except (ValueError, TypeError, AttributeError):
            zstd = None
        if zstd is not None and doc.get("data_type") != "string":
            spec = ArraySpec.from_document(str(path), {**doc, "codecs": codecs[:1]})
    if spec is None or spec.codec == "zarr" or not spec.shape:
        raise LayoutUnsupported(f"{path}: a layout Zarr reads")
    return spec, zstd


__all__ = ["LayoutUnsupported", "LocalReader"]
