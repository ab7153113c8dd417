"""Jump significance validated like a measurement instrument.

Planted step changes must be recovered; pure noise and drifting noise must
(almost) never fire. The published z rule is measured on the same series as
a contrast. ``pytest tests/test_significance.py -k figures`` (marked slow) prints the
figures quoted in ``docs/dynamics.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ndt_store._dims import EXPERIMENT, LAYER, NUM_STEPS, STEP
from ndt_store._kernels import dynamics as kern
from ndt_store.errors import InputError
from ndt_store.measures.dynamics import detect_jumps, jump_table
from ndt_store.measures.significance import jump_significance, noise_floor, series_keys

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "phase1"
RUNS = ("cnn_deep_mnist", "mlp_narrow_mnist", "transformer_deep_mnist")
SERIES = "series"
N_POINTS = 400
N_SURROGATES = 199
ALPHA = 0.05


# --- synthetic instruments --------------------------------------------------------------
def planted_steps(
    n_series: int, n_steps: int, height: float, seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unit Gaussian noise plus ``n_steps`` steps of ±height, >= 10 records apart.

    Returns the series and, per series, the velocity indices of the steps.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_series, N_POINTS))
    where = []
    for row in range(n_series):
        gaps = 10 + rng.multinomial(
            N_POINTS - 20 - 10 * n_steps, np.ones(n_steps + 1) / (n_steps + 1)
        )
        taus = 5 + np.cumsum(gaps[:-1])  # first record after each step
        for tau in taus:
            x[row, tau:] += height * rng.choice([-1.0, 1.0])
        where.append(taus - 1)
    return x, where


def negative_controls(n_series: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    drift = np.linspace(0.0, 20.0, N_POINTS) * rng.uniform(-1, 1, size=(n_series, 1))
    return {
        "gaussian noise": rng.normal(size=(n_series, N_POINTS)),
        "linear drift + noise": drift + rng.normal(size=(n_series, N_POINTS)),
    }


def significant(x: np.ndarray, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    res = detect_jumps(
        xr.DataArray(x, dims=(SERIES, STEP)), alpha=ALPHA, n_surrogates=N_SURROGATES, **kwargs
    )
    return res.significant.values, res.is_jump.values


def recall(sig: np.ndarray, where: list[np.ndarray], tolerance: int = 2) -> tuple[float, float]:
    """Share of planted steps with a significant index within ±tolerance; false fires / 1000."""
    hits, near = 0, np.zeros_like(sig)
    for row, idx in enumerate(where):
        for i in idx:
            window = slice(max(0, i - tolerance), i + tolerance + 1)
            hits += bool(sig[row, window].any())
            near[row, window] = True
    total = sum(len(idx) for idx in where)
    return hits / total, 1000 * (sig & ~near).sum() / sig.size


@pytest.mark.parametrize("n_steps", [1, 4])
def test_planted_steps_are_recovered(n_steps):
    x, where = planted_steps(200, n_steps, height=10.0, seed=n_steps)
    sig, _ = significant(x)
    found, false_per_1000 = recall(sig, where)
    assert found >= 0.95
    assert false_per_1000 <= 1.0


@pytest.mark.parametrize("name", ["gaussian noise", "linear drift + noise"])
def test_negative_controls_rarely_fire(name):
    x = negative_controls(250, seed=11)[name]
    sig, z_rule = significant(x)
    assert 1000 * sig.sum() / x.size <= 1.0
    assert sig.any(axis=1).mean() <= 0.1  # family-wise rate per series near alpha
    # the published rule fires on ~5% of any series' indices
    assert 1000 * z_rule.sum() / x.size >= 30


def test_noise_floor_stops_float_noise_jumps():
    rng = np.random.default_rng(5)
    x = 1.0 + 1e-15 * rng.normal(size=(3, N_POINTS))
    x[:, 200:] += 5e-13  # a clear outlier of the velocity, but 2000 ulps
    da = xr.DataArray(x, dims=(SERIES, STEP))
    res = jump_significance(da, n_surrogates=N_SURROGATES)
    assert (res.p_value.values[:, 199] <= ALPHA).all()
    assert not res.significant.values.any()
    np.testing.assert_allclose(res.noise_floor.values, 1e4 * np.finfo(float).eps * x.max(axis=1))
    loose = jump_significance(da, n_surrogates=N_SURROGATES, floor_ulps=100)
    assert loose.significant.values[:, 199].all()
    strict = noise_floor(da, floor_ulps=100, eps=float(np.finfo(np.float32).eps))
    assert (strict.values > 1e-6).all()


# --- reproducibility and backends ---------------------------------------------------------
@pytest.fixture(scope="module")
def grid() -> xr.DataArray:
    x, _ = planted_steps(6, 2, height=6.0, seed=3)
    x = x.reshape(2, 3, N_POINTS).transpose(0, 2, 1).copy()
    x[1, ::3, 2] = np.nan  # a run that recorded fewer steps in one layer
    x[0, :, 1] = np.nan  # an absent layer
    return xr.DataArray(
        x,
        dims=(EXPERIMENT, STEP, LAYER),
        coords={EXPERIMENT: ["a", "b"], LAYER: ["l0", "l1", "l2"], STEP: 5 * np.arange(N_POINTS)},
    )


def test_seeded_and_independent_of_chunking_companions_and_dim_order(grid):
    base = jump_significance(grid, n_surrogates=99, seed=1)
    xr.testing.assert_identical(base, jump_significance(grid, n_surrogates=99, seed=1))
    other = jump_significance(grid, n_surrogates=99, seed=2)
    assert not np.array_equal(base.p_value.values, other.p_value.values, equal_nan=True)

    def no_compute(*args, **kwargs):
        raise AssertionError("a lazy result was computed while being built")

    with dask.config.set(scheduler=no_compute):
        lazy = jump_significance(grid.chunk({EXPERIMENT: 1, LAYER: 2}), n_surrogates=99, seed=1)
    assert lazy.p_value.chunks is not None
    xr.testing.assert_identical(lazy.compute(), base)

    alone = jump_significance(grid.isel({EXPERIMENT: [1], LAYER: [2]}), n_surrogates=99, seed=1)
    xr.testing.assert_identical(alone, base.isel({EXPERIMENT: [1], LAYER: [2]}))
    flipped = jump_significance(grid.transpose(LAYER, STEP, EXPERIMENT), n_surrogates=99, seed=1)
    xr.testing.assert_identical(
        flipped.transpose(*base.p_value.dims), base.transpose(*base.p_value.dims)
    )

    absent = base.sel({EXPERIMENT: "a", LAYER: "l1"})
    assert np.isnan(absent.p_value).all() and not absent.significant.any()
    short = base.sel({EXPERIMENT: "b", LAYER: "l2"})
    assert np.isnan(short.p_value.values[N_POINTS * 2 // 3 :]).all()
    assert np.isfinite(short.p_value.values[: N_POINTS * 2 // 3 - 1]).all()


def test_invalid_arguments():
    x = xr.DataArray(np.zeros(10), dims=STEP)
    with pytest.raises(InputError, match="surrogate"):
        jump_significance(x, n_surrogates=0)
    with pytest.raises(InputError, match="step"):
        jump_significance(x.rename({STEP: "time"}))


# --- kernel properties ---------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.int64, st.tuples(st.integers(1, 3), st.integers(3, 30)), elements=st.integers(-999, 999)
    ),
    st.integers(-10, 10),
    st.integers(-1000, 1000),
)
def test_robust_z_is_shift_and_scale_invariant(v, log2_scale, shift):
    # powers of two and integer shifts keep the arithmetic exact
    z = kern.robust_z(v.astype(np.float64))
    assert (z >= 0).all()
    moved = v * 2.0**log2_scale + shift * 2.0**log2_scale
    np.testing.assert_allclose(kern.robust_z(moved), z, rtol=1e-12, atol=0)


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(
        np.float64, st.tuples(st.integers(1, 3), st.integers(3, 40)), elements=st.floats(-10, 10)
    ),
    st.integers(0, 2**32),
)
def test_surrogates_keep_spectrum_and_pvalues_are_valid(v, seed):
    keys = np.arange(v.shape[0], dtype=np.uint64)
    sur = kern.phase_randomized(v, keys, 7, seed)
    spec = np.abs(np.fft.rfft(v))[:, None, :]
    np.testing.assert_allclose(
        np.abs(np.fft.rfft(sur)),
        np.broadcast_to(spec, sur.shape[:2] + spec.shape[2:]),
        atol=1e-9 * (1 + spec.max()),
    )
    stat, p = kern.surrogate_pvalues(v, keys, n_surrogates=19, seed=seed)
    assert ((p >= 1 / 20) & (p <= 1)).all()
    # a larger statistic never gets a larger p-value within a series
    for row in range(v.shape[0]):
        order = np.argsort(stat[row], kind="stable")
        assert (np.diff(p[row][order]) <= 1e-12).all()


def test_draws_depend_only_on_seed_key_and_counter():
    keys = kern.label_keys(np.array(["experiment=a", "experiment=b", "experiment=c"]))
    together = kern.uniform_from_keys(keys, 3, (4, 5))
    apart = np.stack([kern.uniform_from_keys(keys[i : i + 1], 3, (4, 5))[0] for i in range(3)])
    np.testing.assert_array_equal(together, apart)
    assert 0.4 < together.mean() < 0.6 and np.unique(together).size == together.size
    assert series_keys(xr.DataArray(np.zeros((2, 4)), dims=(LAYER, STEP))).dtype == np.uint64


# --- the figures quoted in docs/dynamics.md --------------------------------------------------
def real_stable_rank() -> xr.Dataset:
    if not DATA.is_dir():
        pytest.skip(f"real Phase 1 data not found at {DATA}")
    runs = [json.loads((DATA / "phase1_full" / f"{name}.json").read_text()) for name in RUNS]
    layers = sorted({name for r in runs for name in r["measurements"][0]["layer_metrics"]})
    x = np.full((len(runs), N_POINTS, len(layers)), np.nan)
    for e, run in enumerate(runs):
        for t, rec in enumerate(run["measurements"]):
            for layer, values in rec["layer_metrics"].items():
                x[e, t, layers.index(layer)] = values["stable_rank"]
    return xr.Dataset(
        {"stable_rank": ((EXPERIMENT, STEP, LAYER), x)},
        coords={
            EXPERIMENT: list(RUNS),
            LAYER: layers,
            STEP: 5 * np.arange(N_POINTS),
            NUM_STEPS: (EXPERIMENT, [r["num_steps"] for r in runs]),
        },
    )


@pytest.mark.slow
def test_figures_published_jumps_and_validation(capsys):
    table = jump_table(real_stable_rank())  # 999 surrogates, seed 0, floor 1e4 ulps
    published = pd.read_csv(DATA / "all_jumps_detailed.csv")
    assert len(table) == len(published)
    table["p<=0.05"] = table.p_value <= 0.05
    table["above floor"] = table.magnitude > table.noise_floor
    summary = table.groupby("experiment")[["p<=0.05", "above floor", "significant"]].sum()
    summary.insert(0, "published", table.groupby("experiment").size())
    summary.loc["all"] = summary.sum()
    # the study's cnn/mlp jumps are a few ulps of 1.0: float noise
    tiny = table.experiment.isin(["cnn_deep_mnist", "mlp_narrow_mnist"]) & (table.magnitude < 1e-12)
    assert not table.significant[tiny].any()
    assert summary.loc["all", "significant"] < summary.loc["all", "published"]

    rows = []
    for name, x in negative_controls(250, seed=11).items():
        sig, z_rule = significant(x)
        rows.append((name, "-", 1000 * sig.sum() / x.size, 1000 * z_rule.sum() / x.size))
    for n_steps in (1, 4):
        for height in (4.0, 6.0, 8.0, 10.0):
            x, where = planted_steps(200, n_steps, height, seed=n_steps)
            sig, z_rule = significant(x)
            found, false_rate = recall(sig, where)
            z_found, z_false = recall(z_rule, where)
            rows.append(
                (
                    f"{n_steps} step(s) of {height:g} sigma",
                    f"{found:.3f} (z rule {z_found:.3f})",
                    false_rate,
                    z_false,
                )
            )
    validation = pd.DataFrame(
        rows, columns=["series (400 points)", "recall ±2", "sig. fires/1000", "z-rule fires/1000"]
    )
    with capsys.disabled():
        print("\nPublished jumps surviving (alpha=0.05, 999 surrogates, floor 1e4 ulps):")
        print(summary.to_string())
        print("\nValidation (alpha=0.05, 199 surrogates, 200-250 series each):")
        print(validation.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


# --- the sequential test -------------------------------------------------------------------
def test_sequential_decisions_match_the_fixed_test_and_stop_early():
    x, _ = planted_steps(40, 2, height=10.0, seed=7)
    noise = np.random.default_rng(8).normal(size=(40, N_POINTS))
    v = np.diff(np.vstack([x, noise]), axis=-1)
    asked = kern.zscore(v) > 2  # the table's rows
    fixed_z, fixed_p = kern.surrogate_pvalues(v, n_surrogates=999, seed=3)
    z, p, used = kern.surrogate_pvalues(
        v, n_surrogates=999, seed=3, alpha=ALPHA, asked=asked, return_used=True
    )
    np.testing.assert_array_equal(z, fixed_z)
    assert np.isnan(p[~asked]).all() and np.isfinite(p[asked]).all()
    np.testing.assert_array_equal(p[asked] <= ALPHA, fixed_p[asked] <= ALPHA)
    full = used == 999  # series never stopped early: exactly the fixed test's p-values
    np.testing.assert_array_equal(p[full][asked[full]], fixed_p[full][asked[full]])
    assert used.mean() < 999 / 3  # most series stop long before 999 surrogates
    assert (used[:40] <= 200).mean() >= 0.8  # a 10σ step is decided by 200


def test_stopping_rules_keep_their_error_bound():
    stats = pytest.importorskip("scipy.stats")
    for n_surrogates, alpha, epsilon in ((999, 0.05, 1e-3), (4999, 0.01, 1e-4), (199, 0.1, 1e-2)):
        looks, high, low = kern.stopping_plan(n_surrogates, alpha, epsilon)
        exact = next(k for k in range(n_surrogates + 2) if (1 + k) / (n_surrogates + 1) > alpha)
        for size, hi, lo in zip(looks, high, low, strict=True):
            level = epsilon / len(looks)
            assert lo < 0 or stats.binom.cdf(lo, size, alpha) <= level
            assert stats.binom.cdf(lo + 1, size, alpha) > level  # the largest such k
            assert hi == exact or stats.binom.sf(hi - 1, size, alpha) <= level
            assert hi <= exact


def test_rows_limit_the_p_values_to_the_indices_asked(grid):
    base = jump_significance(grid, n_surrogates=999, seed=1)
    rows = base.statistic > 3
    asked = jump_significance(grid, n_surrogates=999, seed=1, rows=rows)
    p, p_all = asked.p_value.values, base.p_value.values
    assert np.isnan(p[~rows.values]).all()
    np.testing.assert_array_equal(p[rows.values] <= ALPHA, p_all[rows.values] <= ALPHA)
    assert (asked.surrogates.values <= base.surrogates.values).all()
    exact = jump_significance(grid, n_surrogates=99, seed=1, sequential=False)
    assert (exact.surrogates.values[np.isfinite(exact.p_value.values).any(-1)] == 99).all()
    with pytest.raises(InputError, match="rows"):
        jump_significance(grid, rows=rows.isel(index=slice(1, None)))


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 64), st.integers(0, 2**32), st.sampled_from(["normal", "ties", "flat"]))
def test_surrogate_maximum_matches_the_robust_z_definition(m, seed, kind):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(5, m)).astype(np.float32)
    if kind == "ties":  # MAD = 0: the mean-absolute-deviation fallback
        y[:, : m // 2 + 1] = 1.0
    elif kind == "flat":
        y[:] = 2.5
    want = kern.robust_z(y.astype(np.float64)).max(axis=-1)
    np.testing.assert_allclose(kern._max_robust_z(y.copy()), want, rtol=2e-5, atol=1e-6)
