"""Critical moments: published jumps reproduced, training steps from the JSON, periods vs numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ndt_store
from ndt_store.errors import InputError, NotFoundError
from ndt_store.moments import (
    CriticalMoment,
    experiment_summary,
    identify_moments,
    jump_moments,
    period_moments,
    store_jumps,
    store_periods,
)
from ndt_store.testing import write_phase1_json

EXP = "transformer_deep_mnist"


def published(shared_phase1: Path) -> pd.DataFrame:
    return pd.read_csv(shared_phase1 / "all_jumps_detailed.csv")


def json_steps(shared_phase1: Path, exp: str) -> list[int]:
    data = json.loads((shared_phase1 / "phase1_full" / f"{exp}.json").read_text())
    return [r["step"] for r in data["measurements"]]


@pytest.fixture
def planted(tmp_path: Path) -> ndt_store.Store:
    store = ndt_store.open_store(tmp_path / "s.zarr")
    path = write_phase1_json(
        tmp_path / "run.json", n_records=80, jumps=[("fc2", 30, 5.0), ("fc1", 50, -2.0)]
    )
    ndt_store.ingest_phase1(store, path)
    return store


def test_index_mode_reproduces_study(real_store, shared_phase1):
    moments = identify_moments(real_store, EXP, num_jumps=3, steps="index", alpha=None)
    rows = published(shared_phase1)
    rows = rows[rows.experiment == EXP].to_dict("records")
    rows.sort(key=lambda r: r["magnitude"], reverse=True)  # the study's stable sort
    steps = json_steps(shared_phase1, EXP)
    expected = []
    for r in rows[:3]:
        s = r["step"]
        expected += [(max(0, s - 10), "before_jump"), (s, "during_jump"), (s + 10, "after_jump")]
    assert [(m.step, m.moment_type) for m in moments] == expected
    assert all(m.jump_info == rows[k // 3] for k, m in enumerate(moments))
    assert [m.train_step for m in moments] == [steps[s] for s, _ in expected]


def test_train_mode_uses_training_steps(real_store, shared_phase1):
    steps = json_steps(shared_phase1, EXP)
    idx = identify_moments(real_store, EXP, num_jumps=3, steps="index", alpha=None)
    train = identify_moments(real_store, EXP, num_jumps=3, steps="train", alpha=None)
    assert [m.index for m in train] == [min(m.index, len(steps) - 1) for m in idx]
    assert [m.step for m in train] == [steps[m.index] for m in train]
    assert [m.train_step for m in train] == [m.step for m in train]


def test_planted_jump_is_top_moment(planted):
    moments = identify_moments(planted, "run", num_jumps=2, offset=5)
    during = [m for m in moments if m.moment_type == "during_jump"]
    assert [(m.index, m.step, m.jump_info["layer"]) for m in during] == [
        (29, 145, "fc2"),
        (49, 245, "fc1"),
    ]
    assert [m.index for m in moments[:3]] == [24, 29, 34]


def test_offset_clipped_at_run_end(planted):
    moments = identify_moments(planted, "run", num_jumps=1, offset=500)
    assert [m.index for m in moments] == [0, 29, 79]
    assert moments[-1].step == 395


def test_alpha_keeps_significant_planted_jumps(planted):
    moments = identify_moments(planted, "run", num_jumps=10, alpha=0.05)
    layers = {(m.jump_info["layer"], m.index) for m in moments if m.moment_type == "during_jump"}
    assert ("fc2", 29) in layers and ("fc1", 49) in layers
    assert all(m.jump_info["p_value"] <= 0.05 for m in moments)


def test_table_source_and_alpha_filter():
    table = pd.DataFrame(
        {
            "experiment": ["r", "r", "r", "x"],
            "step": [5, 40, 7, 1],
            "magnitude": [2.0, 1.0, 3.0, 9.0],
            "p_value": [0.5, 0.01, 0.001, 0.0],
        }
    )
    got = jump_moments(table, "r", num_jumps=5, steps="index", alpha=0.05)
    assert [m.step for m in got if m.moment_type == "during_jump"] == [7, 40]
    with pytest.raises(InputError, match="store"):
        jump_moments(table, "r", steps="train")
    for bad in (0.0, 1.0, 2.0, -1.0):
        with pytest.raises(InputError, match="alpha"):
            jump_moments(table, "r", steps="index", alpha=bad)


def test_ties_keep_table_order():
    table = pd.DataFrame({"experiment": ["r"] * 3, "step": [9, 4, 6], "magnitude": [1.0] * 3})
    got = jump_moments(table, "r", num_jumps=3, steps="index", alpha=None)
    assert [m.step for m in got if m.moment_type == "during_jump"] == [9, 4, 6]
    with pytest.raises(InputError, match="p_value"):  # significance is the default
        jump_moments(table, "r", steps="index")


def test_unknown_experiment(real_store):
    with pytest.raises(NotFoundError, match="nope"):
        identify_moments(real_store, "nope")


def ref_periods(x: np.ndarray, loss: np.ndarray) -> list[tuple[int, int, float, float]]:
    """Coordinated periods in plain numpy: (start, end, peak score, loss share)."""
    d = np.abs(np.diff(x, axis=0))
    crit = np.zeros(x.shape, dtype=bool)
    crit[:-1] = d > np.percentile(d, 90, axis=0)
    score = crit.mean(axis=1)
    falling = np.zeros(x.shape[0], dtype=bool)
    falling[:-1] = np.diff(loss) < 0
    out = []
    i = 0
    while i < score.size:
        if score[i] >= 0.5:
            j = i
            while j + 1 < score.size and score[j + 1] >= 0.5:
                j += 1
            hit = crit[i : j + 1]
            share = (hit & falling[i : j + 1, None]).sum() / hit.sum()
            out.append((i, j, score[i : j + 1].max(), share))
            i = j + 1
        else:
            i += 1
    return sorted(out, key=lambda p: (-p[2], -p[3], p[0]))


@pytest.mark.parametrize("exp", ["transformer_deep_mnist", "mlp_narrow_mnist"])
def test_period_moments_match_numpy(real_store, shared_phase1, exp):
    data = json.loads((shared_phase1 / "phase1_full" / f"{exp}.json").read_text())
    layers = list(data["measurements"][0]["layer_metrics"])
    x = np.array(
        [[r["layer_metrics"][k]["stable_rank"] for k in layers] for r in data["measurements"]]
    )
    loss = np.array([r["loss"] for r in data["measurements"]])
    ref = ref_periods(x, loss)[:4]
    got = period_moments(real_store, exp, num_periods=4)
    assert [(m.jump_info["start_index"], m.jump_info["end_index"]) for m in got] == [
        (a, b) for a, b, _, _ in ref
    ]
    np.testing.assert_allclose([m.jump_info["peak_coordination"] for m in got], [p[2] for p in ref])
    np.testing.assert_allclose([m.jump_info["loss_correlation"] for m in got], [p[3] for p in ref])
    assert all(m.moment_type == "critical_period" for m in got)
    steps = [r["step"] for r in data["measurements"]]
    assert [m.step for m in got] == [steps[m.jump_info["peak_index"]] for m in got]
    strong = period_moments(real_store, exp, num_periods=50, min_loss_correlation=0.99)
    assert all(m.jump_info["loss_correlation"] >= 0.99 for m in strong)
    assert len(strong) == sum(p[3] >= 0.99 for p in ref_periods(x, loss))


def test_identify_moments_with_periods(real_store):
    got = identify_moments(real_store, EXP, num_jumps=1, num_periods=2, alpha=None)
    assert [m.moment_type for m in got] == [
        "before_jump",
        "during_jump",
        "after_jump",
        "critical_period",
        "critical_period",
    ]


def test_store_jumps_reproduce_published(real_store, shared_phase1):
    pub = published(shared_phase1).sort_values(["experiment", "layer", "step"], kind="stable")
    got = store_jumps(real_store, phase="index")
    assert len(got) == len(pub)
    for col in ("step", "layer", "experiment", "direction", "phase_category", "cluster"):
        assert got[col].tolist() == pub[col].tolist(), col
    np.testing.assert_allclose(got["magnitude"], pub["magnitude"], rtol=1e-9)
    assert (got["index"] == got["step"]).all()
    assert {"train_step", "p_value", "significant"} <= set(got.columns)


def test_store_periods_reproduce_published(real_store, shared_phase1):
    pub = pd.read_csv(shared_phase1 / "critical_periods_detailed.csv").sort_values("experiment")
    got = store_periods(real_store)
    assert got["experiment"].tolist() == pub["experiment"].tolist()
    for col in pub.columns[3:]:
        np.testing.assert_allclose(got[col], pub[col], rtol=1e-9, err_msg=col)


def test_experiment_summary(real_store, shared_phase1):
    rows = published(shared_phase1)
    rows = rows[rows.experiment == EXP]
    got = experiment_summary(real_store, EXP)
    assert got["num_jumps"] == 174 == len(rows)
    assert got["jump_summary"]["mean_magnitude"] == pytest.approx(np.mean(rows.magnitude))
    assert got["jump_summary"]["phases"] == rows.phase_category.tolist()
    assert got["critical_periods"]["num_coordinated_periods"] == 19


def test_moment_dataclass_matches_study_fields():
    m = CriticalMoment("run", 5, "before_jump")
    assert (m.experiment_name, m.step, m.moment_type, m.jump_info) == (
        "run",
        5,
        "before_jump",
        None,
    )
    assert m == CriticalMoment("run", 5, "before_jump", index=1, train_step=5)


def test_degenerate_metric_warns_and_gives_no_moments(real_store):
    """mlp_narrow_mnist's stable rank spans 1e-12: warned as degenerate, never analysed."""
    from ndt_store.measures.dynamics import DegenerateMetricWarning

    with pytest.warns(DegenerateMetricWarning, match="stable_rank is degenerate") as rec:
        got = identify_moments(real_store, "mlp_narrow_mnist", num_jumps=3)
    assert got == []
    assert "participation_ratio" in str(rec[0].message)
    assert "effective_rank_90" in str(rec[0].message)


def test_metric_participation_ratio_gives_significant_moments(real_store):
    got = identify_moments(
        real_store, "mlp_narrow_mnist", num_jumps=3, metric="participation_ratio"
    )
    during = [m for m in got if m.moment_type == "during_jump"]
    assert during, "participation ratio moves: some jump is significant"
    assert all(m.jump_info["significant"] and m.jump_info["p_value"] <= 0.05 for m in during)
    table = store_jumps(real_store, ["mlp_narrow_mnist"], metric="participation_ratio")
    row = table[(table["index"] == during[0].index) & (table.layer == during[0].jump_info["layer"])]
    assert len(row) == 1 and row.magnitude.iloc[0] == pytest.approx(
        during[0].jump_info["magnitude"]
    )
    with pytest.raises(InputError, match="no metric 'nope'"):
        identify_moments(real_store, "mlp_narrow_mnist", metric="nope")


def test_include_nonsignificant_labels_them(planted):
    sig = identify_moments(planted, "run", num_jumps=50, offset=1)
    every = identify_moments(planted, "run", num_jumps=50, offset=1, include_nonsignificant=True)
    flags = [m.jump_info["significant"] for m in every if m.moment_type == "during_jump"]
    assert len(every) > len(sig) and not all(flags) and any(flags)
    # significant jumps come first
    assert flags == sorted(flags, reverse=True)


def test_store_periods_metric(real_store):
    from ndt_store.measures.dynamics import critical_period_table

    got = store_periods(real_store, ["mlp_narrow_mnist"], metric="participation_ratio")
    ds = real_store.measurements(["mlp_narrow_mnist"]).compute()
    want = critical_period_table(ds, variable="participation_ratio")
    pd.testing.assert_frame_equal(got, want)
    assert not got.equals(store_periods(real_store, ["mlp_narrow_mnist"]))
