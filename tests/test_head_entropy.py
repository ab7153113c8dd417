"""Per-head mean entropy: one pass over stored chunks, equal to the two-step reduction."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

import ndt_store
import ndt_store._frame as frame
from ndt_store._dims import HEAD, QUERY, SAMPLE, STEP
from ndt_store._frame import _WRITE_ALL, CheckedArray, chunk_reduce, take_rows
from ndt_store.measures.attention import (
    attention_entropy,
    attention_specialization,
    head_entropy,
)


def _attention(seed: int, causal: bool, steps: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.random((steps, 5, 3, 16, 16)).astype(np.float32) ** 4
    if causal:
        p = np.tril(p)
    return p / p.sum(-1, keepdims=True)


def _reference(p: np.ndarray) -> np.ndarray:
    """Plain numpy, float64: -sum p log p over key (0 log 0 = 0), mean over sample and query."""
    p = p.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return (-terms.sum(-1)).mean(axis=(1, 3))  # (step, head)


@pytest.fixture
def store_with_attention(tmp_path: Path):
    store = ndt_store.open_store(tmp_path / "s.zarr")
    store.create_run("r", {}, [])
    store.write_snapshot("r", 0, weights={"w": np.ones((2, 2), np.float32)})  # no attention
    dense, causal = _attention(0, False), _attention(1, True)
    for i, step in enumerate((5, 10, 15)):
        store.write_snapshot("r", step, attention={"dense": dense[i], "causal": causal[i]})
    return store, {"dense": dense, "causal": causal}


class CountReads:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = frame._reduce_chunk

        def spy(*args):
            self.calls += 1
            return real(*args)

        monkeypatch.setattr(frame, "_reduce_chunk", spy)


@pytest.mark.parametrize("layer", ["dense", "causal"])  # stored raw / Blosc
def test_store_attention_takes_the_one_pass_path(store_with_attention, monkeypatch, layer) -> None:
    store, values = store_with_attention
    attn = store.attention("r", layer)
    reads = CountReads(monkeypatch)
    out = head_entropy(attn)
    assert reads.calls == 0  # lazy
    assert out.dims == (STEP, HEAD) and out.name == "head_entropy"
    assert out[STEP].values.tolist() == [5, 10, 15] and out[HEAD].values.tolist() == [0, 1, 2]
    got = out.compute(scheduler="sync")
    assert reads.calls == 3  # one task per stored chunk
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.values, _reference(values[layer]), rtol=1e-5)
    # the two-step reduction and the numpy path agree
    two_step = attention_entropy(attn).mean((SAMPLE, QUERY), skipna=False).compute()
    np.testing.assert_allclose(got.values, two_step.values, rtol=1e-5)
    np.testing.assert_allclose(head_entropy(attn.load()).values, got.values, rtol=1e-6)


def test_any_other_selection_takes_the_generic_path(store_with_attention, monkeypatch) -> None:
    store, values = store_with_attention
    attn = store.attention("r", "dense")
    reads = CountReads(monkeypatch)
    sub = head_entropy(attn.isel(sample=[0, 3])).compute(scheduler="sync")
    assert reads.calls == 0
    np.testing.assert_allclose(sub.values, _reference(values["dense"][:, [0, 3]]), rtol=1e-5)
    rechunked = head_entropy(attn.chunk({HEAD: 1})).compute(scheduler="sync")
    assert reads.calls == 0
    np.testing.assert_allclose(rechunked.values, _reference(values["dense"]), rtol=1e-5)
    # a selection of steps (a gather, so the generic path) gives the same values
    later = store.attention("r", "dense").sel(step=[10, 15])
    np.testing.assert_allclose(
        head_entropy(later).values, _reference(values["dense"][1:]), rtol=1e-5
    )


def test_keep_dims_nan_and_specialization(store_with_attention) -> None:
    store, values = store_with_attention
    attn = store.attention("r", "dense")
    per_row = head_entropy(attn, keep=(STEP, SAMPLE, QUERY))  # nothing averaged
    np.testing.assert_allclose(
        per_row.transpose(*attention_entropy(attn).dims).values,
        attention_entropy(attn).values,
        rtol=1e-6,
    )
    p = values["dense"].copy()
    p[1, 2, 0, 4, 7] = np.nan
    nan = head_entropy(attn.copy(data=da.from_array(p, chunks=(1, 5, 3, 16, 16))))
    assert np.isnan(nan.values[1, 0]) and np.isfinite(np.delete(nan.values.ravel(), 3)).all()
    spec = attention_specialization(attn)
    np.testing.assert_allclose(spec["head_entropy"].values, _reference(values["dense"]), rtol=1e-5)
    np.testing.assert_allclose(
        spec["specialization_index"].values, np.ptp(_reference(values["dense"]), axis=1), rtol=1e-4
    )
    with pytest.raises(ndt_store.errors.InputError, match="no dim 'heads'"):
        head_entropy(attn, head_dim="heads")


def test_chunk_reduce_row_ranges_inside_and_across_chunks(tmp_path: Path) -> None:
    values = np.arange(7 * 3, dtype="f8").reshape(7, 3)
    arr = zarr.create_array(
        str(tmp_path / "a.zarr"), shape=values.shape, chunks=(2, 3), dtype="f8", config=_WRITE_ALL
    )
    arr[...] = values
    whole = da.from_array(CheckedArray(arr), chunks=arr.chunks, name="whole-for-test")
    frame._remember(whole, CheckedArray(arr), 0)
    rows = take_rows(whole, 1, 6)  # blocks: row 1 | rows 2-3 | rows 4-5
    out = chunk_reduce(rows, lambda b: b.sum(axis=1), drop_axes=[1], dtype="f8")
    assert out is not None and out.chunks == ((1, 2, 2),)
    np.testing.assert_array_equal(out.compute(scheduler="sync"), values[1:6].sum(axis=1))
    assert chunk_reduce(rows.rechunk(5), np.sum, drop_axes=[1], dtype="f8") is None
    assert chunk_reduce(rows, np.sum, drop_axes=[0], dtype="f8") is None  # rows are kept
    assert chunk_reduce(da.ones((4, 3)), np.sum, drop_axes=[1], dtype="f8") is None
