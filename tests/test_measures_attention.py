"""Attention entropy and head specialization: analytic cases, numpy reference, dask."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_measures_common import BACKENDS, is_lazy, no_compute, to_backend

from ndt_store._dims import HEAD, KEY, QUERY, SAMPLE, STEP
from ndt_store._kernels import attention as k
from ndt_store.errors import InputError
from ndt_store.measures.attention import attention_entropy, attention_specialization, head_entropy

ATTN_DIMS = (STEP, SAMPLE, HEAD, QUERY, KEY)


def ref_entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Plain numpy reference, float64, 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    terms = np.zeros_like(p)
    np.multiply(p, np.log(p, where=p > 0, out=np.zeros_like(p)), out=terms, where=p > 0)
    return -terms.sum(axis=axis)


def ref_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def random_attention(shape=(3, 2, 4, 5, 6), seed=0, dtype=np.float64) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=shape)
    p = ref_softmax(logits)
    p[..., 0, :] = 0.0  # one-hot rows mixed in
    p[..., 0, 1] = 1.0
    coords = {STEP: [0, 10, 20][: shape[0]], HEAD: list(range(shape[2]))}
    return xr.DataArray(p.astype(dtype), dims=ATTN_DIMS, coords=coords)


# --- kernel -------------------------------------------------------------------
@pytest.mark.parametrize("k_len", [1, 2, 7, 64])
def test_kernel_uniform_and_one_hot(k_len: int) -> None:
    uniform = np.full((3, k_len), 1.0 / k_len)
    one_hot = np.eye(k_len)
    np.testing.assert_allclose(k.entropy(uniform), math.log(k_len), rtol=1e-12, atol=1e-15)
    out = k.entropy(one_hot)
    assert np.all(out == 0.0) and not np.any(np.signbit(out))


def test_kernel_axis_dtype_and_nan() -> None:
    p = np.random.default_rng(1).dirichlet(np.ones(5), size=(4, 3)).astype(np.float32)
    moved = np.moveaxis(p, -1, 0)
    out = k.entropy(moved, axis=0)
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_allclose(out, ref_entropy(p), rtol=1e-5)
    p[0, 0, 2] = np.nan
    assert np.isnan(k.entropy(p)[0, 0]) and np.isfinite(k.entropy(p)[1:]).all()
    assert k.entropy(np.ones((2, 0))).tolist() == [0.0, 0.0]


def test_kernel_many_blocks_matches_reference() -> None:
    p = ref_softmax(np.random.default_rng(2).normal(size=(3000, 33)))
    np.testing.assert_allclose(k.entropy(p), ref_entropy(p), rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=1, max_dims=4, max_side=6),
        elements=st.one_of(st.just(0.0), st.floats(1e-6, 1.0)),
    )
)
def test_kernel_property_matches_reference(raw: np.ndarray) -> None:
    raw = raw.copy()
    raw[..., 0] += 1e-3  # no all-zero rows
    p = raw / raw.sum(axis=-1, keepdims=True)
    out = k.entropy(p)
    np.testing.assert_allclose(out, ref_entropy(p), rtol=1e-10, atol=1e-12)
    assert np.all(out >= 0) and np.all(out <= math.log(p.shape[-1]) + 1e-12)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3), elements=st.floats(-30, 30))
)
def test_kernel_from_logits_is_softmax_then_entropy(x: np.ndarray) -> None:
    np.testing.assert_allclose(
        k.entropy(x, from_logits=True), ref_entropy(ref_softmax(x)), rtol=1e-9, atol=1e-12
    )


# --- labeled ------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_entropy_matches_reference_and_keeps_dims(backend: str) -> None:
    attn = random_attention()
    out = attention_entropy(to_backend(attn, backend))
    assert out.name == "attention_entropy" and out.attrs["units"] == "nat"
    assert out.dims == (STEP, SAMPLE, HEAD, QUERY)
    assert out[STEP].values.tolist() == [0, 10, 20]
    np.testing.assert_allclose(out.values, ref_entropy(attn.values), rtol=1e-12)
    assert np.all(out.isel({QUERY: 0}).values == 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_entropy_analytic_uniform_and_one_hot(backend: str) -> None:
    p = np.zeros((2, 1, 2, 3, 8))
    p[:, :, 0] = 1 / 8
    p[:, :, 1, :, 3] = 1.0
    out = attention_entropy(to_backend(xr.DataArray(p, dims=ATTN_DIMS), backend)).values
    np.testing.assert_allclose(out[:, :, 0], math.log(8), rtol=1e-12)
    assert np.all(out[:, :, 1] == 0.0)


def test_entropy_other_dim_and_float32() -> None:
    attn = random_attention(dtype=np.float32).transpose(KEY, ...)
    out = attention_entropy(attn.rename({QUERY: "q2"}), dim=KEY)
    assert out.dtype == np.float32
    np.testing.assert_allclose(
        out.transpose(STEP, SAMPLE, HEAD, "q2").values,
        ref_entropy(attn.transpose(..., KEY).values),
        rtol=1e-5,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_entropy_from_logits(backend: str) -> None:
    logits = xr.DataArray(np.random.default_rng(3).normal(size=(2, 2, 3, 4, 5)), dims=ATTN_DIMS)
    out = attention_entropy(to_backend(logits, backend), from_logits=True)
    assert out.attrs["input"] == "logits"
    np.testing.assert_allclose(out.values, ref_entropy(ref_softmax(logits.values)), rtol=1e-12)


def test_entropy_dask_lazy_and_chunk_invariant() -> None:
    attn = random_attention(shape=(3, 4, 2, 5, 6))
    expected = attention_entropy(attn)
    for chunks in ({STEP: 1}, {SAMPLE: 3, KEY: 4}, {KEY: 1, QUERY: 2}):
        lazy = attn.chunk(chunks)
        with no_compute():
            out = attention_entropy(lazy)
        assert is_lazy(out)
        xr.testing.assert_allclose(out.compute(), expected, rtol=1e-12)


def test_entropy_missing_dim_is_input_error() -> None:
    with pytest.raises(InputError, match="no dim 'nope'"):
        attention_entropy(random_attention(), dim="nope")


def test_legacy_softmax_on_probabilities_flattens_patterns() -> None:
    """Why the old behaviour is not reproduced: softmax of a one-hot row is near uniform."""
    p = np.eye(16)
    assert np.all(k.entropy(p) == 0.0)
    assert np.all(k.entropy(p, from_logits=True) > 0.9 * math.log(16))


# --- specialization -----------------------------------------------------------
def ref_specialization(p: np.ndarray) -> dict[str, np.ndarray]:
    """Per (step) stats over heads of entropy averaged over sample and query."""
    head = ref_entropy(p).mean(axis=(1, 3))  # (step, head)
    return {
        "head_entropy": head,
        "mean_entropy": head.mean(-1),
        "min_entropy": head.min(-1),
        "max_entropy": head.max(-1),
        "entropy_std": head.std(-1),
        "specialization_index": head.max(-1) - head.min(-1),
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_specialization_matches_reference(backend: str) -> None:
    attn = random_attention()
    with no_compute():
        ds = attention_specialization(to_backend(attn, backend))
    assert is_lazy(ds) == (backend == "dask")
    assert ds["head_entropy"].dims == (STEP, HEAD)
    assert ds["specialization_index"].dims == (STEP,)
    for name, expected in ref_specialization(attn.values).items():
        np.testing.assert_allclose(ds[name].values, expected, rtol=1e-12, err_msg=name)


def test_specialization_analytic_and_keep() -> None:
    p = np.zeros((2, 1, 3, 2, 4))
    p[:, :, 0] = 0.25  # uniform head
    p[:, :, 1, :, 0] = 1.0  # one-hot head
    p[:, :, 2, :, :2] = 0.5  # two-way head
    attn = xr.DataArray(p, dims=ATTN_DIMS)
    ds = attention_specialization(attn)
    np.testing.assert_allclose(ds["max_entropy"], math.log(4))
    np.testing.assert_allclose(ds["min_entropy"], 0.0)
    np.testing.assert_allclose(ds["mean_entropy"], math.log(8) / 3)
    np.testing.assert_allclose(ds["specialization_index"], math.log(4))
    pooled = attention_specialization(attn, keep=())
    assert pooled["specialization_index"].dims == ()
    per_query = attention_specialization(attn, keep=(STEP, QUERY))
    assert per_query["head_entropy"].dims == (STEP, HEAD, QUERY)


def test_specialization_no_warnings_and_needs_head() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention_specialization(random_attention())
    with pytest.raises(InputError, match="no head dim"):
        attention_specialization(random_attention().isel({HEAD: 0}))


# --- inputs checked; raw arrays accepted ---------------------------------------------
def test_unnormalised_rows_are_refused_with_a_hint():
    """The study's own example input (np.random.rand rows) is not probabilities."""
    import dask.array as dsa

    from ndt_store.errors import InputError as Err
    from ndt_store.legacy.measurement import MeasurementTools

    raw = np.random.default_rng(0).random((4, 2, 8, 8))
    with pytest.raises(Err, match="from_logits=True"):
        MeasurementTools.attention_entropy(raw)
    with pytest.raises(Err, match="row sums to"):
        attention_entropy(xr.DataArray(raw, dims=("sample", "head", "query", "key")))
    lazy = xr.DataArray(dsa.from_array(raw, chunks=2), dims=("sample", "head", "query", "key"))
    out = attention_entropy(lazy)  # building the lazy result checks nothing yet ...
    with pytest.raises(Err, match="from_logits=True"):
        out.compute()  # ... computing it does, in each chunk
    with pytest.raises(Err, match="from_logits=True"):
        head_entropy(lazy).compute()
    # as logits the same input is fine, and entropy stays within [0, ln 8]
    e = attention_entropy(raw, from_logits=True).values
    assert (e >= 0).all() and (e <= np.log(8) + 1e-9).all()
    neg = np.full((2, 4), 0.25)
    neg[0] = [0.5, 0.75, -0.25, 0.0]
    with pytest.raises(Err, match=r"a value is -0\.25"):
        attention_entropy(neg)


def test_raw_arrays_dims_inferred_or_given():
    p = np.full((3, 2, 5, 4), 0.25)
    got = attention_entropy(p)
    assert got.dims == ("sample", "head", "query")
    np.testing.assert_allclose(got.values, np.log(4))
    named = attention_entropy(p, dims=("batch", "h", "q", "key"))
    assert named.dims == ("batch", "h", "q")
    spec = attention_specialization(p)
    assert float(spec["specialization_index"]) == pytest.approx(0.0)
    assert head_entropy(p).dims == ("head",)
    with pytest.raises(InputError, match="dims="):
        attention_entropy(np.zeros((1,) * 6))
    with pytest.raises(InputError, match="names 3"):
        attention_entropy(p, dims=("a", "b", "key"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_row_check_finds_a_bad_row_in_any_block(dtype) -> None:
    # rows of 64 keys: several kernel blocks; one bad row placed in the last block
    rng = np.random.default_rng(3)
    p = rng.random((9000, 64)).astype(dtype)
    p /= p.sum(-1, keepdims=True)
    p[4000] = np.nan  # NaN rows pass the check and give NaN
    plain = k.entropy(p)
    checked = k.entropy(p, row_tolerance=1e-3)
    np.testing.assert_array_equal(checked, plain)
    assert np.isnan(checked[4000]) and np.isfinite(np.delete(checked, 4000)).all()
    bad = p.copy()
    bad[-3] *= 1.01  # sums to 1.01: outside 1e-3
    reference = float(np.sum(bad[-3], dtype=np.float64))
    with pytest.raises(k.NotProbabilitiesError, match=f"sums to {reference:.4g}"):
        k.entropy(bad, row_tolerance=1e-3)
    close = p.copy()
    close[-3] *= 1.0005  # within the tolerance
    assert np.isfinite(k.entropy(np.delete(close, 4000, 0), row_tolerance=1e-3)).all()
    neg = p.copy()
    neg[-2, :2] = [-0.01, neg[-2, 0] + neg[-2, 1] + 0.01]  # sum kept, one value < -tol
    with pytest.raises(k.NotProbabilitiesError, match=r"a value is -0\.01"):
        k.entropy(neg, row_tolerance=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the check reports it; numpy does not warn
        with pytest.raises(k.NotProbabilitiesError):
            k.entropy(neg, row_tolerance=1e-3)
    assert k.entropy(bad, from_logits=True, row_tolerance=1e-3).shape == (9000,)
