"""``ndt-store ls`` and ``show`` output, checked against the store's labeled views."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

import ndt_store
from ndt_store.cli import main
from ndt_store.testing import write_phase1_json


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cli_store")
    path = tmp / "s.zarr"
    store = ndt_store.open_store(path)
    ndt_store.ingest_phase1(store, write_phase1_json(tmp / "run.json", n_records=12))
    store.create_run("empty", {"arch_name": "cnn", "dataset": "x, y"}, ["a", "b"])
    for step in (0, 20):
        store.write_snapshot("run", step, weights={"w": np.full((3, 2), step, np.float32)})
    return path


def _run(capsys, *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


def _expected_ls(path: Path) -> list[dict[str, str]]:
    store = ndt_store.open_store(path, mode="r")
    rows = []
    for name in store.experiments():
        ds = store.phase1(name)  # the labeled view is the reference
        steps = ds["step"].values
        rows.append(
            {
                "experiment": name,
                "arch": str(ds.attrs.get("arch_name", "")),
                "dataset": str(ds.attrs.get("dataset", "")),
                "records": str(steps.size),
                "steps": f"{steps[0]}..{steps[-1]}" if steps.size else "-",
                "layers": str(ds.sizes["layer"]),
                "snapshots": str(len(store.snapshot_steps(name))),
            }
        )
    return rows


def test_ls_csv_and_json_match_the_labeled_views(store_path, capsys) -> None:
    expected = _expected_ls(store_path)
    assert [r["snapshots"] for r in expected] == ["0", "2"]
    got = list(
        csv.DictReader(
            io.StringIO(_run(capsys, "ls", "--store", str(store_path), "--format", "csv"))
        )
    )
    assert got == expected
    lines = _run(capsys, "ls", "--store", str(store_path), "--format", "json").splitlines()
    as_json = [json.loads(line) for line in lines]
    assert [{k: str(v) for k, v in r.items()} for r in as_json] == expected
    assert isinstance(as_json[1]["records"], int)


def test_ls_table_aligns_every_column(store_path, capsys) -> None:
    lines = _run(capsys, "ls", "--store", str(store_path)).splitlines()
    assert lines[0].split() == list(_expected_ls(store_path)[0])
    assert len({len(line) for line in lines}) == 1  # right-aligned columns, one width
    assert lines[1].split()[-3:] == ["-", "2", "0"]  # the empty run: no steps


def test_ls_on_an_empty_store(tmp_path, capsys) -> None:
    ndt_store.open_store(tmp_path / "e.zarr")
    assert _run(capsys, "ls", "--store", str(tmp_path / "e.zarr")).strip() == "(no rows)"
    assert _run(capsys, "ls", "--store", str(tmp_path / "e.zarr"), "--format", "csv") == ""


def test_summary_matches_the_phase1_view(store_path) -> None:
    store = ndt_store.open_store(store_path, mode="r")
    info = store.summary("run")
    ds = store.phase1("run")
    assert info["records"] == ds.sizes["step"]
    assert (info["first_step"], info["last_step"]) == (int(ds.step[0]), int(ds.step[-1]))
    assert info["layers"] == ds.sizes["layer"] and info["snapshots"] == 2
    assert store.summary("empty")["first_step"] is None


def test_show_csv_matches_the_record(store_path, capsys) -> None:
    out = _run(
        capsys, "show", "--store", str(store_path), "-e", "run", "-s", "21", "--format", "csv"
    )
    header, *rows = out.splitlines()[1:]
    rec = ndt_store.open_store(store_path, mode="r").record("run", 21)
    got = {r["layer"]: r for r in csv.DictReader(io.StringIO("\n".join([header, *rows])))}
    assert list(got) == list(rec["layer_metrics"])
    for layer, metrics in rec["layer_metrics"].items():
        for name, value in metrics.items():
            assert float(got[layer][name]) == value
