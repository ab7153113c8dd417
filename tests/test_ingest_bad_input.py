"""Every bad Phase 1 input gets a clear error and leaves the store exactly as before."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import ndt_store
from ndt_store.testing import make_phase1_obj, tree_snapshot, write_phase1_json

GOOD = make_phase1_obj(n_records=12, layers=("fc1", "fc2"))


def _mutate(fn: Callable[[dict], None]) -> dict:
    obj = copy.deepcopy(GOOD)
    fn(obj)
    return obj


def _del(path: list) -> Callable[[dict], None]:
    def fn(obj: dict) -> None:
        target = obj
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return fn


def _set(path: list, value) -> Callable[[dict], None]:
    def fn(obj: dict) -> None:
        target = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return fn


CASES = {
    # name: (mutation, pattern expected in the message)
    "missing measurements": (_del(["measurements"]), r"field 'measurements'.*missing"),
    "missing arch_name": (_del(["arch_name"]), r"field 'arch_name'"),
    "missing loss": (_del(["measurements", 3, "loss"]), r"record 3.*field 'loss'.*missing"),
    "missing metric": (
        _del(["measurements", 5, "layer_metrics", "fc2", "stable_rank"]),
        r"record 5 \(step 25\).*layer_metrics\.fc2\.stable_rank",
    ),
    "layer missing in a record": (
        _del(["measurements", 7, "layer_metrics", "fc1"]),
        r"record 7 \(step 35\).*missing layers \['fc1'\]",
    ),
    "extra layer in a record": (
        _set(
            ["measurements", 2, "layer_metrics", "fc9"],
            GOOD["measurements"][2]["layer_metrics"]["fc1"],
        ),
        r"record 2.*unexpected layers \['fc9'\]",
    ),
    "duplicate step": (_set(["measurements", 4, "step"], 15), r"record 4.*duplicate step"),
    "decreasing step": (_set(["measurements", 4, "step"], 3), r"record 4.*decreasing step"),
    "string metric": (
        _set(["measurements", 1, "layer_metrics", "fc1", "participation_ratio"], "1.5"),
        r"record 1.*layer_metrics\.fc1\.participation_ratio.*expected a number.*'1\.5'",
    ),
    "bool loss": (_set(["measurements", 6, "loss"], True), r"record 6.*field 'loss'.*number"),
    "float step": (_set(["measurements", 6, "step"], 30.5), r"record 6.*field 'step'.*integer"),
    "list layer_metrics": (
        _set(["measurements", 2, "layer_metrics"], []),
        r"record 2.*layer_metrics",
    ),
    "nan metric": (
        _set(["measurements", 8, "layer_metrics", "fc2", "nuclear_norm_ratio"], float("nan")),
        r"record 8.*nuclear_norm_ratio.*non-finite.*allow_nonfinite",
    ),
    "infinite grad_norm": (
        _set(["measurements", 9, "grad_norm"], float("inf")),
        r"record 9.*grad_norm.*non-finite",
    ),
    "escaping layer name": (
        lambda o: [
            r["layer_metrics"].__setitem__("../evil", r["layer_metrics"].pop("fc1"))
            for r in o["measurements"]
        ],
        r"layer name '\.\./evil'",
    ),
    "empty measurements": (_set(["measurements"], []), r"field 'measurements'.*non-empty"),
    "top level list": (lambda o: None, None),  # replaced below
}


@pytest.fixture
def populated(tmp_path: Path):
    store_path = tmp_path / "s.zarr"
    store = ndt_store.open_store(store_path)
    ndt_store.ingest_phase1(store, write_phase1_json(tmp_path / "keep.json", n_records=20))
    store.measurements()  # materialise the cross-experiment cache too
    return store, store_path


@pytest.mark.parametrize("case", [c for c in CASES if c != "top level list"])
def test_bad_json_rejected_store_unchanged(populated, tmp_path, case):
    store, store_path = populated
    mutate, pattern = CASES[case]
    bad = tmp_path / "bad_run.json"
    bad.write_text(json.dumps(_mutate(mutate), allow_nan=True))
    before = tree_snapshot(store_path)
    with pytest.raises(ndt_store.InputError) as info:
        ndt_store.ingest_phase1(store, bad)
    message = str(info.value)
    assert str(bad) in message
    assert re.search(pattern, message), message
    assert tree_snapshot(store_path) == before
    assert ndt_store.open_store(store_path, mode="r").experiments() == ["keep"]


def test_malformed_json(populated, tmp_path):
    store, store_path = populated
    bad = tmp_path / "broken.json"
    bad.write_text('{"measurements": [ {"step": 0, ')
    before = tree_snapshot(store_path)
    with pytest.raises(ndt_store.InputError, match=r"broken\.json: malformed JSON"):
        ndt_store.ingest_phase1(store, bad)
    assert tree_snapshot(store_path) == before


def test_top_level_not_object(populated, tmp_path):
    store, store_path = populated
    bad = tmp_path / "list.json"
    bad.write_text("[1, 2, 3]")
    before = tree_snapshot(store_path)
    with pytest.raises(ndt_store.InputError, match="top level must be a JSON object"):
        ndt_store.ingest_phase1(store, bad)
    assert tree_snapshot(store_path) == before


def test_one_bad_file_in_a_directory_writes_nothing(populated, tmp_path):
    store, store_path = populated
    src = tmp_path / "many"
    write_phase1_json(src / "a_good.json", n_records=10)
    obj = make_phase1_obj(n_records=10)
    obj["measurements"][3]["step"] = 0
    (src / "b_bad.json").write_text(json.dumps(obj))
    before = tree_snapshot(store_path)
    with pytest.raises(ndt_store.InputError, match=r"b_bad\.json: record 3"):
        ndt_store.ingest_phase1(store, src)
    assert tree_snapshot(store_path) == before


def test_nonfinite_allowed_explicitly(tmp_path):
    obj = _mutate(
        _set(["measurements", 8, "layer_metrics", "fc2", "nuclear_norm_ratio"], float("nan"))
    )
    obj["measurements"][2]["loss"] = float("inf")
    path = tmp_path / "nan_run.json"
    path.write_text(json.dumps(obj, allow_nan=True))
    store = ndt_store.open_store(tmp_path / "s.zarr")
    ndt_store.ingest_phase1(store, path, allow_nonfinite=True)
    ds = store.phase1("nan_run")
    assert ds["nuclear_norm_ratio"].sel(layer="fc2").isnull().values[8]
    assert ds["loss"].isnull().values[2]
    assert int(ds["loss"].isnull().sum()) == 1


@pytest.mark.parametrize("missing", ["magnitude", "layer", "experiment"])
def test_csv_missing_columns(populated, tmp_path, shared_phase1, missing):
    import pandas as pd

    store, store_path = populated
    df = pd.read_csv(shared_phase1 / "all_jumps_detailed.csv").drop(columns=[missing])
    bad = tmp_path / "jumps.csv"
    df.to_csv(bad, index=False)
    before = tree_snapshot(store_path)
    with pytest.raises(ndt_store.InputError, match=rf"jumps\.csv.*missing columns \['{missing}'\]"):
        ndt_store.ingest_tables(store, jumps=bad)
    assert tree_snapshot(store_path) == before


def test_csv_bad_number(populated, tmp_path, shared_phase1):
    import pandas as pd

    store, store_path = populated
    df = pd.read_csv(shared_phase1 / "critical_periods_detailed.csv")
    df["max_coordination"] = df["max_coordination"].astype(object)
    df.loc[1, "max_coordination"] = "high"
    bad = tmp_path / "periods.csv"
    df.to_csv(bad, index=False)
    before = tree_snapshot(store_path)
    with pytest.raises(
        ndt_store.InputError, match=r"periods\.csv: record row 2: field 'max_coordination'"
    ):
        ndt_store.ingest_tables(store, periods=bad)
    assert tree_snapshot(store_path) == before


@pytest.mark.parametrize(
    "name", ["..", ".", "a/b", "", "a\x00b", "tab\tname", "__zarr", ".hidden", " x"]
)
def test_invalid_experiment_names(tmp_path, name):
    store = ndt_store.open_store(tmp_path / "s.zarr")
    before = tree_snapshot(tmp_path / "s.zarr")
    ds = ndt_store.read_phase1_json(write_phase1_json(tmp_path / "ok.json", n_records=5)).dataset
    with pytest.raises(ndt_store.InvalidNameError):
        store.write_experiment(name, ds, {})
    assert tree_snapshot(tmp_path / "s.zarr") == before


def test_cli_error_is_one_line(populated, tmp_path, capsys):
    from ndt_store.cli import main

    _, store_path = populated
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["ingest", "phase1", str(bad), "--store", str(store_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ndt-store: error:") and "bad.json" in err[0]
