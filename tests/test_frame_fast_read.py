"""The whole-chunk fast read path of ``CheckedArray`` against zarr's own reads."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

import ndt_store
from ndt_store._frame import (
    _WRITE_ALL,
    COMPRESSORS,
    CheckedArray,
    _bytes_endian,
    _fast_layout,
    fast_layout_problem,
    fast_read_fallbacks,
)
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


# ---------------------------------------------------------------- layouts of the store


def _numeric_arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    return {
        path: arr
        for path, arr in group.members(max_depth=None)
        if isinstance(arr, zarr.Array) and np.dtype(arr.dtype).kind in "biufc"
    }


@pytest.mark.filterwarnings("ignore:Object at .locks is not recognized")
def test_fast_path_is_taken_for_every_layout_the_store_writes(tmp_path, monkeypatch) -> None:
    """On whatever zarr is installed: every numeric array the store writes reads fast."""
    import pandas as pd

    store = ndt_store.synth_store(
        tmp_path / "s.zarr", experiments=2, steps=3, samples=16, features=64, records=40
    )
    ndt_store.synth_store(store, experiments=1, steps=2, causal=True, prefix="causal", records=20)
    store.write_table("t", pd.DataFrame({"a": np.arange(5.0), "b": np.arange(5)}))
    store.measurements()  # writes the cross-experiment catalog
    arrays = _numeric_arrays(store.zarr_group)
    problems = {path: fast_layout_problem(arr) for path, arr in arrays.items()}
    # published tables and the catalog's step coordinate keep zarr's default codec (small
    # arrays read whole through zarr); every frame column and catalog variable reads fast
    by_zarr = {p for p in arrays if p.startswith("tables/") or re.fullmatch(r"_cache/.*/step", p)}
    assert {p: why for p, why in problems.items() if why is not None and p not in by_zarr} == {}
    fast = {p: arrays[p] for p, why in problems.items() if why is None}
    codecs = {"+".join(type(c).__name__ for c in a.metadata.codecs) for a in fast.values()}
    assert codecs == {"BytesCodec", "BytesCodec+BloscCodec"}  # both layouts are exercised
    assert any("/phase1-" in p for p in fast) and any("/snapshots/" in p for p in fast)
    assert sum(p.startswith("_cache/") for p in fast) >= 5
    assert all(CheckedArray(arr)._fast for arr in fast.values())

    before = fast_read_fallbacks()
    spy = Spy(monkeypatch)
    name = store.experiments()[0]
    reopened = ndt_store.open_store(tmp_path / "s.zarr", mode="r")
    reopened.phase1(name).load()
    reopened.measurements().load()
    for kind in ("activations", "attention"):
        for arr in getattr(reopened, kind)(name).values():
            arr.load()
    assert len(spy.calls) > 0
    grown = {k for k, v in fast_read_fallbacks().items() if v > before.get(k, 0)}
    # only text coordinates and the small zarr-default arrays above went through zarr
    assert {k for k in grown if not k.startswith("dtype ")} <= {"codecs BytesCodec+ZstdCodec"}


class _Endian:
    """Stands for zarr 3.1's ``Endian`` enum member (a ``.value`` string)."""

    def __init__(self, value: str) -> None:
        self.value = value


class _Codec:
    def __init__(self, endian: object) -> None:
        self.endian = endian


@pytest.mark.parametrize(
    ("endian", "expected"),
    [(_Endian("little"), "little"), ("little", "little"), ("big", "big"), (None, None)],
)
def test_bytes_endian_reads_the_enum_of_zarr_3_1_and_the_string_of_zarr_3_4(
    endian, expected
) -> None:
    assert _bytes_endian(_Codec(endian)) == expected


def test_unrecognised_layout_is_counted_and_reported_once(tmp_path, caplog) -> None:
    import logging

    values = np.arange(12, dtype="f4").reshape(4, 3)
    arr = _array(tmp_path, values, (2, 3))
    codec = arr.metadata.codecs[0]

    class Odd:  # a future zarr's endian the reader does not know
        def __repr__(self) -> str:
            return "Odd()"

    object.__setattr__(codec, "endian", Odd())
    before = fast_read_fallbacks().get("unrecognised BytesCodec.endian 'Odd()'", 0)
    with caplog.at_level(logging.DEBUG, logger="ndt_store._frame"):
        assert not _fast_layout(arr)
        assert not _fast_layout(arr)
    after = fast_read_fallbacks()["unrecognised BytesCodec.endian 'Odd()'"]
    assert after == before + 2
    reports = [r for r in caplog.records if "Odd()" in r.getMessage()]
    assert len(reports) <= 1  # once per process (none if an earlier test reported it)
    if reports:
        assert reports[0].levelno == logging.WARNING
        assert "fast read not used" in reports[0].getMessage()


def test_other_codecs_are_counted_at_debug_level(tmp_path, caplog) -> None:
    import logging

    values = np.arange(12, dtype="f4").reshape(4, 3)
    arr = _array(tmp_path, values, (2, 3), compressors=(ZstdCodec(level=1),))
    assert fast_layout_problem(arr) == "codecs BytesCodec+ZstdCodec"
    before = fast_read_fallbacks().get("codecs BytesCodec+ZstdCodec", 0)
    with caplog.at_level(logging.DEBUG, logger="ndt_store._frame"):
        CheckedArray(arr)
    assert fast_read_fallbacks()["codecs BytesCodec+ZstdCodec"] == before + 1
    assert all(r.levelno == logging.DEBUG for r in caplog.records if "Zstd" in r.getMessage())


def test_missing_chunk_of_a_zarr_codec_array_is_corrupt_store_error(tmp_path) -> None:
    """Zstd arrays read through zarr: a deleted chunk raises (zarr >= 3.2 itself raises)."""
    from zarr.core.sync import sync

    from ndt_store._frame import STRICT_MISSING_READS, read_frame_arrays, strict_reader

    values = np.arange(40, dtype="f4").reshape(8, 5)
    arr = _array(tmp_path, values, (4, 5), compressors=(ZstdCodec(level=1),))
    assert (strict_reader(arr) is not None) == STRICT_MISSING_READS
    major, minor = (int(x) for x in zarr.__version__.split(".")[:2])
    assert STRICT_MISSING_READS == ((major, minor) >= (3, 2))
    base = zarr.storage.StorePath(zarr.storage.LocalStore(tmp_path))
    got = sync(read_frame_arrays(base, ["a.zarr"], 8))
    np.testing.assert_array_equal(got["a.zarr"], values)
    (tmp_path / "a.zarr" / "c" / "1" / "0").unlink()
    checked = CheckedArray(zarr.open_array(str(tmp_path / "a.zarr")))
    np.testing.assert_array_equal(checked[0:4, 0:5], values[:4])
    with pytest.raises(CorruptStoreError, match=r"a\.zarr: chunk 'c/1/0' is missing"):
        checked[0:8, 0:5]
    with pytest.raises(CorruptStoreError, match=r"a\.zarr: chunk 'c/1/0' is missing"):
        sync(read_frame_arrays(base, ["a.zarr"], 8))
