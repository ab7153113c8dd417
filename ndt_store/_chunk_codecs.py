"""Checking and decoding one stored chunk of the frames' layouts, without Zarr.

The frames write a few chunk layouts only (see :mod:`ndt_store._array_spec`): raw
little-endian bytes, Blosc-compressed bytes, and ``vlen-utf8`` strings optionally
followed by ``zstd``. The store's own fast paths (whole-chunk reads, ``verify``, the
light reader of :mod:`ndt_store._local_read`) check and decode them here, through
``numcodecs`` directly; Zarr is never imported.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import numpy as np


class ChunkLayout(Protocol):
    """What decoding one chunk needs to know (an :class:`~ndt_store._array_spec.ArraySpec`)."""

    @property
    def codec(self) -> str: ...
    @property
    def chunks(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> np.dtype: ...
    @property
    def zstd(self) -> tuple[int, bool] | None: ...
    @property
    def chunk_nbytes(self) -> int: ...


def check_raw_size(stored: int, nbytes: int) -> None:
    """Raise ``ValueError`` unless an uncompressed chunk of ``nbytes`` is ``stored`` bytes."""
    if stored != nbytes:
        raise ValueError(f"{stored} bytes stored, {nbytes} expected")


def check_blosc_header(data: bytes | memoryview, nbytes: int) -> None:
    """Raise ``ValueError`` unless ``data`` is one whole Blosc frame of ``nbytes``.

    The 16-byte header holds (little-endian) the decoded size at offset 4 and
    the frame size at offset 12; a truncated or foreign file fails here instead
    of being decoded.
    """
    if len(data) < 16:
        raise ValueError(f"{len(data)} bytes is shorter than a Blosc header")
    decoded = int.from_bytes(data[4:8], "little")
    framed = int.from_bytes(data[12:16], "little")
    if framed != len(data):
        raise ValueError(f"Blosc frame of {framed} bytes stored in {len(data)} bytes")
    if decoded != nbytes:
        raise ValueError(f"Blosc frame decodes to {decoded} bytes, chunk holds {nbytes}")


def blosc_decompress(data: bytes | memoryview) -> bytes:
    """The decoded bytes of one Blosc frame."""
    from numcodecs import blosc

    return bytes(blosc.decompress(data))


def zstd_decompress(data: bytes | memoryview, level: int, checksum: bool) -> bytes:
    """The decoded bytes of one ``zstd`` frame (the codec's configuration as stored)."""
    return bytes(_zstd(level, checksum).decode(data))


def decode_strings(spec: ChunkLayout, data: bytes | memoryview) -> np.ndarray:
    """Decode a string chunk as Zarr's ``vlen-utf8`` (after ``zstd``) codecs do (chunk-shaped)."""
    raw: Any = data if spec.zstd is None else _zstd(*spec.zstd).decode(data)
    return np.asarray(_vlen_codec().decode(raw)).reshape(spec.chunks)


def decode_chunk(spec: ChunkLayout, data: bytes | memoryview) -> np.ndarray:
    """The chunk-shaped values of one whole stored chunk of a ``raw``, ``blosc`` or string spec.

    Raises
    ------
    ValueError
        If the bytes are not one whole chunk of ``spec`` (or ``spec`` is decoded by
        Zarr only); the codecs' own errors pass through.
    """
    if spec.codec == "raw":
        check_raw_size(len(data), spec.chunk_nbytes)
        return np.frombuffer(data, dtype=spec.dtype).reshape(spec.chunks)
    if spec.codec == "blosc":
        check_blosc_header(data, spec.chunk_nbytes)
        return np.frombuffer(blosc_decompress(data), dtype=spec.dtype).reshape(spec.chunks)
    if spec.codec == "vlen-utf8":
        return decode_strings(spec, data)
    raise ValueError(f"layout {spec.codec!r} is decoded by Zarr only")


@functools.cache
def _zstd(level: int, checksum: bool) -> Any:
    from numcodecs.zstd import Zstd

    return Zstd(level=level, checksum=checksum)


@functools.cache
def _vlen_codec() -> Any:
    from numcodecs.vlen import VLenUTF8

    return VLenUTF8()


__all__ = [
    "ChunkLayout",
    "blosc_decompress",
    "check_blosc_header",
    "check_raw_size",
    "decode_chunk",
    "decode_strings",
    "zstd_decompress",
]
