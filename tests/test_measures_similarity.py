"""Linear CKA: analytic invariances, numpy reference, batching, dask."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_measures_common import BACKENDS, is_lazy, no_compute, to_backend

from ndt_store._dims import FEATURE, LAYER, SAMPLE, STEP
from ndt_store._kernels import similarity as ks
from ndt_store.errors import InputError
from ndt_store.measures.similarity import linear_cka


def ref_cka(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC with the centering matrix H, written independently of the kernel."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    kx, ky = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.trace(kx @ ky) / np.sqrt(np.trace(kx @ kx) * np.trace(ky @ ky)))


def random_orthogonal(p: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(p, p)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize(("n", "p", "q"), [(40, 5, 7), (6, 30, 20)])  # feature vs Gram path
def test_kernel_matches_reference_both_paths(n: int, p: int, q: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, p))
    y = x[:, :1] * rng.normal(size=(1, q)) + rng.normal(size=(n, q))
    assert float(ks.linear_cka(x, y)) == pytest.approx(ref_cka(x, y), rel=1e-10)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(3, 12).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.float64, (n, 3), elements=st.floats(-10, 10)),
            hnp.arrays(np.float64, (n, 4), elements=st.floats(-10, 10)),
        )
    )
)
def test_kernel_property(xy: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = xy
    out = float(ks.linear_cka(x, y))
    if np.allclose(x, x.mean(0)) or np.allclose(y, y.mean(0)):
        return  # (near) zero variance: covered separately
    assert 0.0 <= out <= 1.0
    assert out == pytest.approx(ref_cka(x, y), rel=1e-6, abs=1e-9)
    assert out == pytest.approx(float(ks.linear_cka(y, x)), rel=1e-9, abs=1e-12)


def test_invariances_and_sensitivity() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    xa = xr.DataArray(x, dims=(SAMPLE, FEATURE))
    assert float(linear_cka(xa, xa)) == pytest.approx(1.0, abs=1e-12)
    rotated = xr.DataArray(x @ random_orthogonal(8, 1), dims=(SAMPLE, FEATURE))
    y = xr.DataArray(rng.normal(size=(50, 5)) + x[:, :5], dims=(SAMPLE, FEATURE))
    base = float(linear_cka(xa, y))
    assert float(linear_cka(rotated, y)) == pytest.approx(base, rel=1e-10)
    assert float(linear_cka(7.5 * xa, y)) == pytest.approx(base, rel=1e-10)
    assert float(linear_cka(xa + 3.0, y)) == pytest.approx(base, rel=1e-10)
    stretched = xa * xr.DataArray(np.linspace(0.1, 10, 8), dims=FEATURE)
    assert abs(float(linear_cka(stretched, y)) - base) > 1e-3  # not invariant to this


def test_zero_variance_is_nan() -> None:
    x = xr.DataArray(np.ones((5, 3)), dims=(SAMPLE, FEATURE))
    y = xr.DataArray(np.random.default_rng(0).normal(size=(5, 2)), dims=(SAMPLE, FEATURE))
    assert np.isnan(float(linear_cka(x, y)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_over_layers_two_steps(backend: str) -> None:
    rng = np.random.default_rng(2)
    act = xr.DataArray(
        rng.normal(size=(2, 3, 20, 6)),
        dims=(STEP, LAYER, SAMPLE, FEATURE),
        coords={STEP: [10, 20], LAYER: ["a", "b", "c"]},
    )
    x = to_backend(act.sel({STEP: 10}), backend)
    y = to_backend(act.sel({STEP: 20}), backend)
    with no_compute():
        out = linear_cka(x, y, estimator="biased")
    assert is_lazy(out) == (backend == "dask")
    assert out.name == "linear_cka" and out.dims == (LAYER,)
    expected = [ref_cka(act.values[0, i], act.values[1, i]) for i in range(3)]
    np.testing.assert_allclose(out.values, expected, rtol=1e-10)


def test_different_widths_and_multiple_feature_dims() -> None:
    rng = np.random.default_rng(3)
    x = xr.DataArray(rng.normal(size=(15, 4)), dims=(SAMPLE, FEATURE))
    y = xr.DataArray(rng.normal(size=(15, 9)), dims=(SAMPLE, FEATURE))
    got = float(linear_cka(x, y, estimator="biased"))
    assert got == pytest.approx(ref_cka(x.values, y.values), rel=1e-10)
    conv = xr.DataArray(rng.normal(size=(15, 2, 3)), dims=(SAMPLE, "channel", "pos"))
    ref = ref_cka(x.values, conv.values.reshape(15, 6))
    assert float(linear_cka(x, conv, estimator="biased")) == pytest.approx(ref, rel=1e-10)
    chunked = linear_cka(
        x.chunk({SAMPLE: 4}), conv.chunk({"channel": 1}), estimator="biased"
    ).compute()
    assert float(chunked) == pytest.approx(ref, rel=1e-10)


def test_needs_feature_dim() -> None:
    x = xr.DataArray(np.zeros((3, 5)), dims=(FEATURE, SAMPLE))
    with pytest.raises(InputError, match="at least one feature dim"):
        linear_cka(x, x)
