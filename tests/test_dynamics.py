"""Phase 1 dynamics: published tables reproduced, NaN padding ignored, numpy == dask, kernels."""

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

from ndt_store._dims import (
    ARCH_NAME,
    DATASET,
    EPOCH,
    EXPERIMENT,
    GRAD_NORM,
    INDEX,
    LAYER,
    LOSS,
    MEASUREMENT_INTERVAL,
    NUM_STEPS,
    PHASE1_METRICS,
    STABLE_RANK,
    STEP,
)
from ndt_store._kernels import dynamics as kern
from ndt_store.errors import InputError
from ndt_store.measures.dynamics import (
    acceleration,
    coordination,
    critical_period_table,
    critical_periods,
    detect_jumps,
    jump_table,
    loss_correlation,
    record_steps,
    transitions,
    velocity,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "phase1"
RUNS = ("cnn_deep_mnist", "mlp_narrow_mnist", "transformer_deep_mnist")


# --- helpers ------------------------------------------------------------------------
def phase1_dataset(runs: list[dict], names: list[str]) -> xr.Dataset:
    """Study JSON records → (experiment, step, layer) Dataset; union of steps/layers, NaN pad."""
    steps = sorted({m["step"] for r in runs for m in r["measurements"]})
    layers = sorted({name for r in runs for m in r["measurements"] for name in m["layer_metrics"]})
    s_at = {s: i for i, s in enumerate(steps)}
    l_at = {name: i for i, name in enumerate(layers)}
    metric = {v: np.full((len(runs), len(steps), len(layers)), np.nan) for v in PHASE1_METRICS}
    scalar = {v: np.full((len(runs), len(steps)), np.nan) for v in (LOSS, GRAD_NORM, EPOCH)}
    for e, run in enumerate(runs):
        for rec in run["measurements"]:
            t = s_at[rec["step"]]
            for v in scalar:
                scalar[v][e, t] = rec[v]
            for layer, values in rec["layer_metrics"].items():
                for v in metric:
                    metric[v][e, t, l_at[layer]] = values[v]
    return xr.Dataset(
        {
            **{v: ((EXPERIMENT, STEP, LAYER), a) for v, a in metric.items()},
            **{v: ((EXPERIMENT, STEP), a) for v, a in scalar.items()},
        },
        coords={
            EXPERIMENT: names,
            STEP: steps,
            LAYER: layers,
            ARCH_NAME: (EXPERIMENT, [r["arch_name"] for r in runs]),
            DATASET: (EXPERIMENT, [r["dataset_name"] for r in runs]),
            NUM_STEPS: (EXPERIMENT, [r["num_steps"] for r in runs]),
            MEASUREMENT_INTERVAL: (EXPERIMENT, [r["measurement_interval"] for r in runs]),
        },
    )


def real_runs() -> list[dict]:
    if not DATA.is_dir():
        pytest.skip(f"real Phase 1 data not found at {DATA}")
    return [json.loads((DATA / "phase1_full" / f"{name}.json").read_text()) for name in RUNS]


def synthetic_run(seed: int = 7) -> dict:
    """A 16-layer run with other layer names, recorded every 10 steps from step 2."""
    rng = np.random.default_rng(seed)
    steps = np.arange(2, 4000, 10)
    walk = 1 + np.cumsum(rng.normal(scale=1e-3, size=(steps.size, 16)), axis=0)
    records = [
        {
            "step": int(s),
            "epoch": 1 + int(s) // 1000,
            "loss": float(2.3 * np.exp(-s / 2000) + 0.01 * rng.normal()),
            "grad_norm": float(1 + rng.random()),
            "layer_metrics": {
                f"blocks.{k}.mlp": {
                    v: float(walk[t, k] * (1 + j)) for j, v in enumerate(PHASE1_METRICS)
                }
                for k in range(16)
            },
        }
        for t, s in enumerate(steps)
    ]
    return {
        "arch_name": "mlp_verydeep_15",
        "dataset_name": "qmnist",
        "num_steps": 4000,
        "measurement_interval": 10,
        "measurements": records,
    }


def as_backend(obj: xr.Dataset | xr.DataArray, backend: str):
    return obj.chunk({EXPERIMENT: 1}) if backend == "dask" else obj


def no_compute(*args, **kwargs):
    raise AssertionError("a lazy result was computed while being built")


def compare_tables(got: pd.DataFrame, want: pd.DataFrame, columns: list[str]) -> None:
    got = got.reset_index(drop=True)
    want = want.reset_index(drop=True)
    assert len(got) == len(want)
    for col in columns:
        a, b = got[col].to_numpy(), want[col].to_numpy()
        if np.issubdtype(b.dtype, np.floating):
            np.testing.assert_allclose(a.astype(float), b, rtol=1e-12, atol=0, err_msg=col)
        else:
            assert a.tolist() == b.tolist(), col


@pytest.fixture(scope="module")
def real() -> xr.Dataset:
    return phase1_dataset(real_runs(), list(RUNS))


@pytest.fixture(scope="module")
def published_jumps() -> pd.DataFrame:
    real_runs()
    return pd.read_csv(DATA / "all_jumps_detailed.csv")


@pytest.fixture(scope="module")
def published_critical() -> pd.DataFrame:
    real_runs()
    return pd.read_csv(DATA / "critical_periods_detailed.csv")


# --- faithfulness to the published tables ----------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_jump_table_reproduces_published(real, published_jumps, backend):
    got = jump_table(as_backend(real, backend), n_surrogates=0, phase="index")
    columns = [c for c in published_jumps.columns if c != "cluster"]
    compare_tables(got, published_jumps, columns)
    # record index 40 of these runs (5-step interval) is training step 200
    assert (got["train_step"] == got["index"] * 5).all()
    assert (got["step"] == got["index"]).all()


def test_phase_is_training_progress_and_published_phase_kept(real, published_jumps):
    """Default phase = train_step / num_steps; the published index formula under index_phase."""
    got = jump_table(real, n_surrogates=0)
    compare_tables(
        got.rename(columns={"phase": "train_phase", "phase_category": "tpc"}).rename(
            columns={"index_phase": "phase", "index_phase_category": "phase_category"}
        ),
        published_jumps,
        ["phase", "phase_category"],
    )
    np.testing.assert_allclose(got["phase"], got["train_step"] / 2000)
    # the published formula calls a jump at 90% of training "early" (index 360 of 400)
    late = got[got["train_step"] >= 0.67 * 2000]
    assert len(late) and (late["phase_category"] == "late").all()
    assert (late["index_phase_category"] == "early").all()
    with pytest.raises(InputError, match="phase"):
        jump_table(real, n_surrogates=0, phase="records")


@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_critical_period_table_reproduces_published(real, published_critical, backend):
    got = critical_period_table(as_backend(real, backend))
    compare_tables(got, published_critical, list(published_critical.columns))


def test_fourth_experiment_with_other_layers_and_grid_changes_nothing(
    real, published_jumps, published_critical
):
    runs = [*real_runs(), synthetic_run()]
    mixed = phase1_dataset(runs, [*RUNS, "mlp_verydeep_15_qmnist"])
    assert mixed.sizes[LAYER] == 23 + 16 and mixed.sizes[STEP] == 800  # interleaved grids
    real_rows = published_jumps[[c for c in published_jumps.columns if c != "cluster"]]

    tables = {}
    for backend in ("numpy", "dask"):
        jt = jump_table(as_backend(mixed, backend), n_surrogates=99, phase="index")
        ct = critical_period_table(as_backend(mixed, backend))
        tables[backend] = (jt, ct)
        compare_tables(jt[jt.experiment.isin(RUNS)], real_rows, list(real_rows.columns))
        compare_tables(ct[ct.experiment.isin(RUNS)], published_critical, list(published_critical))
        # the synthetic run: 16 layers, index → its own steps, phase over its own num_steps
        extra = jt[~jt.experiment.isin(RUNS)]
        assert len(extra) > 0 and extra.layer.str.startswith("blocks.").all()
        assert (extra.train_step == 2 + 10 * extra["index"]).all()
        np.testing.assert_allclose(extra.phase, extra["index"] / 4000)
        np.testing.assert_allclose(extra.index_phase, extra["index"] / 4000)
        assert ct.set_index("experiment").loc["mlp_verydeep_15_qmnist", "max_coordination"] <= 1
    pd.testing.assert_frame_equal(tables["numpy"][0], tables["dask"][0])
    pd.testing.assert_frame_equal(tables["numpy"][1], tables["dask"][1])
    # p-values of the real runs do not depend on the other run being present
    alone = jump_table(real, n_surrogates=99)
    mixed_real = tables["numpy"][0][tables["numpy"][0].experiment.isin(RUNS)]
    compare_tables(mixed_real, alone, ["p_value", "noise_floor", "significant", "z"])


def test_jump_table_with_alpha_keeps_only_significant(real):
    full = jump_table(real, n_surrogates=99)
    kept = jump_table(real, alpha=0.05, n_surrogates=99)
    assert len(kept) == int(full.significant.sum()) < len(full)
    assert (kept.p_value <= 0.05).all() and (kept.magnitude > kept.noise_floor).all()
    with pytest.raises(InputError):
        jump_table(real, alpha=0.05, n_surrogates=0)
    for bad in (0, 1, 2, -0.1, float("nan")):
        with pytest.raises(InputError, match="alpha"):
            jump_table(real, alpha=bad, n_surrogates=9)


# --- hand-built series --------------------------------------------------------------
def reference_series(x: np.ndarray) -> list[np.ndarray]:
    """Plain-numpy reference: each row's non-NaN values."""
    return [row[~np.isnan(row)] for row in x.reshape(-1, x.shape[-1])]


def test_step_function_jump_and_critical_index():
    x = xr.DataArray(np.r_[np.zeros(20), np.full(20, 3.0)], dims=STEP)
    res = detect_jumps(x)
    assert np.flatnonzero(res.is_jump.values).tolist() == [19]
    assert res.direction.values[19] == 1 and res.magnitude.values[19] == 3.0
    # speed at i=19: |x[22] - x[17]| / 5
    assert res.speed.values[19] == pytest.approx(3.0 / 5)
    assert np.flatnonzero(critical_periods(x).values == 1).tolist() == [19]
    assert np.flatnonzero(transitions(x, percentile=50).values == 1).tolist() == [18, 19]


def test_nan_padding_matches_compacted_reference():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 30)).cumsum(axis=1)
    x[0, [0, 5, 6, 29]] = np.nan  # holes anywhere
    x[2, :] = np.nan  # absent series
    x[3, 20:] = np.nan  # shorter run
    da = xr.DataArray(x, dims=(LAYER, STEP), coords={STEP: np.arange(30) * 5})
    res = detect_jumps(da)
    steps = record_steps(da).values
    for row, values in enumerate(reference_series(x)):
        n = values.size
        if n == 0:
            assert not res.is_jump.values[row].any() and np.isnan(res.z.values[row]).all()
            continue
        v = np.diff(values)
        z = np.abs(v - v.mean()) / v.std()
        np.testing.assert_array_equal(res.velocity.values[row, : n - 1], v)
        np.testing.assert_array_equal(res.z.values[row, : n - 1], z)
        assert (
            np.isnan(res.z.values[row, n - 1 :]).all()
            and not res.is_jump.values[row, n - 1 :].any()
        )
        np.testing.assert_array_equal(res.is_jump.values[row, : n - 1], z > 2)
        np.testing.assert_array_equal(steps[row, :n], np.flatnonzero(~np.isnan(x[row])) * 5)
        crit = critical_periods(da).values[row]
        want = np.abs(v) > np.percentile(np.abs(v), 90)
        np.testing.assert_array_equal(crit[: n - 1], want)
        assert crit[n - 1] == 0 and np.isnan(crit[n:]).all()
    np.testing.assert_array_equal(acceleration(da).values[1, :], np.diff(x[1], 2))
    assert velocity(da).sizes[INDEX] == 29


def test_coordination_denominator_counts_only_present_layers():
    # 3 layers present (one never critical), 1 absent; 4 records
    crit = xr.DataArray(
        [[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [np.nan] * 4],
        dims=(LAYER, INDEX),
    )
    res = coordination(crit)
    np.testing.assert_allclose(res.coordination_score.values, [2 / 3, 1 / 3, 0, 0])
    assert int(res.num_coordinated_periods) == 1
    assert float(res.max_coordination) == pytest.approx(2 / 3)
    assert float(res.mean_coordination) == pytest.approx(0.25)
    loss = xr.DataArray([4.0, 3.0, 3.5, 3.0], dims=STEP)
    # layer 0: critical at 0 (falls) and 1 (rises) → 1/2; layer 1: 1; layer 2: none → 0
    assert float(loss_correlation(crit, loss)) == pytest.approx((0.5 + 1 + 0) / 3)


def test_missing_dimension_is_reported():
    x = xr.DataArray(np.zeros(5), dims="time")
    with pytest.raises(InputError, match="step"):
        velocity(x)
    with pytest.raises(InputError, match="experiment"):
        jump_table(xr.DataArray(np.zeros((5, 2)), dims=(STEP, LAYER)))


def test_building_lazy_results_does_not_compute(real):
    lazy = real.chunk({EXPERIMENT: 1})
    with dask.config.set(scheduler=no_compute):
        results = [
            velocity(lazy[STABLE_RANK]),
            detect_jumps(lazy[STABLE_RANK], alpha=0.05, n_surrogates=9),
            coordination(critical_periods(lazy[STABLE_RANK])),
            loss_correlation(critical_periods(lazy[STABLE_RANK]), lazy[LOSS]),
            transitions(lazy[STABLE_RANK]),
        ]
    for res in results:
        first = res if isinstance(res, xr.DataArray) else next(iter(res.data_vars.values()))
        assert first.chunks is not None
    eager = detect_jumps(real[STABLE_RANK], alpha=0.05, n_surrogates=9)
    xr.testing.assert_identical(results[1].compute(), eager)


# --- kernel properties ------------------------------------------------------------------
series = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 4), st.integers(2, 40)),
    elements=st.one_of(
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), st.just(np.nan)
    ),
)


@settings(max_examples=60, deadline=None)
@given(series)
def test_compact_keeps_order_and_values(x):
    values, order, count = kern.compact(x)
    for row, ref in enumerate(reference_series(x)):
        assert count[row] == ref.size
        np.testing.assert_array_equal(values[row, : ref.size], ref)
        assert np.isnan(values[row, ref.size :]).all()
        np.testing.assert_array_equal(np.sort(order[row]), np.arange(x.shape[1]))


@settings(max_examples=60, deadline=None)
@given(series, st.floats(0, 100))
def test_nan_percentile_equals_numpy(x, q):
    got = kern.nan_percentile(x, q)
    for row, ref in enumerate(reference_series(x)):
        if ref.size == 0:
            assert np.isnan(got[row])
        else:
            assert got[row] == np.percentile(ref, q)


@settings(max_examples=60, deadline=None)
@given(series)
def test_jump_kernels_equal_per_series_reference(x):
    _, z, is_jump, magnitude, speed, direction = kern.zscore_jumps(x)
    for row, ref in enumerate(reference_series(x)):
        n = ref.size
        if n < 2:
            assert not is_jump[row].any()
            continue
        vel = np.diff(ref)
        np.testing.assert_array_equal(magnitude[row, : n - 1], np.abs(vel))
        for i in range(n - 1):
            s, e = max(0, i - 2), min(n, i + 3)
            assert speed[row, i] == abs(ref[e - 1] - ref[s]) / (e - s)
            assert direction[row, i] == (1 if vel[i] > 0 else -1)
        if vel.std() > 0:
            np.testing.assert_array_equal(z[row, : n - 1], np.abs(vel - vel.mean()) / vel.std())


@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_phase1_tables_equal_the_two_tables(backend, tmp_path):
    """One-pass ``phase1_tables`` equals jump_table + critical_period_table."""
    import ndt_store
    from ndt_store.measures.dynamics import critical_period_table, jump_table, phase1_tables
    from ndt_store.testing import write_phase1_json

    for i, layers in enumerate((["a", "b"], ["c", "d", "e"], ["a", "e"])):
        write_phase1_json(tmp_path / "src" / f"run{i}.json", n_records=60, layers=layers,
                          seed=i, jumps=[(layers[0], 30, 0.5)])  # fmt: skip
    store = ndt_store.open_store(tmp_path / "s.zarr")
    ndt_store.ingest_phase1(store, tmp_path / "src")
    ds = store.measurements()
    if backend == "numpy":
        ds = ds.load()
    jumps, periods = phase1_tables(ds, n_surrogates=0)
    pd.testing.assert_frame_equal(jumps, jump_table(ds, n_surrogates=0))
    pd.testing.assert_frame_equal(periods, critical_period_table(ds))
    assert (jumps["layer"] == "a").any() and set(periods["experiment"]) == {"run0", "run1", "run2"}
