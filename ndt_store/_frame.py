"""Append-only frames: a Zarr group whose arrays grow together along ``step``.

A *frame* is the unit of commit of the store. Its arrays share a leading
append dimension; the number of committed rows lives in the group's attributes
and is written **last**, in one atomic metadata write. Readers slice every array
to that count, so rows that a killed writer left half-written are never seen,
and a writer that resumes first truncates anything past the committed count.

The registry of columns (name, dims) is committed in the same attribute write,
so a column created by an interrupted append is invisible as well. A column
first appended at row ``n > 0`` gets its fill value (NaN for floats) written
into rows ``0..n-1`` in the same append, so every committed row of every column
is stored and a missing chunk always means loss.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
from zarr.codecs import BloscCodec

from ndt_store._chunk_codecs import check_blosc_header as _check_blosc_header
from ndt_store._chunk_codecs import check_raw_size as _check_raw_size
from ndt_store._entry_format import FRAME_ATTR
from ndt_store._fast_create import create_local_array, local_dir
from ndt_store.errors import CorruptStoreError, InputError

COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)
"""Blosc lz4 + byte shuffle: decodes several GB/s a thread (NOTES.md), lossless."""

_TARGET_CHUNK_BYTES = 8 << 20
FLAT_CHUNK_KEYS: Any = {"name": "default", "separator": "."}
"""Chunk keys of new columns stored one row a chunk (snapshot tensors: one step a
chunk): ``c.<row>.0.0`` files side by side in the column's directory. zarr's default
``c/<row>/0/0`` makes a chain of new directories for every row, and creating them
cost more than writing the chunk (0.3 ms a directory here, four per row of an
attention tensor). Other columns, and columns written before, keep zarr's default;
readers take the keys from each array's metadata."""
_WRITE_ALL: Any = {"write_empty_chunks": True}
"""Every written chunk is stored, even all-fill ones, so a missing chunk means loss."""


def choose_compressors(sample: np.ndarray, *, min_ratio: float = 1.2) -> Any:
    """:data:`COMPRESSORS` if ``sample`` compresses by at least ``min_ratio``, else none.

    Dense softmax attention barely compresses (≈1.05× with lz4) while decoding it
    costs CPU on every read; causal attention compresses ≈2×. The choice is made
    once per array from its first row and recorded in the array's metadata.
    """
    raw = np.ascontiguousarray(sample)
    if raw.nbytes < _ALWAYS_COMPRESSED_BELOW:  # not worth a trial compression
        return COMPRESSORS
    worth = _worth_compressing(raw.nbytes, raw.nbytes, _packed_size(raw), min_ratio)
    return COMPRESSORS if worth else None


_ALWAYS_COMPRESSED_BELOW = 4096
"""Rows smaller than this get :data:`COMPRESSORS` without a trial."""


def _packed_size(raw: np.ndarray) -> int:
    """Bytes of ``raw`` compressed as :data:`COMPRESSORS` compresses it."""
    from numcodecs import blosc

    return len(blosc.compress(raw.tobytes(), typesize=raw.dtype.itemsize, cname=b"lz4", clevel=5))


def _worth_compressing(
    row_nbytes: int, sample_nbytes: int, packed: int, min_ratio: float = 1.2
) -> bool:
    """:func:`choose_compressors`' rule for a row whose sample packs into ``packed`` bytes."""
    return row_nbytes < _ALWAYS_COMPRESSED_BELOW or sample_nbytes >= min_ratio * packed


def stored_nbytes(sample: np.ndarray, nbytes: int | None = None, *, adaptive: bool = False) -> int:
    """Bytes a frame row keeps on disk, estimated by compressing ``sample`` as the frame does.

    Parameters
    ----------
    sample
        The row's values, or a leading part of them (e.g. its first MiB).
    nbytes
        The whole row's uncompressed bytes (default: ``sample.nbytes``); the sample's
        compression ratio is applied to it.
    adaptive
        The column's codec is chosen by :func:`choose_compressors` (attention):
        stored raw where it compresses less than 1.2x. Other columns always use
        :data:`COMPRESSORS`.

    Examples
    --------
    >>> stored_nbytes(np.zeros(1 << 16, np.float32)) < 4096  # zeros compress well
    True
    >>> x = np.random.default_rng(0).random(1 << 16, dtype=np.float32)
    >>> stored_nbytes(x, adaptive=True) == x.nbytes  # random mantissas: kept raw
    True
    """
    raw = np.ascontiguousarray(sample).reshape(-1)
    total = raw.nbytes if nbytes is None else int(nbytes)
    if raw.nbytes == 0 or total == 0:
        return 0
    packed = _packed_size(raw)
    if adaptive and not _worth_compressing(total, raw.nbytes, packed):
        return total
    return max(1, round(total * packed / raw.nbytes))


def child_groups(group: zarr.Group) -> list[tuple[str, zarr.Group]]:
    """``group.groups()`` without Zarr's warning about leftovers of interrupted writes.

    A writer killed mid-write can leave ``*.partial`` files or a directory without
    metadata; they are invisible to the store (and cleaned up by the next write),
    so listing them is not worth a warning to the user.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component")
        return list(group.groups())


def default_row_chunk(row_shape: Sequence[int], itemsize: int) -> int:
    """Rows per chunk so that a chunk holds about 8 MiB, at least one row."""
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * itemsize
    return max(1, min(4096, _TARGET_CHUNK_BYTES // max(row_bytes, 1)))


def _fill_value(dtype: np.dtype) -> Any:
    if dtype.kind == "f":
        return np.nan
    if dtype.kind == "b":
        return False
    if dtype.kind in "iu":
        return 0
    return None


async def _fill_rows(arr: Any, start: int, stop: int) -> None:
    """Write the fill value into rows ``[start, stop)`` of ``arr`` (an ``AsyncArray``),
    chunk by chunk.

    Every chunk is stored (the frame's arrays write empty chunks), so rows that
    never had a value read as missing (NaN for floats) and a missing chunk still
    means loss. Memory stays at one chunk's worth of rows.
    """
    step = max(1, int(arr.chunks[0]))
    dtype = np.dtype(arr.dtype)
    block = np.full((min(step, stop - start), *arr.shape[1:]), _fill_value(dtype), dtype)
    lo = start
    while lo < stop:
        hi = min(stop, (lo // step + 1) * step)
        await arr.setitem(slice(lo, hi), block[: hi - lo])
        lo = hi


async def _open_array(base: Any, name: str) -> Any:
    """The listed array ``name`` under ``base`` (a store path) as an ``AsyncArray``.

    Raises
    ------
    CorruptStoreError
        The array is missing or its metadata cannot be read (truncated JSON, bad fields).
    """
    from zarr.core.array import AsyncArray

    try:
        return await AsyncArray.open(base / name)
    except (FileNotFoundError, KeyError):
        raise CorruptStoreError(f"{base}: array {name!r} is listed but missing") from None
    except Exception as exc:
        raise CorruptStoreError(
            f"{base}/{name}: unreadable array metadata ({type(exc).__name__}: {exc})"
        ) from None


async def _open_arrays(base: Any, names: Sequence[str]) -> dict[str, Any]:
    """Open the arrays ``names`` under ``base`` (a store path) concurrently, as ``AsyncArray``."""
    arrays = await gather_all(*(_open_array(base, n) for n in names))
    return dict(zip(names, arrays, strict=True))


async def _new_column(
    base: Any, name: str, spec: Mapping[str, Any], values: np.ndarray, start: int
) -> None:
    """Create column ``name`` under ``base`` (a store path) and write its rows from ``start``.

    ``overwrite`` also removes an array left behind by an interrupted append; the
    ``start`` rows before this append, which never had this column, get explicit
    missing values. On a local store the array's metadata is written directly
    (:func:`~ndt_store._fast_create.create_local_array`), one file instead of zarr's
    re-write of every parent group.
    """
    from zarr.api.asynchronous import create_array

    arr = await create_local_array(base, name, spec, config=_WRITE_ALL)
    if arr is None:
        arr = await create_array(base, name=name, overwrite=True, config=_WRITE_ALL, **spec)
    if start:
        await _fill_rows(arr, 0, start)
    await _write_rows(arr, values, start)


async def _write_rows(arr: Any, values: np.ndarray, start: int) -> None:
    """Write ``values`` as rows ``start, start + 1, ...`` of ``arr`` (an ``AsyncArray``).

    The array is resized to end exactly after them, in one metadata write: that also
    drops rows an interrupted append left past the committed ones. When the rows
    fill whole chunks of a layout the fast read understands (every snapshot tensor:
    one step a chunk), each chunk is encoded here and stored with one store write,
    all concurrently and beside the resize (:func:`_whole_chunk_writes`); otherwise
    zarr writes them after the resize.
    """
    stop = start + values.shape[0]
    resize = arr.resize((stop, *arr.shape[1:])) if arr.shape[0] != stop else None
    writes = _whole_chunk_writes(arr, values, start)
    if writes is None:
        if resize is not None:
            await resize
        await arr.setitem(slice(start, stop), values)
        return
    await gather_all(*([resize] if resize is not None else []), *writes)


_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def _blosc_args(codec: Any) -> tuple[bytes, int, int, int, int] | None:
    """``(cname, clevel, shuffle, blocksize, typesize)`` of a zarr ``BloscCodec``.

    zarr 3.1 holds ``cname`` and ``shuffle`` as enums, zarr 3.4 as strings; ``None``
    for anything not recognised (the caller then lets zarr encode).
    """
    cname = getattr(codec.cname, "value", codec.cname)
    shuffle = _SHUFFLES.get(getattr(codec.shuffle, "value", codec.shuffle))
    typesize = getattr(codec, "typesize", None)
    if not isinstance(cname, str) or shuffle is None or not isinstance(typesize, int):
        return None
    return cname.encode(), int(codec.clevel), shuffle, int(codec.blocksize or 0), typesize


def _whole_chunk_writes(arr: Any, values: np.ndarray, start: int) -> list[Any] | None:
    """Coroutines storing ``values`` as rows from ``start``, or ``None`` (zarr must).

    Only where the rows cover whole chunks along the row axis and the array has the
    layout the fast read takes (:func:`fast_layout_problem`: bytes, little-endian,
    optionally Blosc): each chunk is then encoded exactly as zarr would encode it
    (raw bytes, or one Blosc frame with the array's own Blosc settings) and stored
    in one write, as zarr stores it: on a local store a temporary file renamed into
    place (all of the column's chunks in one worker-thread job,
    :func:`_write_local_chunks`), elsewhere one ``store.set`` per chunk. The commit
    protocol is unchanged. Edge chunks along the other axes are padded with the fill
    value, as zarr stores them. This skips zarr's per-chunk staging copies and, on a
    local store, an event-loop round trip per chunk.
    """
    import asyncio
    import itertools

    from numcodecs import blosc
    from zarr.core.buffer import default_buffer_prototype

    step = int(arr.chunks[0])
    k = values.shape[0]
    if k == 0 or start % step or k % step or fast_layout_problem(arr) is not None:
        return None
    codecs = tuple(arr.metadata.codecs)
    args = _blosc_args(codecs[1]) if len(codecs) == 2 else None
    if len(codecs) == 2 and args is None:
        return None
    dtype = np.dtype(arr.dtype)
    chunk = tuple(int(c) for c in arr.chunks)
    store, path = arr.store_path.store, arr.store_path.path
    proto = default_buffer_prototype()
    ranges = [range(-(-n // c)) for n, c in zip(values.shape, chunk, strict=True)]

    def encode(block: np.ndarray) -> Any:
        if block.shape != chunk:  # an edge chunk is stored whole, padded with the fill value
            full = np.full(chunk, _fill_value(dtype) or 0, dtype=dtype)
            full[tuple(slice(0, n) for n in block.shape)] = block
            block = full
        raw = np.ascontiguousarray(block, dtype=dtype)
        if args is None:
            return raw.reshape(-1).view(np.uint8)
        return blosc.compress(raw, *args)

    def block(coords: tuple[int, ...]) -> tuple[str, np.ndarray]:
        sel = tuple(slice(i * c, (i + 1) * c) for i, c in zip(coords, chunk, strict=True))
        key = arr.metadata.encode_chunk_key((coords[0] + start // step, *coords[1:]))
        return key, values[sel]

    blocks = [block(c) for c in itertools.product(*ranges)]
    root = _local_root(arr)
    if root is not None:  # a local directory: encode and write every chunk in one job
        return [asyncio.to_thread(_write_local_chunks, root, blocks, encode)]

    async def one(key: str, rows: np.ndarray) -> None:
        data = await asyncio.to_thread(encode, rows) if args is not None else encode(rows)
        await store.set(f"{path}/{key}" if path else key, proto.buffer.from_bytes(data))

    return [one(key, rows) for key, rows in blocks]


def _write_local_chunks(root: str, blocks: Sequence[tuple[str, np.ndarray]], encode: Any) -> None:
    """Encode and store chunks of an array kept in the local directory ``root``.

    Each file is written as zarr's local store writes it: a ``*.partial`` temporary
    file renamed over the chunk's name once whole (a killed writer leaves at worst a
    temporary file). One call per column and batch, with plain file descriptors: no
    event-loop round trip and no buffered file object per chunk.
    """
    token = os.urandom(8).hex()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    made: set[str] = set()
    for i, (key, rows) in enumerate(blocks):
        path = os.path.join(root, key)
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        view = memoryview(encode(rows)).cast("B")
        tmp = f"{path}.{token}{i:x}.partial"
        try:
            fd = os.open(tmp, flags, 0o666)
            try:
                done = 0
                while done < len(view):
                    done += os.write(fd, view[done:])
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class Frame:
    """An append-only group of arrays sharing their first dimension.

    Parameters
    ----------
    group
        The Zarr group holding the frame.
    """

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        info = group.attrs.get(FRAME_ATTR)
        if not isinstance(info, dict) or "rows" not in info:
            raise CorruptStoreError(f"{group.store_path}: not a frame (missing {FRAME_ATTR!r})")
        self._info: dict[str, Any] = info

    @classmethod
    def create(
        cls,
        parent: zarr.Group,
        name: str,
        *,
        static: Mapping[str, tuple[np.ndarray, tuple[str, ...]]] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> Frame:
        """Create an empty frame (zero committed rows) with optional static arrays."""
        # the group and its (empty) registry in one write: never a half-created frame
        info: dict[str, Any] = {"rows": 0, "columns": {}, "static": {}}
        group = parent.create_group(
            name, overwrite=True, attributes={FRAME_ATTR: info, **dict(attrs or {})}
        )
        statics: dict[str, list[str]] = {}
        for key, (values, dims) in (static or {}).items():
            values = np.asarray(values)
            arr = group.create_array(
                key,
                shape=values.shape,
                dtype=str if values.dtype.kind in "UTO" else values.dtype,
                chunks=values.shape if values.size else (1,) * values.ndim,
                dimension_names=dims,
                compressors=COMPRESSORS if values.dtype.kind not in "UTO" else "auto",
                fill_value=None if values.dtype.kind in "UTO" else _fill_value(values.dtype),
                config=_WRITE_ALL,
            )
            if values.size:
                arr[...] = values
            statics[key] = list(dims)
        if statics:
            group.attrs.update({FRAME_ATTR: {**info, "static": statics}})
        return cls(group)

    def add_static(self, name: str, values: np.ndarray, dims: tuple[str, ...]) -> None:
        """Write a static array; it becomes visible with the next committed append."""
        values = np.asarray(values)
        if name in self.group:
            self.group.__delitem__(name)
        arr = self.group.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            dimension_names=dims,
            chunks=values.shape if values.size else (1,) * values.ndim,
            compressors=COMPRESSORS if values.dtype.kind not in "UTO" else "auto",
            config=_WRITE_ALL,
        )
        if values.size:
            arr[...] = values
        self._info = {**self._info, "static": {**self.static, name: list(dims)}}

    @property
    def rows(self) -> int:
        """Number of committed rows."""
        return int(self._info["rows"])

    @property
    def columns(self) -> dict[str, list[str]]:
        """Committed along-row columns and their dims."""
        return dict(self._info["columns"])

    @property
    def static(self) -> dict[str, list[str]]:
        """Static (not appended) arrays and their dims."""
        return dict(self._info.get("static", {}))

    def array(self, name: str) -> zarr.Array:
        """The Zarr array of column or static array ``name``."""
        try:
            node = self.group[name]
        except KeyError:
            raise CorruptStoreError(
                f"{self.group.store_path}: array {name!r} is listed but missing"
            ) from None
        except Exception as exc:  # unreadable metadata (truncated JSON, bad fields)
            raise CorruptStoreError(
                f"{self.group.store_path}/{name}: unreadable array metadata "
                f"({type(exc).__name__}: {exc})"
            ) from None
        if not isinstance(node, zarr.Array):
            raise CorruptStoreError(f"{self.group.store_path}/{name} is not an array")
        return node

    def append(
        self,
        columns: Mapping[str, np.ndarray],
        *,
        dims: Mapping[str, Sequence[str]],
        chunks: Mapping[str, Sequence[int]] | None = None,
        extra_attrs: Mapping[str, Any] | None = None,
        compressors: Mapping[str, Any] | None = None,
    ) -> int:
        """Append rows to every column and commit them in one metadata write.

        Parameters
        ----------
        columns
            New rows per column; each array's first axis is the row axis, all of
            the same length. Columns not yet in the frame are created. Existing
            columns missing from ``columns`` get their fill value for these rows.
        dims
            Dimension names for every new column (first one is the row dim).
        chunks
            Optional chunk shapes for new columns.
        extra_attrs
            Attributes committed together with the rows.
        compressors
            Codec choice for new columns (default :data:`COMPRESSORS`; ``None`` for
            a column means uncompressed).

        Returns
        -------
        int
            The committed row count after the append.
        """
        # every chunk is written, even all-fill ones, so a missing chunk always means loss
        with zarr.config.set({"array.write_empty_chunks": True}):
            return self._append(
                columns, dims=dims, chunks=chunks, extra_attrs=extra_attrs,
                compressors=compressors,
            )  # fmt: skip

    def _append(
        self,
        columns: Mapping[str, np.ndarray],
        *,
        dims: Mapping[str, Sequence[str]],
        chunks: Mapping[str, Sequence[int]] | None = None,
        extra_attrs: Mapping[str, Any] | None = None,
        compressors: Mapping[str, Any] | None = None,
    ) -> int:
        """Implementation of :meth:`append` (write_empty_chunks set by the caller).

        Every shape is checked before anything is written (a refused append leaves
        the arrays untouched). Then all columns are written concurrently: a new
        column is created and filled, an existing one resized once and its ``k``
        rows written (chunks concurrently too). Only when every write has finished
        are the rows committed, in one attribute write.
        """
        from zarr.core.sync import sync

        if not columns:
            raise InputError("nothing to append")
        lengths = {name: np.shape(v)[0] if np.ndim(v) else -1 for name, v in columns.items()}
        k = next(iter(lengths.values()))
        if k < 0 or any(n != k for n in lengths.values()):
            raise InputError(f"columns must share their first (row) axis length; got {lengths}")
        n = self.rows
        registry = dict(self._info["columns"])
        rows = {name: np.asarray(values) for name, values in columns.items()}
        existing = sync(_open_arrays(self.group.store_path, list(registry)))
        for name, values in rows.items():
            if name in registry:
                have = tuple(existing[name].shape[1:])
                if have != values.shape[1:]:
                    raise InputError(
                        f"column {name!r} has rows of shape {have}; "
                        f"cannot append rows of shape {values.shape[1:]}"
                    )
            elif len(tuple(dims[name])) != values.ndim:
                raise InputError(
                    f"column {name!r}: dims {tuple(dims[name])} do not match {values.ndim}-d rows"
                )
        jobs = []
        for name, arr in existing.items():  # a column left out gets its fill value
            fill = rows.get(name)
            if fill is None:
                dtype = np.dtype(arr.dtype)
                fill = np.full((k, *arr.shape[1:]), _fill_value(dtype), dtype=dtype)
            jobs.append(_write_rows(arr, fill, n))
        for name, values in rows.items():
            if name in registry:
                continue
            col_dims = tuple(dims[name])
            chunk = (
                tuple(chunks[name])
                if chunks and name in chunks
                else (default_row_chunk(values.shape[1:], values.dtype.itemsize), *values.shape[1:])
            )
            new = {
                "shape": (n + k, *values.shape[1:]),
                "dtype": values.dtype,
                "chunks": tuple(max(1, c) for c in chunk),
                "dimension_names": col_dims,
                "compressors": (
                    compressors[name] if compressors and name in compressors else COMPRESSORS
                ),
                "fill_value": _fill_value(values.dtype),
            }
            if new["chunks"][0] == 1:  # one row a chunk: no chain of directories per row
                new["chunk_key_encoding"] = FLAT_CHUNK_KEYS
            jobs.append(_new_column(self.group.store_path, name, new, values, n))
            registry[name] = list(col_dims)
        sync(gather_all(*jobs))
        info = {**self._info, "rows": n + k, "columns": registry}
        self.group.attrs.update({FRAME_ATTR: info, **dict(extra_attrs or {})})
        self._info = info
        return n + k

    def read(self, name: str) -> np.ndarray:
        """Read the committed rows of column ``name`` (or a whole static array)."""
        return self.read_many([name])[name]

    def read_many(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Read several columns/static arrays concurrently (one round trip of I/O)."""
        return read_arrays(self.group, names, self.rows, set(self.static))

    def dask(self, name: str) -> Any:
        """A dask array over the committed rows of column ``name`` (chunks = stored chunks).

        Every chunk read is checked: an unreadable or missing chunk inside the
        committed rows raises :class:`CorruptStoreError` naming the array.
        """
        import dask.array as da
        from dask.base import tokenize

        arr = self.array(name)
        if arr.shape[0] < self.rows:
            raise CorruptStoreError(
                f"{arr.store_path}: array has {arr.shape[0]} rows but {self.rows} are committed"
            )
        checked = CheckedArray(arr)
        token = tokenize(str(arr.store_path), arr.shape, self.rows, self._info.get("columns"))
        whole = da.from_array(
            checked, chunks=arr.chunks, name=f"ndt-{name}-{token}", meta=checked.meta()
        )
        _remember(whole, checked, 0)
        return take_rows(whole, 0, self.rows)


# ------------------------------------------------------------------ chunk sources
# Dask arrays made by Frame.dask (and row ranges of them, via take_rows) are
# remembered by their dask name, which identifies their content exactly: a
# reduction can then read each stored chunk and reduce it in one task
# (chunk_reduce) instead of going through dask's getter and blockwise layers.
# Any other operation makes a new name, and the reduction takes the generic path.
_SOURCES: OrderedDict[str, tuple[CheckedArray, int]] = OrderedDict()
_SOURCES_MAX = 4096
_SOURCES_LOCK = threading.Lock()


def _remember(x: Any, checked: CheckedArray, first_row: int) -> None:
    with _SOURCES_LOCK:
        _SOURCES[x.name] = (checked, first_row)
        _SOURCES.move_to_end(x.name)
        while len(_SOURCES) > _SOURCES_MAX:
            _SOURCES.popitem(last=False)


def take_rows(x: Any, start: int, stop: int) -> Any:
    """``x[start:stop]`` along the first axis, still known as stored chunks if ``x`` was."""
    out = x[start:stop]
    with _SOURCES_LOCK:
        source = _SOURCES.get(x.name)
    if source is not None and out.name != x.name:
        _remember(out, source[0], source[1] + start)
    return out


def chunk_reduce(x: Any, func: Any, drop_axes: Sequence[int], dtype: npt.DTypeLike) -> Any | None:
    """``func`` applied to every stored chunk of ``x``, read and reduced in one task.

    ``func(block) -> array`` must remove exactly ``drop_axes`` from a numpy block.
    Returns a dask array (the dims of ``x`` without ``drop_axes``), or ``None`` when
    ``x`` is not an untouched row range of a stored column (made by
    :meth:`Frame.dask` / :func:`take_rows`), or a dropped axis spans several chunks:
    the caller then takes its generic path.
    """
    import dask.array as da
    from dask.base import tokenize

    name = getattr(x, "name", None)
    with _SOURCES_LOCK:
        source = _SOURCES.get(name) if name is not None else None
    if source is None:
        return None
    checked, first_row = source
    drop = sorted(set(int(a) % x.ndim for a in drop_axes))
    if any(len(x.chunks[a]) != 1 for a in drop) or 0 in drop:
        return None
    step = checked.array.chunks[0]
    blocks = []  # (stored chunk index along rows, row slice inside it) per block
    offset = first_row
    for size in x.chunks[0]:
        if size and offset // step != (offset + size - 1) // step:
            return None
        blocks.append((offset // step, slice(offset % step, offset % step + size)))
        offset += size
    out_name = f"ndt-reduce-{tokenize(name, func, drop)}"
    kept = [a for a in range(x.ndim) if a not in drop]
    dsk: dict[Any, Any] = {}
    for idx in np.ndindex(*(len(x.chunks[a]) for a in kept)):
        where = dict(zip(kept, idx, strict=True))
        coords = tuple(where.get(a, 0) for a in range(x.ndim))
        chunk, rows = blocks[coords[0]]
        dsk[(out_name, *idx)] = (_reduce_chunk, checked, (chunk, *coords[1:]), rows, func)
    return da.Array(dsk, out_name, chunks=tuple(x.chunks[a] for a in kept), dtype=dtype)


def _reduce_chunk(
    checked: CheckedArray, coords: tuple[int, ...], rows: slice, func: Any
) -> np.ndarray:
    arr = checked.array
    whole_chunk = tuple(
        slice(i * c, min((i + 1) * c, n))
        for i, c, n in zip(coords, arr.chunks, arr.shape, strict=True)
    )
    return func(checked[whole_chunk][rows])  # CheckedArray takes its fast path where it can


class CheckedArray:
    """Chunk-aligned reads of a Zarr array that turn damage into :class:`CorruptStoreError`.

    A selection of exactly one whole chunk of an array stored the way frames store
    their columns (bytes, little-endian, then Blosc) takes a fast path: the chunk's
    bytes are fetched with one store read (a plain file read on a local store) and
    decoded by Blosc straight into the result, bypassing zarr's asynchronous codec
    pipeline. Anything else goes through zarr.

    On a local store, an uncompressed chunk is read straight into the result
    (no intermediate copy), and each whole-chunk read of a large chunk asks the
    operating system to start reading the next few chunks in the background
    (``posix_fadvise(WILLNEED)``, about :data:`READ_AHEAD_BYTES` ahead, in the
    chunk grid's C order, which is the order dask works through a reduction):
    the disk keeps streaming while the threads decode and compute, instead of
    waiting for each chunk in turn.
    """

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim
        self._fast = _fast_layout(array)
        self._root = _local_root(array) if self._fast else None
        chunk_bytes = math.prod(array.chunks) * np.dtype(array.dtype).itemsize if self._fast else 0
        self._ahead = (
            min(16, max(1, READ_AHEAD_BYTES // chunk_bytes))
            if self._root is not None
            and chunk_bytes >= READ_AHEAD_MIN_CHUNK
            and hasattr(os, "posix_fadvise")
            else 0
        )
        self._advised: set[int] = set()
        self._strict = None if self._fast else strict_reader(array)

    def meta(self) -> np.ndarray:
        """An empty array of the right type and dims (dask's ``meta``, without a read)."""
        return np.empty((0,) * self.ndim, dtype=self.dtype)

    def __getitem__(self, selection: Any) -> np.ndarray:
        from zarr.core.sync import sync

        arr = self.array
        if self._fast:
            coords = _whole_chunk(selection, arr.shape, arr.chunks)
            if coords is not None:
                return self._read_chunk(coords)
        strict = self._strict
        try:
            out = np.asarray((strict or arr)[selection])
        except Exception as exc:
            slices = isinstance(selection, tuple) and all(isinstance(s, slice) for s in selection)
            if _is_missing_chunk_error(exc) and slices:
                keys = _chunk_keys(arr, [(s.start or 0, s.stop) for s in selection])
                for key, what in sync(chunk_problems(arr, keys))[:1]:
                    raise CorruptStoreError(f"{arr.store_path}: chunk {key!r} {what}") from None
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise CorruptStoreError(
                f"{arr.store_path}: unreadable chunk ({type(exc).__name__}: {first})"
            ) from None
        if (
            strict is None
            and isinstance(selection, tuple)
            and all(isinstance(s, slice) for s in selection)
        ):
            keys = _chunk_keys(arr, [(s.start or 0, s.stop) for s in selection])
            problems = sync(chunk_problems(arr, keys))
            if problems:
                key, what = problems[0]
                raise CorruptStoreError(f"{arr.store_path}: chunk {key!r} {what}")
        return out

    def _read_chunk(self, coords: tuple[int, ...]) -> np.ndarray:
        """Fetch and decode the whole chunk at ``coords`` (fast path)."""

        arr = self.array
        key = arr.metadata.encode_chunk_key(coords)
        if self._ahead:
            self._read_ahead(coords)
        if self._root is not None and _uncompressed(arr):
            out = _read_raw_chunk(arr, key, os.path.join(self._root, key))
        else:
            out = decode_chunk(arr, key, _fetch(arr, key))
        # an edge chunk is stored whole: keep the part inside the array
        inside = [min(c, n - i * c) for i, n, c in zip(coords, arr.shape, arr.chunks, strict=True)]
        return out if inside == list(arr.chunks) else out[tuple(slice(0, k) for k in inside)]

    def _read_ahead(self, coords: tuple[int, ...]) -> None:
        """Hint the OS to start reading the chunks after ``coords`` (best effort)."""
        arr = self.array
        grid = [-(-n // c) for n, c in zip(arr.shape, arr.chunks, strict=True)]
        flat = int(np.ravel_multi_index(coords, grid))
        total = math.prod(grid)
        for nxt in range(flat + 1, min(flat + 1 + self._ahead, total)):
            if nxt in self._advised:
                continue
            self._advised.add(nxt)
            key = arr.metadata.encode_chunk_key(tuple(int(i) for i in np.unravel_index(nxt, grid)))
            assert self._root is not None
            try:
                fd = os.open(os.path.join(self._root, key), os.O_RDONLY)
            except OSError:
                continue  # absent (not written yet, or damage the read itself reports)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:  # pragma: no cover - filesystems without the hint
                self._ahead = 0
            finally:
                os.close(fd)


READ_AHEAD_BYTES = 32 * 2**20
"""How far ahead :class:`CheckedArray` asks the OS to read whole chunks (local stores)."""
READ_AHEAD_MIN_CHUNK = 2**20
"""Chunks smaller than this get no read-ahead hints (the kernel's own read-ahead suffices)."""


def _local_root(arr: Any) -> str | None:
    """Directory holding ``arr``'s chunk keys when it lives in a local store."""
    return local_dir(arr.store_path)


def _read_raw_chunk(arr: Any, key: str, filename: str) -> np.ndarray:
    """Read an uncompressed chunk file straight into a new array (checked)."""
    out = np.empty(arr.chunks, dtype=arr.dtype)
    try:
        with open(filename, "rb", buffering=0) as fh:
            try:
                _check_raw_size(os.fstat(fh.fileno()).st_size, out.nbytes)
            except ValueError as exc:
                raise CorruptStoreError(
                    f"{arr.store_path}: unreadable chunk {key!r} (ValueError: {exc})"
                ) from None
            view = memoryview(out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
            got = 0
            while got < out.nbytes:
                n = fh.readinto(view[got:])
                if not n:
                    raise CorruptStoreError(
                        f"{arr.store_path}: chunk {key!r} truncated while reading"
                    )
                got += n
    except (FileNotFoundError, NotADirectoryError):
        raise CorruptStoreError(f"{arr.store_path}: chunk {key!r} is missing") from None
    return out


def decode_chunk(arr: Any, key: str, data: bytes | None) -> np.ndarray:
    """Check and decode the stored bytes of one whole chunk of a fast-layout array.

    Raises
    ------
    CorruptStoreError
        Naming the array and chunk, when the chunk is missing, truncated or foreign.
    """
    from numcodecs import blosc

    if data is None:
        raise CorruptStoreError(f"{arr.store_path}: chunk {key!r} is missing")
    out = np.empty(arr.chunks, dtype=arr.dtype)
    try:
        if _uncompressed(arr):
            _check_raw_size(len(data), out.nbytes)
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
        else:
            _check_blosc_header(data, out.nbytes)
            blosc.decompress(data, out)
    except Exception as exc:
        raise CorruptStoreError(
            f"{arr.store_path}: unreadable chunk {key!r} ({type(exc).__name__}: {exc})"
        ) from None
    return out


FAST_READ_FALLBACKS: Counter[str] = Counter()
"""How many arrays were opened without the whole-chunk fast read, by reason."""
_FAST_READ_REPORTED: set[str] = set()
_FAST_READ_LOCK = threading.Lock()
_log = logging.getLogger(__name__)


def fast_read_fallbacks() -> dict[str, int]:
    """Arrays read through zarr's codec pipeline instead of the fast read, by reason.

    Counts every array of this process whose layout was checked and not taken
    (:func:`fast_layout_problem`); each reason is also logged once (``DEBUG`` for
    layouts the store does not write, ``WARNING`` for metadata it cannot interpret).
    """
    with _FAST_READ_LOCK:
        return dict(FAST_READ_FALLBACKS)


def _bytes_endian(codec: Any) -> str | None:
    """The byte order of a bytes codec as a string (``"little"``, ``"big"`` or ``None``).

    zarr 3.1 holds it as an ``Endian`` enum, zarr 3.4 as a plain string.
    """
    endian = getattr(codec, "endian", None)
    value = getattr(endian, "value", endian)
    return value if value is None or isinstance(value, str) else repr(value)


def fast_layout_problem(arr: Any) -> str | None:
    """Why the chunks of ``arr`` cannot be read without zarr's codec pipeline.

    ``None`` when they can: a regular chunk grid, a fixed-size numeric dtype, and
    the codec chain exactly bytes (little-endian, on a little-endian machine),
    optionally followed by Blosc — what the frames write (:data:`COMPRESSORS`, or
    no compressor for data that does not compress, see :func:`choose_compressors`).
    Reasons starting with ``"unrecognised"`` mean zarr metadata this module cannot
    interpret (a newer zarr), not a layout chosen by the writer.
    """
    import sys

    from zarr.codecs import BytesCodec

    try:
        codecs = tuple(arr.metadata.codecs)
        dtype = np.dtype(arr.dtype)
        chunks = arr.chunks
    except Exception as exc:  # zarr v2 metadata, irregular grids, exotic dtypes: use zarr
        return f"no v3 codecs, numpy dtype or regular chunks ({type(exc).__name__})"
    if dtype.kind not in "biufc" or dtype.hasobject:
        return f"dtype {dtype}"
    names = "+".join(type(c).__name__ for c in codecs)
    if not 1 <= len(codecs) <= 2 or not isinstance(codecs[0], BytesCodec):
        return f"codecs {names}"
    if len(codecs) == 2 and not isinstance(codecs[1], BloscCodec):
        return f"codecs {names}"
    if len(chunks) != arr.ndim:
        return f"chunks {chunks} for {arr.ndim} dims"
    if dtype.itemsize > 1:
        endian = _bytes_endian(codecs[0])
        if endian not in ("little", "big"):
            return f"unrecognised BytesCodec.endian {endian!r}"
        if endian != "little" or sys.byteorder != "little" or not dtype.isnative:
            return f"byte order {endian} (machine {sys.byteorder})"
    return None


def _fast_layout(arr: Any) -> bool:
    """Whether the chunks of ``arr`` can be read without zarr's codec pipeline.

    A layout that cannot is counted (:func:`fast_read_fallbacks`) and its reason
    logged once per process, so a slower read never goes unnoticed.
    """
    problem = fast_layout_problem(arr)
    if problem is None:
        return True
    with _FAST_READ_LOCK:
        FAST_READ_FALLBACKS[problem] += 1
        first = problem not in _FAST_READ_REPORTED
        _FAST_READ_REPORTED.add(problem)
    if first:
        level = logging.WARNING if problem.startswith("unrecognised") else logging.DEBUG
        _log.log(
            level,
            "%s: whole-chunk fast read not used (%s; zarr %s): reading through zarr's codecs",
            getattr(arr, "store_path", arr),
            problem,
            zarr.__version__,
        )
    return False


def _whole_chunk(
    selection: Any, shape: Sequence[int], chunks: Sequence[int]
) -> tuple[int, ...] | None:
    """Chunk coordinates if ``selection`` is exactly one whole chunk (edge chunks cut)."""
    if not isinstance(selection, tuple) or len(selection) != len(shape):
        return None
    coords = []
    for sel, size, chunk in zip(selection, shape, chunks, strict=True):
        if not isinstance(sel, slice) or sel.step not in (None, 1):
            return None
        start = 0 if sel.start is None else sel.start
        stop = size if sel.stop is None else sel.stop
        if start < 0 or start % chunk or stop != min(start + chunk, size) or stop <= start:
            return None
        coords.append(start // chunk)
    return tuple(coords)


def _fetch(arr: Any, key: str) -> bytes | None:
    """The stored bytes of chunk ``key`` of ``arr``, ``None`` when absent."""
    from zarr.storage import LocalStore

    store, path = arr.store_path.store, arr.store_path.path
    full = f"{path}/{key}" if path else key
    if isinstance(store, LocalStore):
        try:
            with open(os.path.join(store.root, full), "rb") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buf = sync(store.get(full, prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def _uncompressed(arr: Any) -> bool:
    """Whether a fast-layout array stores its chunks raw (the bytes codec alone)."""
    return len(getattr(arr.metadata, "codecs", ())) == 1


def _zarr_raises_on_missing_chunks() -> bool:
    """Whether the installed zarr has ``read_missing_chunks`` (zarr >= 3.2)."""
    from dataclasses import fields

    from zarr.core.array_spec import ArrayConfig

    return "read_missing_chunks" in {f.name for f in fields(ArrayConfig)}


STRICT_MISSING_READS = _zarr_raises_on_missing_chunks()
"""zarr itself raises on a missing chunk (``read_missing_chunks=False``, zarr >= 3.2)."""


def strict_reader(arr: Any) -> Any | None:
    """``arr`` opened so that zarr raises on a missing chunk, where that replaces our check.

    Only for arrays whose chunks :func:`stored_chunk_problem` cannot check beyond
    presence (codecs other than bytes [+ Blosc]), and only on zarr >= 3.2: one fetch per
    chunk instead of a presence check followed by zarr's read (measured as fast or
    faster: ``benchmarks/bench_missing_chunks.py``). ``None`` otherwise.
    """
    codecs = tuple(getattr(arr.metadata, "codecs", ()))
    if not STRICT_MISSING_READS or len(codecs) == 1:
        return None
    if len(codecs) == 2 and isinstance(codecs[1], BloscCodec):
        return None
    try:
        return arr.with_config({"read_missing_chunks": False})
    except Exception:  # pragma: no cover - a zarr whose config refuses the key
        return None


def _is_missing_chunk_error(exc: BaseException) -> bool:
    return type(exc).__name__ == "ChunkNotFoundError"


def stored_chunk_problem(arr: Any, data: bytes) -> str | None:
    """Why ``data`` is not one whole stored chunk of ``arr`` (``None`` when it is).

    A Blosc chunk must be one whole Blosc frame decoding to the chunk's size, an
    uncompressed one exactly the chunk's size; other codecs are not checked here.
    """
    codecs: tuple[Any, ...] = tuple(getattr(arr.metadata, "codecs", ()))
    nbytes = int(np.prod(arr.chunks, dtype=np.int64)) * np.dtype(arr.dtype).itemsize
    try:
        if len(codecs) == 2 and isinstance(codecs[1], BloscCodec):
            _check_blosc_header(data, nbytes)
        elif len(codecs) == 1:
            _check_raw_size(len(data), nbytes)
    except ValueError as exc:
        return f"is damaged ({exc})"
    return None


def _chunk_coords(arr: Any, bounds: Sequence[tuple[int, int | None]]) -> list[tuple[int, ...]]:
    """Grid coordinates of the chunks covering ``bounds`` (start, stop) per dim."""
    import itertools

    ranges = []
    for (start, stop), size, chunk in zip(bounds, arr.shape, arr.chunks, strict=True):
        stop = size if stop is None else min(stop, size)
        if stop <= start:
            return []
        ranges.append(range(start // chunk, (stop - 1) // chunk + 1))
    return list(itertools.product(*ranges))


def _chunk_keys(arr: Any, bounds: Sequence[tuple[int, int | None]]) -> list[str]:
    """Storage keys of the chunks covering ``bounds`` (start, stop) per dim."""
    return [arr.metadata.encode_chunk_key(c) for c in _chunk_coords(arr, bounds)]


async def chunk_problems(arr: Any, keys: Sequence[str]) -> list[tuple[str, str]]:
    """``(key, what)`` for every chunk of ``keys`` that is missing or not whole.

    Each chunk is fetched and checked by :func:`stored_chunk_problem`: a truncated
    chunk is caught here, not left to a decoder that may read past its buffer.
    """

    from zarr.core.buffer import default_buffer_prototype

    store, path = arr.store_path.store, arr.store_path.path
    proto = default_buffer_prototype()

    async def one(key: str) -> str | None:
        buf = await store.get(f"{path}/{key}" if path else key, prototype=proto)
        return "is missing" if buf is None else stored_chunk_problem(arr, buf.to_bytes())

    found = await gather_all(*(one(k) for k in keys))
    return [(key, what) for key, what in zip(keys, found, strict=True) if what is not None]


async def _read_region(arr: Any, bounds: Sequence[tuple[int, int | None]]) -> np.ndarray:
    """Read ``bounds`` of a fast-layout array: each chunk fetched once, checked, decoded."""
    from zarr.core.buffer import default_buffer_prototype

    stops = [size if stop is None else min(stop, size) for (_, stop), size in
             zip(bounds, arr.shape, strict=True)]  # fmt: skip
    out = np.empty(stops, dtype=arr.dtype)
    store, path = arr.store_path.store, arr.store_path.path
    proto = default_buffer_prototype()

    async def one(coords: tuple[int, ...]) -> None:
        key = arr.metadata.encode_chunk_key(coords)
        buf = await store.get(f"{path}/{key}" if path else key, prototype=proto)
        chunk = decode_chunk(arr, key, None if buf is None else buf.to_bytes())
        starts = [c * k for c, k in zip(coords, arr.chunks, strict=True)]
        sizes = [min(k, stop - s) for k, stop, s in zip(arr.chunks, stops, starts, strict=True)]
        out[tuple(slice(s, s + n) for s, n in zip(starts, sizes, strict=True))] = chunk[
            tuple(slice(0, n) for n in sizes)
        ]

    await gather_all(*(one(c) for c in _chunk_coords(arr, bounds)))
    return out


async def gather_all(*aws: Any) -> list[Any]:
    """``asyncio.gather`` that waits for every task before raising the first error.

    A plain gather raises at once and leaves the other reads pending (the event
    loop then warns that tasks were destroyed while pending).
    """
    import asyncio

    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def read_arrays(
    group: zarr.Group, names: Sequence[str], rows: int, static: set[str]
) -> dict[str, np.ndarray]:
    """Read arrays of ``group`` concurrently; along-row arrays sliced to ``rows``."""
    from zarr.core.sync import sync

    return sync(read_frame_arrays(group.store_path, names, rows, static))


async def read_frame_arrays(
    base: Any, names: Sequence[str], rows: int, static: set[str] | frozenset[str] = frozenset()
) -> dict[str, np.ndarray]:
    """Read the arrays ``names`` under ``base`` (a store path) concurrently.

    Along-row arrays are sliced to ``rows``, ``static`` ones read whole; every chunk
    is checked, so damage raises :class:`CorruptStoreError` naming the array.
    """

    async def one(name: str) -> np.ndarray:
        arr = await _open_array(base, name)
        whole = name in static
        if not whole and arr.shape[0] < rows:
            raise CorruptStoreError(
                f"{base}/{name}: array has {arr.shape[0]} rows but {rows} are committed"
            )
        bounds = [(0, None if whole else rows)] + [(0, None)] * (arr.ndim - 1)
        if _fast_layout(arr):  # one fetch per chunk: checked and decoded here
            return await _read_region(arr, bounds)
        strict = strict_reader(arr)
        if strict is None:  # presence (and size) checked first: zarr fills a missing chunk
            problems = await chunk_problems(arr, _chunk_keys(arr, bounds))
            if problems:
                key, what = problems[0]
                raise CorruptStoreError(f"{base}/{name}: chunk {key!r} {what}")
        try:
            return np.asarray(await (strict or arr).getitem(Ellipsis if whole else slice(0, rows)))
        except Exception as exc:
            problems = await chunk_problems(arr, _chunk_keys(arr, bounds))
            if _is_missing_chunk_error(exc) and problems:
                key, what = problems[0]
                raise CorruptStoreError(f"{base}/{name}: chunk {key!r} {what}") from None
            raise CorruptStoreError(
                f"{base}/{name}: unreadable chunk ({type(exc).__name__}: {exc})"
            ) from None

    return dict(zip(names, await gather_all(*(one(n) for n in names)), strict=True))
