"""Issue: the store — Phase 1 ingest, labeled queries, export, against the real JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ndt_store
from ndt_store import _dims as D
from ndt_store.testing import make_phase1_obj, raise_if_computed, write_phase1_json

EXPERIMENTS = ("cnn_deep_mnist", "mlp_narrow_mnist", "transformer_deep_mnist")


def _json(shared_phase1: Path, name: str) -> dict:
    return json.loads((shared_phase1 / "phase1_full" / f"{name}.json").read_text())


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_values_match_json(real_store, shared_phase1, name):
    obj = _json(shared_phase1, name)
    ds = real_store.phase1(name)
    records = obj["measurements"]
    assert ds.sizes[D.STEP] == len(records)
    assert list(ds[D.STEP].values) == [r["step"] for r in records]
    assert list(ds[D.LAYER].values) == list(records[0]["layer_metrics"])  # original order
    rng = np.random.default_rng(0)
    for i in [0, 1, 57, len(records) - 1, *rng.integers(0, len(records), 5)]:
        rec = records[int(i)]
        assert ds[D.LOSS].values[i] == rec["loss"]  # float-exact
        assert ds[D.GRAD_NORM].values[i] == rec["grad_norm"]
        assert ds[D.EPOCH].values[i] == rec["epoch"]
        for layer, metrics in rec["layer_metrics"].items():
            for metric in D.PHASE1_METRICS:
                assert ds[metric].sel(layer=layer).values[i] == metrics[metric]
    meta = real_store.metadata(name)
    assert meta[D.ARCH_NAME] == obj["arch_name"]
    assert meta[D.DATASET] == obj["dataset_name"]
    assert meta[D.NUM_STEPS] == obj["num_steps"]
    assert meta[D.FINAL_ACCURACY] == obj["final_accuracy"]
    assert meta[D.ARCHITECTURE_PARAMS] == obj["architecture_params"]


def test_cross_experiment_union_of_layers(real_store, shared_phase1):
    ds = real_store.measurements()
    assert sorted(ds[D.EXPERIMENT].values) == sorted(EXPERIMENTS)
    union = set()
    for name in EXPERIMENTS:
        union |= set(_json(shared_phase1, name)["measurements"][0]["layer_metrics"])
    assert set(ds[D.LAYER].values) == union
    # lazy, dask-backed
    assert ds[D.STABLE_RANK].chunks is not None
    with raise_if_computed():
        sel = ds[D.STABLE_RANK].sel(experiment="mlp_narrow_mnist", layer="network.0")
    obj = _json(shared_phase1, "mlp_narrow_mnist")
    expected = [r["layer_metrics"]["network.0"]["stable_rank"] for r in obj["measurements"]]
    np.testing.assert_array_equal(sel.values, expected)
    # a layer the MLP lacks is NaN for it, present for the CNN
    cnn_only = "conv_layers.0"
    assert np.isnan(ds[D.STABLE_RANK].sel(experiment="mlp_narrow_mnist", layer=cnn_only)).all()
    assert not np.isnan(ds[D.STABLE_RANK].sel(experiment="cnn_deep_mnist", layer=cnn_only)).any()
    # depth order of each experiment's own layers is a coordinate
    for name in EXPERIMENTS:
        own = list(_json(shared_phase1, name)["measurements"][0]["layer_metrics"])
        pos = ds[D.LAYER_POSITION].sel(experiment=name)
        assert [int(pos.sel(layer=layer)) for layer in own] == list(range(len(own)))
        assert int(pos.isnull().sum()) == ds.sizes[D.LAYER] - len(own)
    # metadata coordinates allow where/groupby
    assert set(ds[D.ARCH_NAME].values) == {"cnn_deep", "mlp_narrow", "transformer_deep"}
    cnn = ds.where(ds[D.ARCH_NAME] == "cnn_deep", drop=True)
    assert list(cnn[D.EXPERIMENT].values) == ["cnn_deep_mnist"]
    assert set(ds.groupby(D.DATASET).groups) == {"mnist"}


def test_nearest_step(real_store, shared_phase1):
    ds = real_store.measurements()
    point = ds.sel(step=1003, method="nearest")
    assert int(point[D.STEP]) == 1005
    obj = _json(shared_phase1, "cnn_deep_mnist")
    rec = min(obj["measurements"], key=lambda r: abs(r["step"] - 1003))
    got = point[D.STABLE_RANK].sel(experiment="cnn_deep_mnist", layer="conv_layers.0").values
    assert got == rec["layer_metrics"]["conv_layers.0"]["stable_rank"]


@pytest.mark.parametrize("step", [0, 3, 1002, 1003, 1997, 5000, -7])
def test_record_nearest_contract(real_store, shared_phase1, step):
    obj = _json(shared_phase1, "transformer_deep_mnist")
    records = obj["measurements"]
    expected = records[min(range(len(records)), key=lambda i: abs(records[i]["step"] - step))]
    assert real_store.record("transformer_deep_mnist", step) == expected


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_export_round_trip(real_store, shared_phase1, name):
    assert ndt_store.export_phase1_json(real_store, name) == _json(shared_phase1, name)


def test_cli_export_round_trip(real_store, shared_phase1, tmp_path, capsys):
    from ndt_store.cli import main

    out = tmp_path / "mlp.json"
    assert (
        main(["export", "--store", real_store.location, "-e", "mlp_narrow_mnist", "-o", str(out)])
        == 0
    )
    assert json.loads(out.read_text()) == _json(shared_phase1, "mlp_narrow_mnist")


def test_published_tables_stored(real_store, shared_phase1):
    import pandas as pd

    jumps = real_store.table("published_jumps")
    ref = pd.read_csv(shared_phase1 / "all_jumps_detailed.csv")
    assert list(jumps.columns) == list(ref.columns)
    np.testing.assert_array_equal(jumps["magnitude"].to_numpy(), ref["magnitude"].to_numpy())
    assert list(jumps["layer"]) == list(ref["layer"])
    periods = real_store.table("published_critical_periods")
    assert periods["loss_correlation"].tolist() == ref_periods(shared_phase1)


def ref_periods(shared_phase1):
    import pandas as pd

    return pd.read_csv(shared_phase1 / "critical_periods_detailed.csv")["loss_correlation"].tolist()


def test_unlike_layer_set_text_dataset(tmp_path):
    layers = [f"encoder.block{i}.ffn" for i in range(16)]
    path = write_phase1_json(
        tmp_path / "src" / "mlp_verydeep_text.json",
        n_records=120,
        interval=10,
        layers=layers,
        dataset="ag_news",
        arch_name="mlp_verydeep_15",
    )
    write_phase1_json(
        tmp_path / "src" / "small.json", n_records=50, interval=5, layers=["a", "b", "c"]
    )
    store = ndt_store.open_store(tmp_path / "s.zarr")
    assert ndt_store.ingest_phase1(store, tmp_path / "src") == {
        "mlp_verydeep_text": "created",
        "small": "created",
    }
    ds = store.phase1("mlp_verydeep_text")
    assert list(ds[D.LAYER].values) == layers
    assert ds.attrs[D.DATASET] == "ag_news"
    obj = json.loads(path.read_text())
    assert ndt_store.export_phase1_json(store, "mlp_verydeep_text") == obj
    cross = store.measurements()
    assert cross.sizes[D.LAYER] == 19
    # union of step grids (every 10 and every 5 steps)
    assert cross.sizes[D.STEP] == len({*range(0, 1200, 10), *range(0, 250, 5)})
    small = cross[D.STABLE_RANK].sel(experiment="small").dropna(D.STEP, how="all")
    assert small.sizes[D.STEP] == 50
    assert np.isnan(cross[D.STABLE_RANK].sel(experiment="small", layer=layers[0])).all()


def test_reingest_identical_is_noop_and_different_is_error(tmp_path):
    src = write_phase1_json(tmp_path / "run.json", n_records=30)
    store = ndt_store.open_store(tmp_path / "s.zarr")
    assert ndt_store.ingest_phase1(store, src) == {"run": "created"}
    before = ndt_store.testing.tree_snapshot(tmp_path / "s.zarr")
    assert ndt_store.ingest_phase1(store, src) == {"run": "unchanged"}
    assert ndt_store.testing.tree_snapshot(tmp_path / "s.zarr") == before
    obj = make_phase1_obj(n_records=30, seed=1)
    src.write_text(json.dumps(obj))
    with pytest.raises(ndt_store.ExperimentExistsError, match="overwrite"):
        ndt_store.ingest_phase1(store, src)
    assert ndt_store.testing.tree_snapshot(tmp_path / "s.zarr") == before
    assert ndt_store.ingest_phase1(store, src, overwrite=True) == {"run": "replaced"}
    assert ndt_store.export_phase1_json(store, "run") == obj
    reopened = ndt_store.open_store(tmp_path / "s.zarr", mode="r")
    assert ndt_store.export_phase1_json(reopened, "run") == obj


def test_delete_experiment(tmp_path):
    store = ndt_store.open_store(tmp_path / "s.zarr")
    ndt_store.ingest_phase1(store, write_phase1_json(tmp_path / "a.json", n_records=10))
    ndt_store.ingest_phase1(store, write_phase1_json(tmp_path / "b.json", n_records=10))
    assert store.experiments() == ["a", "b"]
    store.delete_experiment("a")
    assert store.experiments() == ["b"]
    assert ndt_store.open_store(tmp_path / "s.zarr", mode="r").experiments() == ["b"]
    assert list(store.measurements()[D.EXPERIMENT].values) == ["b"]
    with pytest.raises(ndt_store.NotFoundError):
        store.phase1("a")


def test_legacy_tree_source(tmp_path, shared_phase1):
    tree = tmp_path / "experiments" / "new" / "results" / "phase1_full"
    tree.mkdir(parents=True)
    (tree / "mlp_narrow_mnist.json").symlink_to(
        shared_phase1 / "phase1_full" / "mlp_narrow_mnist.json"
    )
    store = ndt_store.open_store(tmp_path / "s.zarr")
    assert ndt_store.ingest_phase1(store, tmp_path / "experiments") == {
        "mlp_narrow_mnist": "created"
    }
