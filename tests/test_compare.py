"""Before/after comparisons: the study's numbers from the JSON, tensor changes vs numpy."""

from __future__ import annotations

import json
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

import ndt_store
from ndt_store._dims import PHASE1_METRICS
from ndt_store.compare import compare_representations, nearest_records, phase1_changes
from ndt_store.errors import InputError
from ndt_store.moments import CriticalMoment, identify_moments

EXP = "transformer_deep_mnist"


def legacy_record(shared_phase1: Path, exp: str, step: int) -> dict:
    """The study's nearest-record rule, straight from the JSON."""
    data = json.loads((shared_phase1 / "phase1_full" / f"{exp}.json").read_text())
    ms = data["measurements"]
    return ms[min(range(len(ms)), key=lambda i: abs(ms[i]["step"] - step))]


def test_study_comparison_from_json(real_store, shared_phase1):
    moments = identify_moments(real_store, EXP, num_jumps=3, steps="index", alpha=None)
    res = compare_representations(real_store, moments[0], moments[1])
    b = legacy_record(shared_phase1, EXP, moments[0].step)
    a = legacy_record(shared_phase1, EXP, moments[1].step)
    assert (res["step_before"], res["step_after"]) == (b["step"], a["step"])
    assert res["loss_change"] == a["loss"] - b["loss"]
    assert round(res["loss_change"], 4) == 0.1298
    assert len(res["layer_changes"]) == 14
    for layer, lm in b["layer_metrics"].items():
        for metric in PHASE1_METRICS:
            before, after = lm[metric], a["layer_metrics"][layer][metric]
            got = res["metric_changes"][metric][layer]
            assert got == {
                "before": before,
                "after": after,
                "change": after - before,
                "relative_change": (after - before) / (before + 1e-10),
            }
    assert res["layer_changes"] == res["metric_changes"]["stable_rank"]


@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_phase1_changes_backends(backend):
    ds = xr.Dataset(
        {
            "stable_rank": (("step", "layer"), [[1.0, 2.0], [2.0, 2.0], [4.0, 1.0]]),
            "participation_ratio": (("step", "layer"), np.ones((3, 2))),
            "loss": ("step", [3.0, 2.0, 1.0]),
        },
        coords={"step": [0, 10, 20], "layer": ["a", "b"]},
    )
    if backend == "dask":
        ds = ds.chunk({"step": 1})
    res = phase1_changes(ds, 5, 19)  # 5 is a tie between 0 and 10: the earlier record
    assert (res["step_before"], res["step_after"]) == (0, 20)
    assert res["loss_change"] == -2.0
    assert res["layer_changes"]["a"] == {
        "before": 1.0,
        "after": 4.0,
        "change": 3.0,
        "relative_change": 3.0 / (1.0 + 1e-10),
    }
    assert res["layer_changes"]["b"]["change"] == -1.0
    assert set(res["metric_changes"]) == {"stable_rank", "participation_ratio"}


def test_nearest_records_ties_and_edges():
    assert nearest_records(np.array([0, 10, 20]), [5, 15, -3, 99]).tolist() == [0, 1, 0, 2]
    with pytest.raises(InputError):
        nearest_records(np.array([]), [1])


def test_moments_of_other_experiment_refused(real_store):
    m = CriticalMoment("cnn_deep_mnist", 5, "before_jump")
    with pytest.raises(InputError):
        compare_representations(real_store, m, CriticalMoment(EXP, 10, "during_jump"))
    with pytest.raises(InputError):
        compare_representations(real_store, 5, 10)


def cka_ref_debiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased-HSIC CKA (Song et al. 2012), the default below 1,000 samples."""

    def hsic(k: np.ndarray, m: np.ndarray) -> float:
        n = len(k)
        k, m = k - np.diag(np.diag(k)), m - np.diag(np.diag(m))
        return (np.sum(k * m) + k.sum() * m.sum() / ((n - 1) * (n - 2))
                - 2 / (n - 2) * k.sum(0) @ m.sum(0)) / (n * (n - 3))  # fmt: skip

    kx, ky = (a.reshape(len(a), -1) @ a.reshape(len(a), -1).T for a in (x, y))
    return float(hsic(kx, ky) / np.sqrt(hsic(kx, kx) * hsic(ky, ky)))


def entropy_ref(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(-1)


@pytest.fixture
def tensor_store(tmp_path: Path):
    rng = np.random.default_rng(1)
    store = ndt_store.open_store(tmp_path / "t.zarr")
    store.create_run("run", {}, [])
    labels = np.arange(12) % 3
    data = {}
    for step in (0, 10, 20):
        w = {"fc.weight": rng.normal(size=(4, 6)), "fc.bias": rng.normal(size=4)}
        act = {"fc": np.maximum(rng.normal(size=(12, 5)), 0.0)}
        logits = rng.normal(size=(12, 2, 3, 3))
        attn = {"attn": np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)}
        store.write_snapshot(
            "run", step, weights=w, activations=act, attention=attn, labels=labels, probe_hash="p"
        )
        data[step] = (w, act, attn)
    return store, data, labels


def test_tensor_changes_match_numpy(tensor_store):
    store, data, _ = tensor_store
    res = compare_representations(store, 10, 20, experiment="run")
    (wb, ab, tb), (wa, aa, ta) = data[10], data[20]
    for name in wb:
        d = wa[name] - wb[name]
        got = res["weights"][name]
        assert got["l2_norm"] == pytest.approx(np.linalg.norm(d))
        assert got["relative_change"] == pytest.approx(np.linalg.norm(d) / np.linalg.norm(wb[name]))
        cos = (wa[name] * wb[name]).sum() / (np.linalg.norm(wa[name]) * np.linalg.norm(wb[name]))
        assert got["cosine_similarity"] == pytest.approx(cos)
    act = res["activations"]["fc"]
    spars = [1 - (np.abs(x["fc"]) > 0.1).mean() for x in (ab, aa)]
    assert act["sparsity"]["before"] == pytest.approx(spars[0])
    assert act["sparsity"]["change"] == pytest.approx(spars[1] - spars[0])
    assert act["linear_cka"] == pytest.approx(cka_ref_debiased(ab["fc"], aa["fc"]))
    assert "selectivity" in act
    head_b = entropy_ref(tb["attn"]).mean(axis=(0, 2))
    head_a = entropy_ref(ta["attn"]).mean(axis=(0, 2))
    att = res["attention"]["attn"]
    for h in range(2):
        assert att["head_entropy"][str(h)]["before"] == pytest.approx(head_b[h])
        assert att["head_entropy"][str(h)]["change"] == pytest.approx(head_a[h] - head_b[h])
    assert att["specialization_index"]["after"] == pytest.approx(head_a.max() - head_a.min())
    json.dumps(res, allow_nan=False)


def test_tensor_changes_read_only_two_steps(tensor_store, monkeypatch):
    """Comparing 10 → 20 asks the store for those two weight steps only, computes once."""
    store, _, _ = tensor_store
    calls = []
    real_compute = dask.compute

    def counting(*args, **kwargs):
        calls.append(len(args))
        return real_compute(*args, **kwargs)

    monkeypatch.setattr("ndt_store.compare.dask.compute", counting)
    real_weights = store.weights

    def weights(experiment, *, steps=None):
        assert steps is not None and sorted(steps) == [10, 20]
        return real_weights(experiment, steps=steps)

    monkeypatch.setattr(store, "weights", weights)
    res = compare_representations(store, 10, 20, experiment="run")
    assert len(calls) == 1  # one read (compute) for all tensor kinds
    assert set(res) >= {"weights", "activations", "attention"}


def test_no_tensors_without_snapshots_at_both_steps(tensor_store):
    store, _, _ = tensor_store
    res = compare_representations(store, 10, 15, experiment="run")
    assert "weights" not in res and "attention" not in res


def test_tensor_changes_of_a_step_with_itself_is_empty(tmp_path):
    import numpy as np

    import ndt_store
    from ndt_store.compare import tensor_changes

    store = ndt_store.open_store(tmp_path / "s.zarr")
    ndt_store.ingest_state_dict(store, "r", 0, {"w": np.ones((2, 3))})
    ndt_store.ingest_state_dict(store, "r", 5, {"w": np.zeros((2, 3))})
    assert tensor_changes(store, "r", 0, 0) == {}
    got = tensor_changes(store, "r", 0, 5)["weights"]["w"]["l2_norm"]
    assert got == np.sqrt(6.0)


def test_pairs_from_loaded_snapshots_equal_pairs_read_from_the_store(tensor_store, monkeypatch):
    from ndt_store.compare import load_snapshots

    store, _, _ = tensor_store
    loaded = load_snapshots(store, "run")
    assert loaded is not None and set(loaded) == {"weights", "activations", "attention"}
    direct = compare_representations(store, 10, 20, experiment="run")

    def no_reads(*args, **kwargs):
        raise AssertionError("the loaded tensors are used, nothing is read")

    for method in ("weights", "activations", "attention"):
        monkeypatch.setattr(store, method, no_reads)
    again = compare_representations(store, 10, 20, experiment="run", loaded=loaded)
    assert again == direct
    monkeypatch.undo()
    assert load_snapshots(store, "run", max_bytes=1) is None  # too big: compare lazily


def test_many_pairs_at_once_equal_pair_by_pair(tensor_store):
    from ndt_store.compare import load_snapshots, tensor_changes, tensor_changes_many

    store, _, _ = tensor_store
    loaded = load_snapshots(store, "run")
    steps = store.snapshot_steps("run")
    pairs = [(steps[0], steps[-1]), (steps[-1], steps[0]), (steps[0], steps[0]), (10, 15)]
    many = tensor_changes_many(store, "run", pairs, loaded)
    assert set(many) == set(pairs)
    for pair in pairs:  # same kinds, same values (a pair with itself: nothing)
        assert many[pair] == tensor_changes(store, "run", *pair), pair
    assert set(many[(steps[0], steps[-1])]) == {"weights", "activations", "attention"}
