"""Cosine similarity and weight change: analytic cases, numpy reference, dask."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_measures_common import BACKENDS, is_lazy, no_compute, to_backend

from ndt_store._dims import LAYER, STEP
from ndt_store._kernels import similarity as ks
from ndt_store._kernels import weights as kw
from ndt_store.errors import InputError
from ndt_store.measures.similarity import cosine_similarity
from ndt_store.measures.weights import (
    WEIGHT_CHANGE_VARIABLES,
    consecutive_weight_change,
    weight_change,
    weight_change_between,
)

OUT, IN = "out", "in"


def ref_change(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """The study's formulas in plain numpy (non-zero norms)."""
    b, a = before.ravel().astype(float), after.ravel().astype(float)
    d = a - b
    return {
        "l2_norm": np.linalg.norm(d),
        "relative_change": np.linalg.norm(d) / np.linalg.norm(b),
        "max_change": np.abs(d).max(),
        "mean_change": np.abs(d).mean(),
        "cosine_similarity": b @ a / (np.linalg.norm(b) * np.linalg.norm(a)),
    }


def weights_over_steps(seed: int = 0) -> xr.DataArray:
    w = np.random.default_rng(seed).normal(size=(5, 3, 4))
    return xr.DataArray(w, dims=(STEP, OUT, IN), coords={STEP: [0, 5, 10, 50, 100]})


# --- kernels ------------------------------------------------------------------
def test_kernels_zero_cases_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rel = kw.relative_change(np.array([0.0, 1.0, np.nan]), np.array([0.0, 0.0, 1.0]))
        cos = ks.cosine_from_sums(np.array([0.0, 1.0]), np.array([0.0, 1.0]), np.array([1.0, 0.0]))
    assert rel[0] == 0.0 and rel[1] == np.inf and np.isnan(rel[2])
    assert cos.tolist() == [0.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64, st.tuples(st.integers(1, 4), st.integers(1, 6)), elements=st.floats(-1e3, 1e3)
    ),
    st.data(),
)
def test_cosine_property_matches_numpy(a: np.ndarray, data: st.DataObject) -> None:
    b = data.draw(hnp.arrays(np.float64, a.shape, elements=st.floats(-1e3, 1e3)))
    out = cosine_similarity(
        xr.DataArray(a, dims=(LAYER, IN)), xr.DataArray(b, dims=(LAYER, IN)), dims=IN
    )
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(all="ignore"):
        ref = np.where((na == 0) | (nb == 0), 0.0, (a * b).sum(1) / (na * nb))
    np.testing.assert_allclose(out.values, np.clip(ref, -1, 1), rtol=1e-9, atol=1e-12)
    assert np.all(np.abs(out.values) <= 1.0)


# --- cosine -------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_analytic(backend: str) -> None:
    a = xr.DataArray([[1.0, 0.0], [1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], dims=(LAYER, IN))
    b = xr.DataArray([[0.0, 5.0], [2.0, 4.0], [-1.0, -2.0], [1.0, 1.0]], dims=(LAYER, IN))
    out = cosine_similarity(to_backend(a, backend), to_backend(b, backend), dims=IN)
    assert out.name == "cosine_similarity" and out.dims == (LAYER,)
    np.testing.assert_allclose(out.values, [0.0, 1.0, -1.0, 0.0], atol=1e-15)
    assert float(cosine_similarity(a, b)) == pytest.approx(
        (a.values * b.values).sum() / np.linalg.norm(a.values) / np.linalg.norm(b.values)
    )


def test_cosine_unknown_dim() -> None:
    a = xr.DataArray([1.0], dims=IN)
    with pytest.raises(InputError, match="not in the input"):
        cosine_similarity(a, a, dims="nope")


# --- weight change ------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_change_matches_reference(backend: str) -> None:
    w = weights_over_steps()
    before, after = w.isel({STEP: 0}, drop=True), w.isel({STEP: 3}, drop=True)
    with no_compute():
        ds = weight_change(to_backend(before, backend), to_backend(after, backend))
    assert is_lazy(ds) == (backend == "dask")
    assert list(ds.data_vars) == list(WEIGHT_CHANGE_VARIABLES)
    for name, expected in ref_change(before.values, after.values).items():
        assert float(ds[name]) == pytest.approx(expected, rel=1e-12), name


def test_weight_change_zero_before_is_defined() -> None:
    zero = xr.DataArray(np.zeros((2, 2)), dims=(OUT, IN))
    ones = xr.DataArray(np.ones((2, 2)), dims=(OUT, IN))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grown = weight_change(zero, ones)
        same = weight_change(zero, zero)
    assert float(grown["relative_change"]) == np.inf
    assert float(grown["cosine_similarity"]) == 0.0
    assert float(same["relative_change"]) == 0.0
    assert float(same["l2_norm"]) == 0.0


def test_weight_change_keeps_unreduced_dims_and_broadcasts() -> None:
    w = weights_over_steps()
    init = w.sel({STEP: 0}, drop=True)
    ds = weight_change(init, w, dims=(OUT, IN))
    assert ds["l2_norm"].dims == (STEP,)
    assert float(ds["l2_norm"].sel({STEP: 0})) == 0.0
    for i, s in enumerate(w[STEP].values):
        ref = ref_change(init.values, w.values[i])
        assert float(ds["l2_norm"].sel({STEP: s})) == pytest.approx(ref["l2_norm"])
    per_row = weight_change(init, w, dims=IN)
    assert per_row["max_change"].dims == (STEP, OUT)


@pytest.mark.parametrize("backend", BACKENDS)
def test_consecutive_weight_change_vectorized_equals_pairs(backend: str) -> None:
    w = weights_over_steps(1)
    with no_compute():
        ds = consecutive_weight_change(to_backend(w, backend, {STEP: 2}))
    assert is_lazy(ds) == (backend == "dask")
    assert ds[STEP].values.tolist() == [5, 10, 50, 100]
    assert ds[f"{STEP}_before"].values.tolist() == [0, 5, 10, 50]
    for i in range(4):
        for name, expected in ref_change(w.values[i], w.values[i + 1]).items():
            assert float(ds[name].isel({STEP: i})) == pytest.approx(expected, rel=1e-12)


def test_consecutive_chunk_invariant() -> None:
    w = weights_over_steps(2)
    expected = consecutive_weight_change(w)
    for chunks in ({STEP: 1}, {STEP: 3, IN: 1}, {OUT: 2}):
        xr.testing.assert_allclose(consecutive_weight_change(w.chunk(chunks)).compute(), expected)


def test_weight_change_between_any_pair() -> None:
    w = weights_over_steps(3)
    ds = weight_change_between(w, 100, 5)
    assert float(ds[f"{STEP}_before"]) == 100 and float(ds[f"{STEP}_after"]) == 5
    for name, expected in ref_change(w.values[4], w.values[1]).items():
        assert float(ds[name]) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(InputError, match="no dim"):
        consecutive_weight_change(w.isel({STEP: 0}))
