"""What the chunk checks need to know about one Zarr array, read without opening it in Zarr.

Opening an array through Zarr costs about half a millisecond (an event-loop round
trip, then building its full metadata object); a store with thousands of small
arrays spends seconds there before reading a chunk. :meth:`ArraySpec.from_document`
reads the same facts straight from the array's ``zarr.json`` document, and only for
the layout the frames write: a regular chunk grid, a fixed-size numeric dtype, the
``bytes`` codec (little-endian), optionally followed by Blosc, and nothing Zarr would
have to interpret beyond that. Any other document gives ``None``, and the caller opens
the array through Zarr, which then also reports whatever is wrong with it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Codec = Literal["raw", "blosc", "vlen-utf8", "zarr"]

_NUMERIC = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
}  # fmt: skip
_ARRAY_KEYS = {
    "shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value", "codecs",
    "attributes", "dimension_names", "zarr_format", "node_type", "storage_transformers",
}  # fmt: skip
_GROUP_KEYS = {"attributes", "zarr_format", "node_type", "consolidated_metadata"}
_BLOSC_CONFIG = {
    "cname": {"lz4", "lz4hc", "blosclz", "zstd", "snappy", "zlib"},
    "shuffle": {"noshuffle", "shuffle", "bitshuffle"},
}
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True)
class ArraySpec:
    """The facts about one array that verifying its chunks needs.

    Attributes
    ----------
    path
        Store-relative path of the array (Zarr's ``Array.path``).
    shape, chunks, dtype, fill_value, dimension_names
        As Zarr reports them (``dimension_names`` a tuple or ``None``).
    codec
        ``"raw"`` (the bytes codec alone), ``"blosc"`` (bytes then Blosc),
        ``"vlen-utf8"`` (strings, optionally then zstd: ``zstd`` holds its level and
        checksum flag), or ``"zarr"``: any other layout, decoded by Zarr.
    arr
        The array opened through Zarr, when it was (always for ``codec="zarr"``).
    """

    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    codec: Codec
    fill_value: Any
    dimension_names: tuple[str | None, ...] | None
    key_prefix: str = "c/"
    separator: str = "/"
    zstd: tuple[int, bool] | None = None
    arr: Any = None

    @property
    def chunk_nbytes(self) -> int:
        """Bytes of one decoded chunk."""
        return math.prod(self.chunks) * self.dtype.itemsize

    def chunk_key(self, coords: tuple[int, ...]) -> str:
        """The key of chunk ``coords``, relative to the array."""
        if self.arr is not None:
            return str(self.arr.metadata.encode_chunk_key(coords))
        if not coords:
            return self.key_prefix.rstrip(self.separator) or "0"
        return self.key_prefix + self.separator.join(map(str, coords))

    @classmethod
    def from_zarr(cls, arr: Any) -> ArraySpec:
        """The spec of an array opened through Zarr (any layout)."""
        from ndt_store._frame import _fast_layout, _uncompressed

        codec: Codec = "zarr"
        if _fast_layout(arr):
            codec = "raw" if _uncompressed(arr) else "blosc"
        names = getattr(arr.metadata, "dimension_names", None)
        ndim = len(arr.shape)
        first = str(arr.metadata.encode_chunk_key((0,) * ndim)) if ndim else ""
        prefix, sep = next(
            ((p, s) for p, s in (("c/", "/"), ("c.", "."), ("", "."), ("", "/"))
             if ndim and first == p + s.join("0" * ndim)),
            ("", ""),
        )  # fmt: skip
        return cls(
            path=arr.path,
            shape=tuple(arr.shape),
            chunks=tuple(arr.chunks),
            dtype=np.dtype(arr.dtype),
            codec=codec,
            fill_value=arr.metadata.fill_value,
            dimension_names=None if names is None else tuple(names),
            key_prefix=prefix,
            separator=sep,
            arr=arr,
        )

    @classmethod
    def from_document(cls, path: str, doc: Any) -> ArraySpec | None:
        """The spec read from the parsed ``zarr.json`` of the array at ``path``.

        ``None`` unless the document describes, in a form Zarr accepts, an array
        of the frames' layout (see the module docstring); open it through Zarr then.
        """
        try:
            return _parse(path, doc)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            return None


def simple_group_attributes(doc: Any) -> dict[str, Any] | None:
    """The attributes of a parsed group ``zarr.json``, or ``None`` unless it is plain.

    Plain: a Zarr v3 group document with nothing but attributes (no consolidated
    metadata, which Zarr would read instead of the members' own documents).
    """
    if not isinstance(doc, dict) or not set(doc) <= _GROUP_KEYS:
        return None
    if doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        return None
    if doc.get("consolidated_metadata") is not None:
        return None
    attrs = doc.get("attributes", {})
    return attrs if isinstance(attrs, dict) else None


def _ints(value: Any, minimum: int) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise TypeError("not a list")
    if not all(type(v) is int and v >= minimum for v in value):
        raise ValueError("not a list of integers")
    return tuple(value)


def _config(entry: Any, name: str) -> dict[str, Any]:
    if (
        not isinstance(entry, dict)
        or entry.get("name") != name
        or not set(entry)
        <= {
            "name",
            "configuration",
        }
    ):
        raise ValueError(f"not the {name} codec")
    config = entry.get("configuration", {})
    if not isinstance(config, dict):
        raise TypeError("configuration")
    return config


def _codec(codecs: Any, dtype: np.dtype) -> Codec:
    if not isinstance(codecs, list) or not 1 <= len(codecs) <= 2:
        raise ValueError("codecs")
    config = _config(codecs[0], "bytes")
    if not set(config) <= {"endian"}:
        raise ValueError("bytes configuration")
    endian = config.get("endian")
    if (dtype.itemsize > 1 and endian != "little") or endian not in (None, "little", "big"):
        raise ValueError("byte order")
    if len(codecs) == 1:
        return "raw"
    blosc = _config(codecs[1], "blosc")
    if not set(blosc) <= {"typesize", "cname", "clevel", "shuffle", "blocksize"}:
        raise ValueError("blosc configuration")
    for key, allowed in _BLOSC_CONFIG.items():
        if key in blosc and blosc[key] not in allowed:
            raise ValueError(key)
    ranges = {"clevel": (0, 9), "typesize": (1, 2**31), "blocksize": (0, 2**31)}
    for key, (lo, hi) in ranges.items():
        if key in blosc and not (type(blosc[key]) is int and lo <= blosc[key] <= hi):
            raise ValueError(key)
    return "blosc"


def _string_codecs(codecs: Any) -> tuple[Codec, tuple[int, bool] | None]:
    """``vlen-utf8``, optionally followed by ``zstd`` (level, checksum)."""
    if not isinstance(codecs, list) or not 1 <= len(codecs) <= 2:
        raise ValueError("codecs")
    if _config(codecs[0], "vlen-utf8"):
        raise ValueError("vlen-utf8 configuration")
    if len(codecs) == 1:
        return "vlen-utf8", None
    return "vlen-utf8", zstd_config(codecs[1])


def zstd_config(entry: Any) -> tuple[int, bool]:
    """``(level, checksum)`` of a ``zstd`` codec entry of a ``zarr.json``.

    Raises
    ------
    ValueError, TypeError
        Unless ``entry`` is a ``zstd`` codec with a configuration Zarr accepts.
    """
    zstd = _config(entry, "zstd")
    level, checksum = zstd.get("level"), zstd.get("checksum", False)
    if set(zstd) - {"level", "checksum"} or type(level) is not int or type(checksum) is not bool:
        raise ValueError("zstd configuration")
    if not -131072 <= level <= 22:
        raise ValueError("zstd level")
    return level, checksum


def _fill(value: Any, dtype: np.dtype) -> Any:
    if dtype.kind == "b":
        if type(value) is not bool:
            raise TypeError("fill_value")
        return dtype.type(value)
    if dtype.kind in "iu":
        if type(value) is not int:
            raise TypeError("fill_value")
        info = np.iinfo(dtype)
        if not info.min <= value <= info.max:
            raise ValueError("fill_value")
        return dtype.type(value)
    if isinstance(value, str):
        return dtype.type(_SPECIAL_FLOATS[value])
    if type(value) not in (int, float):
        raise TypeError("fill_value")
    return dtype.type(value)


def _key_encoding(entry: Any) -> tuple[str, str]:
    if not isinstance(entry, dict) or not set(entry) <= {"name", "configuration"}:
        raise ValueError("chunk_key_encoding")
    config = entry.get("configuration", {})
    if not isinstance(config, dict) or not set(config) <= {"separator"}:
        raise ValueError("chunk_key_encoding configuration")
    if entry.get("name") == "default":
        sep = config.get("separator", "/")
        if sep not in ("/", "."):
            raise ValueError("separator")
        return "c" + sep, sep
    if entry.get("name") == "v2":
        sep = config.get("separator", ".")
        if sep not in ("/", "."):
            raise ValueError("separator")
        return "", sep
    raise ValueError("chunk_key_encoding name")


def _parse(path: str, doc: Any) -> ArraySpec | None:
    if sys.byteorder != "little" or not isinstance(doc, dict) or not set(doc) <= _ARRAY_KEYS:
        return None
    if doc.get("zarr_format") != 3 or doc.get("node_type") != "array":
        return None
    if doc.get("storage_transformers", []) != [] or not isinstance(doc.get("attributes", {}), dict):
        return None
    if doc["data_type"] == "string":
        dtype = np.dtype(object)
        codec, zstd = _string_codecs(doc["codecs"])
        fill = doc["fill_value"]
        if not isinstance(fill, str):
            return None
    elif doc["data_type"] in _NUMERIC:
        dtype = np.dtype(doc["data_type"])
        codec, zstd = _codec(doc["codecs"], dtype), None
        fill = _fill(doc["fill_value"], dtype)
    else:
        return None
    shape = _ints(doc["shape"], 0)
    grid = doc["chunk_grid"]
    regular = isinstance(grid, dict) and grid.get("name") == "regular"
    if not regular or set(grid) != {"name", "configuration"}:
        return None
    if not isinstance(grid["configuration"], dict) or set(grid["configuration"]) != {"chunk_shape"}:
        return None
    chunks = _ints(grid["configuration"]["chunk_shape"], 1)
    if len(chunks) != len(shape):
        return None
    names = doc.get("dimension_names")
    if names is not None:
        if not isinstance(names, list) or len(names) != len(shape):
            return None
        if not all(n is None or isinstance(n, str) for n in names):
            return None
        names = tuple(names)
    prefix, sep = _key_encoding(doc["chunk_key_encoding"])
    return ArraySpec(
        path=path,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        codec=codec,
        fill_value=fill,
        dimension_names=names,
        key_prefix=prefix,
        separator=sep,
        zstd=zstd,
    )


__all__ = ["ArraySpec", "simple_group_attributes", "zstd_config"]
