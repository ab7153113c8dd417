"""Phase 1 dimensionality metrics: known spectra, study formulas, batching, dask, real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_measures_common import BACKENDS, is_lazy, no_compute, to_backend

from ndt_store._dims import (
    EFFECTIVE_RANK_90,
    FEATURE,
    LAYER,
    NUCLEAR_NORM_RATIO,
    PARTICIPATION_RATIO,
    PHASE1_METRICS,
    SAMPLE,
    STABLE_RANK,
    STEP,
)
from ndt_store._kernels import dimensionality as kd
from ndt_store.errors import InputError
from ndt_store.measures import dimensionality as md

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FUNCS = {
    STABLE_RANK: md.stable_rank,
    PARTICIPATION_RATIO: md.participation_ratio,
    EFFECTIVE_RANK_90: md.effective_rank_90,
    NUCLEAR_NORM_RATIO: md.nuclear_norm_ratio,
}


def with_spectrum(s: np.ndarray, n: int, m: int, seed: int) -> np.ndarray:
    """U diag(s) V^T with random orthonormal U (n x r), V (m x r)."""
    rng = np.random.default_rng(seed)
    r = len(s)
    u, _ = np.linalg.qr(rng.normal(size=(n, r)))
    v, _ = np.linalg.qr(rng.normal(size=(m, r)))
    return (u * s) @ v.T


def ref_study(a: np.ndarray, eps: float = 1e-10) -> dict[str, float]:
    """The study's four formulas, from numpy's own norms (not the kernel's SVD helper)."""
    fro = np.linalg.norm(a, "fro")
    spec = np.linalg.norm(a, 2)
    s = np.linalg.svd(a, compute_uv=False)
    se = s + eps
    var = s**2
    ratio = np.cumsum(var) / var.sum() if var.sum() >= 1e-10 else None
    return {
        STABLE_RANK: 0.0 if spec < eps else fro**2 / (spec**2 + eps),
        PARTICIPATION_RATIO: se.sum() ** 2 / ((se**2).sum() + eps),
        EFFECTIVE_RANK_90: 0.0 if ratio is None else float(min((ratio < 0.9).sum() + 1, len(s))),
        NUCLEAR_NORM_RATIO: 0.0 if s[0] < eps else s.sum() / (s[0] + eps),
    }


def test_known_spectrum_analytic() -> None:
    s = np.array([4.0, 2.0, 1.0, 1.0, 0.0])
    a = xr.DataArray(with_spectrum(s, 30, 8, 0), dims=(SAMPLE, FEATURE))
    assert float(md.stable_rank(a)) == pytest.approx(22 / 16)
    assert float(md.participation_ratio(a)) == pytest.approx(64 / 22, rel=1e-8)
    assert float(md.nuclear_norm_ratio(a)) == pytest.approx(8 / 4)
    assert float(md.effective_rank_90(a)) == 2.0  # 16/22 < 0.9 <= 20/22
    b = xr.DataArray(with_spectrum(np.array([3.0, 2.0, 2.0]), 9, 9, 4), dims=(SAMPLE, FEATURE))
    assert float(md.effective_rank_90(b)) == 3.0  # 9/17, 13/17 < 0.9
    flat = xr.DataArray(with_spectrum(np.ones(6), 20, 6, 1), dims=(SAMPLE, FEATURE))
    assert [round(float(FUNCS[n](flat)), 6) for n in PHASE1_METRICS] == [6.0, 6.0, 6.0, 6.0]
    rank1 = xr.DataArray(with_spectrum(np.array([3.0]), 20, 6, 2), dims=(SAMPLE, FEATURE))
    assert [round(float(FUNCS[n](rank1)), 6) for n in PHASE1_METRICS] == [1.0, 1.0, 1.0, 1.0]


def test_zero_and_empty_matrices_give_zero() -> None:
    zero = xr.DataArray(np.zeros((2, 5, 3)), dims=(STEP, SAMPLE, FEATURE))
    ds = md.dimensionality_metrics(zero)
    for name in (STABLE_RANK, EFFECTIVE_RANK_90, NUCLEAR_NORM_RATIO):
        assert np.all(ds[name].values == 0.0), name
    assert np.all(ds[PARTICIPATION_RATIO].values < 1e-8)
    empty = [float(v) for v in kd.dimensionality_metrics(np.zeros((0, 3)))]
    assert empty == [0.0, 0.0, 0.0, 0.0]


def test_gram_singular_values_match_an_svd() -> None:
    rng = np.random.default_rng(3)
    tall = rng.standard_normal((40, 6)) * np.logspace(0, -3, 6)  # spread over 3 decades
    wide = rng.standard_normal((5, 30)).astype(np.float32)
    low = rng.standard_normal((30, 4))
    deficient = np.hstack([low, low @ rng.standard_normal((4, 4))])  # rank 4 of 8
    bad = rng.standard_normal((7, 3))
    bad[2, 1] = np.inf
    mats = [tall, wide, deficient, tall[::-1] * 2, np.zeros((0, 3)), bad, np.ones((3, 3))]
    got = kd.gram_singular_values(mats)
    for m, s in zip(mats[:5], got[:5], strict=True):
        want = np.linalg.svd(np.asarray(m, np.float64), compute_uv=False)
        assert s.shape == (min(m.shape),) and s.dtype == np.float64
        top = want[0] if want.size else 1.0
        np.testing.assert_allclose(s, want, rtol=0, atol=1e-7 * top)
    assert np.all(got[2][4:] < 1e-7 * got[2][0])  # the zero singular values stay ~zero
    assert got[5].shape == (3,) and np.isnan(got[5]).all()  # non-finite: NaN, others fine
    np.testing.assert_allclose(got[6], [3.0, 0.0, 0.0], atol=1e-7)
    with pytest.raises(ValueError, match="2-D"):
        kd.gram_singular_values([np.ones(3)])


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 9), st.integers(1, 7)),
        elements=st.floats(-100, 100),
    )
)
def test_kernel_property_matches_study_formulas(a: np.ndarray) -> None:
    got = dict(zip(PHASE1_METRICS, kd.dimensionality_metrics(a), strict=True))
    for name, expected in ref_study(a).items():
        assert float(got[name]) == pytest.approx(expected, rel=1e-7, abs=1e-9), name
    sr, pr, er, nn = (float(got[n]) for n in PHASE1_METRICS)
    r = min(a.shape)
    top = np.linalg.norm(a, 2)
    if top > 1e-2:  # eps terms small: their relative size is about eps / sigma_max**2
        tol = 1e-9 + 10 * 1e-10 / top**2
        assert 1 - tol <= sr <= r + tol and 1 - tol <= nn <= r + tol
        assert nn * (1 - tol) <= pr <= nn**2 * (1 + tol)
        assert 1 <= er <= r


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_over_step_and_layer(backend: str) -> None:
    rng = np.random.default_rng(5)
    raw = rng.normal(size=(3, 2, 12, 5)) * rng.uniform(0.1, 3, size=(1, 1, 1, 5))
    act = xr.DataArray(
        raw, dims=(STEP, LAYER, SAMPLE, FEATURE), coords={STEP: [0, 5, 10], LAYER: ["a", "b"]}
    )
    lazy_in = to_backend(act, backend, {STEP: 1, SAMPLE: 5})
    with no_compute():
        ds = md.dimensionality_metrics(lazy_in)
        singles = {n: f(lazy_in) for n, f in FUNCS.items()}
    assert is_lazy(ds) == (backend == "dask")
    assert list(ds.data_vars) == list(PHASE1_METRICS)
    for name in PHASE1_METRICS:
        assert ds[name].dims == (STEP, LAYER) and ds[name].name == name
        assert singles[name].name == name
        xr.testing.assert_allclose(singles[name].compute(), ds[name].compute())
        expected = [[ref_study(raw[i, j])[name] for j in range(2)] for i in range(3)]
        np.testing.assert_allclose(ds[name].values, expected, rtol=1e-9, err_msg=name)


def test_chunk_invariance_and_feature_dims() -> None:
    rng = np.random.default_rng(6)
    act = xr.DataArray(rng.normal(size=(2, 10, 3, 4)), dims=(STEP, SAMPLE, "channel", "pos"))
    flat = xr.DataArray(act.values.reshape(2, 10, 12), dims=(STEP, SAMPLE, FEATURE))
    expected = md.dimensionality_metrics(flat)
    got = md.dimensionality_metrics(act)  # default: every dim after sample
    xr.testing.assert_allclose(got, expected)
    for chunks in ({STEP: 1}, {SAMPLE: 3, "pos": 1}):
        xr.testing.assert_allclose(md.dimensionality_metrics(act.chunk(chunks)).compute(), expected)
    only_pos = md.stable_rank(act, feature_dims="pos")
    assert only_pos.dims == (STEP, "channel")
    with pytest.raises(InputError, match="feature dim"):
        md.stable_rank(act.transpose(..., SAMPLE))


def test_as_published_reproduces_frobenius_denominator() -> None:
    a = xr.DataArray(with_spectrum(np.array([5.0, 2.0, 1.0]), 12, 4, 3), dims=(SAMPLE, FEATURE))
    assert float(md.stable_rank(a, as_published=True)) == pytest.approx(1.0, abs=1e-9)
    assert float(md.stable_rank(a)) == pytest.approx(30 / 25)
    ds = md.dimensionality_metrics(a, as_published=True)
    assert float(ds[STABLE_RANK]) == pytest.approx(1.0, abs=1e-9)
    assert ds[STABLE_RANK].attrs["as_published"] == "True"


def test_published_phase1_values_fit_these_definitions() -> None:
    """Real study output: stable rank is 1 (Frobenius denominator), NNR <= PR <= NNR^2."""
    folder = DATA / "phase1" / "phase1_full"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        pytest.skip(f"real Phase 1 data not found under {folder}")
    for path in files:
        records = json.loads(path.read_text())["measurements"]
        values = np.array(
            [
                [metrics[n] for n in PHASE1_METRICS]
                for rec in records
                for metrics in rec["layer_metrics"].values()
            ]
        )
        sr, pr, er, nn = values.T
        assert np.all(np.abs(sr - 1.0) < 1e-8), path.name
        assert np.all(nn <= pr * (1 + 1e-9)) and np.all(pr <= nn**2 * (1 + 1e-9)), path.name
        assert np.all(er == np.round(er)) and np.all(er >= 1), path.name
