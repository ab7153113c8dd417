"""The sparse/blocked table kernels agree with the dense kernels and a per-series reference."""

from __future__ import annotations

import numpy as np
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from ndt_store._dims import EXPERIMENT, INDEX, LAYER, STEP
from ndt_store._kernels import dynamics as k
from ndt_store.measures.dynamics import (
    coordination,
    critical_periods,
    loss_correlation,
    transitions,
)


def series(seed: int, n_series: int, n: int, gap: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(size=(n_series, n)), axis=-1)
    x[:, n // 2 :] += 5 * (rng.random((n_series, 1)) < 0.5)
    x = np.where(rng.random(x.shape) < gap, np.nan, x)
    x[rng.random(n_series) < 0.2] = np.nan  # some absent series
    x[:, : n // 3][rng.random(n_series) < 0.3] = 1.0  # ties
    return x


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16), st.integers(0, 300), st.integers(1, 40), st.sampled_from([0, 0.1]))
def test_jump_rows_equal_dense_kernel(seed, n_series, n, gap):
    x = series(seed, n_series, n, gap)
    row, i, v, z, mag, speed, pos = k.jump_rows(x)
    dv, dz, jump, dmag, dspeed, _ = k.zscore_jumps(x)
    rr, ii = np.nonzero(jump)
    _, order, _ = k.compact(x)
    pairs = [(row, rr), (i, ii), (v, dv[rr, ii]), (z, dz[rr, ii]), (mag, dmag[rr, ii]),
             (speed, dspeed[rr, ii]), (pos, order[rr, ii])]  # fmt: skip
    for got, want in pairs:
        np.testing.assert_array_equal(got, want)


def test_jump_rows_match_the_study_loop_on_full_series():
    x = series(3, 50, 400, 0.0)
    x = x[~np.isnan(x).all(axis=-1)]
    row, i, v, z, _, speed, _ = k.jump_rows(x)
    want = []
    for r, s in enumerate(x):
        d = np.diff(s)
        zz = np.abs(d - d.mean()) / d.std()
        for j in np.flatnonzero(zz > 2.0):
            a, e = max(0, j - 2), min(len(s), j + 3)
            want.append((r, j, d[j], zz[j], abs(s[e - 1] - s[a]) / (e - a)))
    assert list(zip(row.tolist(), i.tolist(), v.tolist(), z.tolist(), speed.tolist(),
                    strict=True)) == [tuple(float(c) if k > 1 else int(c) for k, c in enumerate(w))
                                      for w in want]  # fmt: skip


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 6), st.integers(1, 5), st.integers(1, 30),
       st.sampled_from([0, 0.15]))  # fmt: skip
def test_critical_summary_equals_labeled_measures(seed, n_exp, n_layers, n, gap):
    x = series(seed, n_exp * n_layers, n, gap).reshape(n_exp, n_layers, n)
    loss = np.cumsum(np.random.default_rng(seed + 1).normal(size=(n_exp, n)), axis=-1)
    da = xr.DataArray(x, dims=(EXPERIMENT, LAYER, STEP))
    lo = xr.DataArray(loss, dims=(EXPERIMENT, STEP))
    crit = critical_periods(da)
    coord = coordination(crit)
    want = [
        (crit == 1).sum((LAYER, INDEX)).values,
        (transitions(da) == 1).sum((LAYER, INDEX)).values,
        coord.num_coordinated_periods.values,
        coord.max_coordination.values,
        coord.mean_coordination.values,
        loss_correlation(crit, lo).values,
    ]
    present = ~np.isnan(x).all(axis=-1)
    e, layer = np.nonzero(present)
    got = k.critical_summary(x[e, layer], loss, e, n_exp)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=0)
