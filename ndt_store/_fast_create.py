"""Create arrays in a local store with one metadata write.

``zarr.create_array`` on a local store costs about 4 ms an array here: besides the
array's own ``zarr.json`` it re-writes every parent group's metadata (each an
exclusive temporary-file write that fails because the file exists) and parses the
codec chain again. A snapshot batch creates some 30 arrays per experiment, so this
dominated a store's write time.

:func:`create_local_array` builds the same metadata document zarr would write: zarr
itself produces one template per kind of array (dtype, codecs, fill value, key
encoding, rank) in memory, and each new array only changes its shape, chunk shape
and dimension names. The document is parsed back by zarr (so it is validated) and
written once, to a temporary file renamed into place, as zarr's local store writes
it. Anything the fast path does not cover returns ``None`` and the caller uses zarr.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import shutil
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

_KINDS = frozenset("biuf")
"""dtype kinds whose metadata only the shape, chunks and names tell apart."""
_SPEC_KEYS = frozenset(
    {"shape", "dtype", "chunks", "dimension_names", "compressors", "fill_value",
     "chunk_key_encoding"}
)  # fmt: skip
_templates: dict[tuple[Any, ...], dict[str, Any]] = {}
_lock = threading.Lock()


def local_dir(store_path: Any) -> str | None:
    """The directory of a zarr ``StorePath`` whose store is a local one, else ``None``."""
    from zarr.storage import LocalStore

    store, path = store_path.store, store_path.path
    if not isinstance(store, LocalStore):
        return None
    return os.path.join(str(store.root), path) if path else str(store.root)


def _kind_key(spec: Mapping[str, Any]) -> tuple[Any, ...] | None:
    if not set(spec) <= _SPEC_KEYS or "shape" not in spec or "chunks" not in spec:
        return None
    dtype = np.dtype(spec["dtype"])
    if dtype.kind not in _KINDS:
        return None
    return (
        dtype.str,
        len(tuple(spec["shape"])),
        repr(spec.get("compressors", "auto")),
        repr(spec.get("fill_value")),
        json.dumps(spec.get("chunk_key_encoding"), sort_keys=True, default=repr),
        spec.get("dimension_names") is None,
    )


async def _template(key: tuple[Any, ...], spec: Mapping[str, Any]) -> dict[str, Any]:
    """zarr's metadata document for an array like ``spec`` (made once per kind)."""
    with _lock:
        doc = _templates.get(key)
    if doc is None:
        from zarr.api.asynchronous import create_array
        from zarr.core.buffer import default_buffer_prototype
        from zarr.storage import MemoryStore

        arr = await create_array(MemoryStore(), name="template", **spec)
        raw = arr.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"]
        doc = json.loads(raw.to_bytes())
        with _lock:
            _templates[key] = doc
    return doc


def _publish(final: str, text: bytes, *, replace: bool) -> None:
    """Write ``text`` to a temporary file beside ``final``, then give it that name.

    ``replace``: over whatever is there (zarr's plain write); otherwise only where
    nothing is (zarr's exclusive write: of two writers at once, both succeed and the
    first document stays). A killed writer leaves at worst the ``*.partial`` file.
    """
    tmp = f"{final}.{os.urandom(8).hex()}.partial"
    try:
        with open(tmp, "wb") as fh:
            fh.write(text)
        if replace:
            os.replace(tmp, final)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write_document(folder: str, text: bytes) -> None:
    """Replace whatever is at ``folder`` by an array whose metadata is ``text``."""
    if os.path.lexists(folder):  # ``overwrite``: an array left by an interrupted append
        if os.path.isdir(folder) and not os.path.islink(folder):
            shutil.rmtree(folder)
        else:
            os.unlink(folder)
    os.makedirs(folder)
    _publish(os.path.join(folder, "zarr.json"), text, replace=True)


def _group_document() -> bytes:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    meta = GroupMetadata(zarr_format=3)
    return bytes(meta.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes())


def _ensure_groups(folder: str, names: list[str]) -> None:
    """Write an empty group's metadata at each of ``folder/names[0]/names[1]/...`` lacking one.

    Like zarr's own parent writes, an existing ``zarr.json`` is left as it is, and
    two writers creating the same group at once both succeed.
    """
    path = folder
    text: bytes | None = None
    for part in names:
        path = os.path.join(path, part)
        final = os.path.join(path, "zarr.json")
        if os.path.isfile(final):
            continue
        os.makedirs(path, exist_ok=True)
        text = text if text is not None else _group_document()
        _publish(final, text, replace=False)


async def create_local_array(
    base: Any, name: str, spec: Mapping[str, Any], config: Any = None
) -> Any | None:
    """Create array ``name`` under the group at ``base`` (a store path), overwriting.

    Parameters
    ----------
    base
        A zarr ``StorePath`` of an existing group in a local store.
    name
        The new array's name under ``base``; ``a/b`` also writes group ``a`` when
        it has no metadata yet, as zarr does.
    spec
        Keyword arguments of ``zarr.create_array``: ``shape``, ``dtype``, ``chunks``
        and optionally ``dimension_names``, ``compressors``, ``fill_value``,
        ``chunk_key_encoding``.
    config
        The array's runtime configuration, as for ``zarr.create_array``.

    Returns
    -------
    zarr.AsyncArray or None
        The new array, or ``None`` where the fast path does not apply (not a local
        store, no group at ``base``, another dtype or argument): create it with zarr.
    """
    from zarr.core.array import AsyncArray
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.metadata.v3 import ArrayV3Metadata

    folder = None if base.store.read_only else local_dir(base)
    key = _kind_key(spec)
    parts = name.split("/")
    if folder is None or key is None or any(p in ("", ".", "..") for p in parts):
        return None
    if not os.path.isfile(os.path.join(folder, "zarr.json")):
        return None  # the group the array goes under must exist
    if len(parts) > 1:  # intermediate groups, as zarr's create_array writes them
        await asyncio.to_thread(_ensure_groups, folder, parts[:-1])
    doc = copy.deepcopy(await _template(key, spec))
    doc["shape"] = [int(n) for n in spec["shape"]]
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [int(c) for c in spec["chunks"]]
    if spec.get("dimension_names") is not None:
        doc["dimension_names"] = [str(d) for d in spec["dimension_names"]]
    meta = ArrayV3Metadata.from_dict(doc)
    text = meta.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
    await asyncio.to_thread(_write_document, os.path.join(folder, name), text)
    if config is None:
        return AsyncArray(metadata=meta, store_path=base / name)
    return AsyncArray(metadata=meta, store_path=base / name, config=config)
