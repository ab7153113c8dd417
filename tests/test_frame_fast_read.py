"""The whole-chunk fast read path of ``CheckedArray`` against zarr's own reads."""

from __future__ import annotations

import pickle
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

from ndt_store._frame import _WRITE_ALL, COMPRESSORS, CheckedArray
from ndt_store.errors import CorruptStoreError


def _array(tmp_path: Path, values: np.ndarray, chunks: tuple[int, ...], **kw) -> zarr.Array:
    kw.setdefault("compressors", COMPRESSORS)
    arr = zarr.create_array(
        str(tmp_path / "a.zarr"), shape=values.shape, chunks=chunks, dtype=values.dtype,
        config=_WRITE_ALL, **kw,
    )  # fmt: skip
    arr[...] = values
    return arr


class Spy:
    """Counts fast-path chunk reads of every ``CheckedArray``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, ...]] = []
        original = CheckedArray._read_chunk

        def spy(obj: CheckedArray, coords: tuple[int, ...]) -> np.ndarray:
            self.calls.append(coords)
            return original(obj, coords)

        monkeypatch.setattr(CheckedArray, "_read_chunk", spy)


@pytest.mark.parametrize("dtype", ["f4", "f8", "f2", "i8", "u1", "bool", "c8"])
def test_fast_path_matches_values_with_edge_chunks(tmp_path, monkeypatch, dtype) -> None:
    rng = np.random.default_rng(0)
    values = (rng.normal(size=(7, 5, 6)) * 10).astype(dtype)
    arr = _array(tmp_path, values, (2, 3, 6))  # edge chunks on the first two axes
    spy = Spy(monkeypatch)
    checked = CheckedArray(arr)
    out = da.from_array(checked, chunks=arr.chunks).compute(scheduler="sync")
    np.testing.assert_array_equal(out, values)
    assert out.dtype == values.dtype
    assert len(spy.calls) == 4 * 2  # every chunk came through the fast path


def test_partial_selection_uses_zarr(tmp_path, monkeypatch) -> None:
    values = np.arange(40, dtype="f4").reshape(8, 5)
    arr = _array(tmp_path, values, (4, 5))
    spy = Spy(monkeypatch)
    checked = CheckedArray(arr)
    np.testing.assert_array_equal(checked[1:3, :], values[1:3])
    np.testing.assert_array_equal(checked[0:8, 0:5], values)  # two chunks
    np.testing.assert_array_equal(checked[4:8, 0:5], values[4:])  # one whole chunk
    assert spy.calls == [(1, 0)]


def test_other_codecs_read_through_zarr(tmp_path, monkeypatch) -> None:
    values = np.arange(12, dtype="f4").reshape(4, 3)
    arr = _array(tmp_path, values, (2, 3), compressors=(ZstdCodec(level=1),))
    spy = Spy(monkeypatch)
    checked = CheckedArray(arr)
    assert not checked._fast
    np.testing.assert_array_equal(checked[0:2, 0:3], values[:2])
    assert spy.calls == []


def test_pickles_for_distributed(tmp_path) -> None:
    values = np.arange(12, dtype="f4").reshape(4, 3)
    checked = pickle.loads(pickle.dumps(CheckedArray(_array(tmp_path, values, (2, 3)))))
    np.testing.assert_array_equal(checked[2:4, 0:3], values[2:])


def _damage(chunk: Path, how: str) -> None:
    data = chunk.read_bytes()
    if how == "deleted":
        chunk.unlink()
    elif how == "truncated":
        chunk.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        chunk.write_bytes(bytes(len(data)))
    else:  # a valid Blosc frame of the wrong size
        from numcodecs import blosc

        chunk.write_bytes(blosc.compress(np.zeros(5, "f4").tobytes(), b"lz4", 5))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("deleted", r"a\.zarr: chunk 'c/1/0' is missing"),
        ("truncated", r"a\.zarr: unreadable chunk 'c/1/0'"),
        ("garbage", r"a\.zarr: unreadable chunk 'c/1/0'"),
        ("wrong size", r"a\.zarr: unreadable chunk 'c/1/0'.*decodes to 20 bytes"),
    ],
)
def test_damaged_chunk_is_corrupt_store_error(tmp_path, how, message) -> None:
    values = np.arange(40, dtype="f4").reshape(8, 5)
    arr = _array(tmp_path, values, (4, 5))
    _damage(tmp_path / "a.zarr" / "c" / "1" / "0", how)
    checked = CheckedArray(arr)
    np.testing.assert_array_equal(checked[0:4, 0:5], values[:4])  # the other chunk is fine
    with pytest.raises(CorruptStoreError, match=message):
        checked[4:8, 0:5]


@pytest.mark.parametrize("how", ["deleted", "truncated", "longer"])
def test_uncompressed_chunks_read_in_place_and_checked(tmp_path, monkeypatch, how) -> None:
    values = np.arange(40, dtype="f4").reshape(8, 5)
    arr = _array(tmp_path, values, (4, 5), compressors=None)
    spy = Spy(monkeypatch)
    checked = CheckedArray(arr)
    np.testing.assert_array_equal(checked[0:4, 0:5], values[:4])
    np.testing.assert_array_equal(checked[4:8, 0:5], values[4:])
    assert spy.calls == [(0, 0), (1, 0)]
    chunk = tmp_path / "a.zarr" / "c" / "1" / "0"
    if how == "longer":
        chunk.write_bytes(chunk.read_bytes() + b"x")
    else:
        _damage(chunk, how)
    expected = "is missing" if how == "deleted" else r"unreadable chunk 'c/1/0'.* bytes stored"
    with pytest.raises(CorruptStoreError, match=expected):
        checked[4:8, 0:5]


def test_read_ahead_hints_the_next_chunks_once(tmp_path, monkeypatch) -> None:
    import os

    import ndt_store._frame as frame

    if not hasattr(os, "posix_fadvise"):
        pytest.skip("posix_fadvise is not available on this platform")
    values = np.arange(6 * 4 * 3, dtype="f4").reshape(6, 4, 3)
    arr = _array(tmp_path, values, (1, 4, 3), compressors=None)  # 48-byte chunks
    monkeypatch.setattr(frame, "READ_AHEAD_MIN_CHUNK", 1)
    monkeypatch.setattr(frame, "READ_AHEAD_BYTES", 2 * 48)  # two chunks ahead
    hinted: list[str] = []
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_WILLNEED
        hinted.append(Path(os.readlink(f"/proc/self/fd/{fd}")).relative_to(tmp_path).as_posix())
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    (tmp_path / "a.zarr" / "c" / "3" / "0" / "0").unlink()  # a hint to an absent chunk is skipped
    checked = CheckedArray(arr)
    assert checked._ahead == 2
    np.testing.assert_array_equal(checked[0:1, 0:4, 0:3], values[:1])
    assert hinted == ["a.zarr/c/1/0/0", "a.zarr/c/2/0/0"]
    np.testing.assert_array_equal(checked[1:2, 0:4, 0:3], values[1:2])
    assert hinted[2:] == []  # chunk 2 was hinted already, chunk 3 is absent
    np.testing.assert_array_equal(checked[4:5, 0:4, 0:3], values[4:5])
    assert hinted[2:] == ["a.zarr/c/5/0/0"]  # nothing past the last chunk
    with pytest.raises(CorruptStoreError, match="is missing"):
        checked[3:4, 0:4, 0:3]
    small = CheckedArray(_array(tmp_path / "b", values, (1, 4, 3)))  # Blosc: still hinted
    assert small._ahead == 2
    monkeypatch.setattr(frame, "READ_AHEAD_MIN_CHUNK", 2**20)
    assert CheckedArray(arr)._ahead == 0  # small chunks: the kernel's read-ahead suffices
