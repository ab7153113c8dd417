"""The documented Phase 2 facade: the study's self-test numbers on a legacy tree, re-open, steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ndt_store.errors import NdtStoreError
from ndt_store.ingest.tables import LEGACY_JUMPS, LEGACY_PERIODS
from ndt_store.legacy.infrastructure import (
    AnalysisResult,
    BeforeAfterComparison,
    CheckpointManager,
    CriticalMoment,
    Phase2Infrastructure,
)
from ndt_store.testing import tree_snapshot

EXP = "transformer_deep_mnist"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Legacy stores go to a per-test cache folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("NDT_STORE_CACHE", str(folder))
    return folder


def cached_store(cache: Path) -> Path:
    (found,) = cache.glob("*.zarr")
    return found


@pytest.fixture
def legacy_tree(shared_phase1: Path, tmp_path: Path) -> Path:
    """The study's experiments directory layout, built from copies in tmp."""
    root = tmp_path / "experiments"
    json_dir = root / "new" / "results" / "phase1_full"
    json_dir.mkdir(parents=True)
    for f in (shared_phase1 / "phase1_full").glob("*.json"):
        shutil.copy(f, json_dir / f.name)
    for name, target in (
        ("all_jumps_detailed.csv", LEGACY_JUMPS),
        ("critical_periods_detailed.csv", LEGACY_PERIODS),
    ):
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_phase1 / name, root / target)
    return root


def study_reference(root: Path) -> dict:
    """The study's self-test computed the study's way: csv + json, no ndt_store."""
    jumps = pd.read_csv(root / LEGACY_JUMPS).to_dict("records")
    exp_jumps = [j for j in jumps if j["experiment"] == EXP]
    top = sorted(exp_jumps, key=lambda j: j.get("magnitude", 0), reverse=True)[:3]
    steps = []
    for j in top:
        steps += [max(0, j["step"] - 10), j["step"], j["step"] + 10]
    data = json.loads((root / "new/results/phase1_full" / f"{EXP}.json").read_text())
    ms = data["measurements"]

    def near(step: int) -> dict:
        return ms[min(range(len(ms)), key=lambda i: abs(ms[i]["step"] - step))]

    b, a = near(steps[0]), near(steps[1])
    return {"num_jumps": len(exp_jumps), "steps": steps, "before": b, "after": a}


def test_study_self_test(legacy_tree, capsys, cache):
    untouched = tree_snapshot(legacy_tree)
    infra = Phase2Infrastructure(legacy_tree)
    ref = study_reference(legacy_tree)
    summary = infra.get_experiment_summary(EXP)
    assert summary["num_jumps"] == 174 == ref["num_jumps"]
    moments = infra.identify_moments(EXP, num_jumps=3)
    assert len(moments) == 9
    assert [m.step for m in moments] == ref["steps"]
    result = infra.compare_representations(moments[0], moments[1])
    assert isinstance(result, AnalysisResult)
    assert result.moment == "before_jump_to_during_jump"
    m = result.measurements
    assert f"{m['loss_change']:.4f}" == "0.1298"
    assert m["loss_change"] == ref["after"]["loss"] - ref["before"]["loss"]
    assert len(m["layer_changes"]) == 14
    for layer, lm in ref["before"]["layer_metrics"].items():
        after = ref["after"]["layer_metrics"][layer]["stable_rank"]
        before = lm["stable_rank"]
        assert m["layer_changes"][layer] == {
            "before": before,
            "after": after,
            "change": after - before,
            "relative_change": (after - before) / (before + 1e-10),
        }
    assert (m["step_before"], m["step_after"]) == (ref["before"]["step"], ref["after"]["step"])
    # the store lives in the cache folder; the experiments folder is untouched
    assert cached_store(cache).name.startswith("experiments-")
    assert tree_snapshot(legacy_tree) == untouched


def test_failed_ingest_leaves_no_store(tmp_path, cache):
    """A directory whose JSON is broken: an error, and no store left behind anywhere."""
    root = tmp_path / "bad"
    (root / "new/results/phase1_full").mkdir(parents=True)
    (root / "new/results/phase1_full/run.json").write_text("not json")
    with pytest.raises(NdtStoreError):
        Phase2Infrastructure(root)
    assert not list(cache.glob("*.zarr")) if cache.exists() else True
    assert [p.name for p in root.iterdir()] == ["new"]


def test_cache_dir_argument(legacy_tree, tmp_path):
    infra = Phase2Infrastructure(legacy_tree, cache_dir=tmp_path / "mine")
    assert Path(str(infra.store.location)).parent == tmp_path / "mine"


def test_reopen_does_not_reingest(legacy_tree, cache):
    Phase2Infrastructure(legacy_tree)
    before = tree_snapshot(cached_store(cache))
    (legacy_tree / "new/results/phase1_full" / f"{EXP}.json").write_text("not json")
    infra = Phase2Infrastructure(legacy_tree)  # would fail if the JSON were read again
    assert tree_snapshot(cached_store(cache)) == before
    assert EXP in infra.store.experiments()


def test_custom_store_path_and_store_object(legacy_tree, tmp_path, real_store):
    infra = Phase2Infrastructure(legacy_tree, store_path=tmp_path / "elsewhere.zarr")
    assert (tmp_path / "elsewhere.zarr").is_dir()
    assert not (legacy_tree / "ndt_store.zarr").exists()
    assert len(infra.jump_data) == 237
    from_store = Phase2Infrastructure(real_store)
    assert from_store.get_experiment_summary(EXP)["num_jumps"] == 174
    assert Phase2Infrastructure(tmp_path / "elsewhere.zarr").store.experiments() == sorted(
        infra.store.experiments()
    )


def test_train_steps_next_to_study_convention(legacy_tree):
    infra = Phase2Infrastructure(legacy_tree)
    data = json.loads((legacy_tree / "new/results/phase1_full" / f"{EXP}.json").read_text())
    steps = [r["step"] for r in data["measurements"]]
    study = infra.identify_moments(EXP, num_jumps=2)
    train = infra.identify_moments(EXP, num_jumps=2, steps="train")
    assert [m.index for m in study] == [m.step for m in study]
    assert [m.train_step for m in study] == [steps[i] for i in (m.index for m in study)]
    assert [m.step for m in train] == [steps[m.index] for m in train]
    result = infra.compare_representations(train[0], train[1])
    assert result.measurements["step_before"] == train[0].step


def test_checkpoint_manager(legacy_tree, shared_phase1, capsys):
    cm = CheckpointManager(legacy_tree)
    data = json.loads((shared_phase1 / "phase1_full" / f"{EXP}.json").read_text())
    assert cm.load_measurements_at_step(EXP, 333) == data["measurements"][67]
    assert cm.load_measurements_at_step("nope", 5) is None
    assert "nope" in capsys.readouterr().out
    jumps = pd.read_csv(shared_phase1 / "all_jumps_detailed.csv").to_dict("records")
    moments = cm.identify_critical_moments(EXP, jumps, num_moments=1)
    assert [m.moment_type for m in moments] == ["before_jump", "during_jump", "after_jump"]
    assert moments[1] == CriticalMoment(EXP, 343, "during_jump", moments[1].jump_info)
    assert cm.identify_critical_moments("nope", jumps) == []
    assert "No jumps found for nope" in capsys.readouterr().out
    assert cm.get_checkpoint_path(EXP, 100) is None
    ckpt = legacy_tree / "checkpoints" / EXP / "step_100.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert cm.get_checkpoint_path(EXP, 100) == ckpt
    comparison = BeforeAfterComparison(cm)
    assert comparison.compare_moments(CriticalMoment("nope", 0, "a"), moments[0]) is None


def test_summary_critical_periods_row(legacy_tree, shared_phase1):
    infra = Phase2Infrastructure(legacy_tree)
    row = pd.read_csv(shared_phase1 / "critical_periods_detailed.csv")
    row = row[row.experiment == EXP].to_dict("records")[0]
    assert infra.get_experiment_summary(EXP)["critical_periods"] == row
    published = pd.read_csv(shared_phase1 / "critical_periods_detailed.csv")
    assert sorted(infra.critical_periods["experiment"]) == sorted(published["experiment"])


def test_without_published_tables_jumps_are_computed(legacy_tree, capsys):
    shutil.rmtree(legacy_tree / "mechanistic_interpretability")
    infra = Phase2Infrastructure(legacy_tree)
    assert infra.jump_data == [] and infra.critical_periods.empty
    assert "Jump data not found" in capsys.readouterr().out
    assert infra.get_experiment_summary(EXP)["num_jumps"] == 174
    assert len(infra.identify_moments(EXP, num_jumps=3)) == 9
