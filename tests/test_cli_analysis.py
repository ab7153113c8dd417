"""``ndt-store jumps|periods|moments|compare|report`` against the published tables and the API."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from ndt_store.cli import main
from ndt_store.moments import identify_moments

EXP = "transformer_deep_mnist"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_jumps_is_the_published_table(real_store, shared_phase1, capsys):
    rc, out, _ = run(capsys, "jumps", "--store", real_store.location, "--format", "csv")
    assert rc == 0
    got = pd.read_csv(io.StringIO(out))
    pub = pd.read_csv(shared_phase1 / "all_jumps_detailed.csv")
    pub = pub.sort_values(["experiment", "layer", "step"], kind="stable").reset_index(drop=True)
    assert list(got.columns[: len(pub.columns)]) == list(pub.columns)
    assert {"index", "train_step", "p_value", "significant"} <= set(got.columns)
    for col in ("step", "layer", "experiment", "cluster", "phase_category"):
        assert got[col].tolist() == pub[col].tolist()
    pd.testing.assert_series_equal(got["magnitude"], pub["magnitude"], rtol=1e-9)
    data = json.loads((shared_phase1 / "phase1_full" / f"{EXP}.json").read_text())
    rows = got[got.experiment == EXP]
    assert rows["train_step"].tolist() == [data["measurements"][i]["step"] for i in rows["index"]]


def test_jumps_alpha_and_experiment_filter(real_store, capsys):
    rc, out, _ = run(
        capsys,
        "jumps",
        "--store",
        real_store.location,
        "-e",
        "cnn_deep_mnist",
        "--alpha",
        "0.05",
        "--format",
        "csv",
    )
    assert rc == 0
    got = pd.read_csv(io.StringIO(out))
    assert set(got.experiment) <= {"cnn_deep_mnist"}
    assert (got["p_value"] <= 0.05).all() and got["significant"].all()


def test_periods(real_store, shared_phase1, capsys):
    rc, out, _ = run(capsys, "periods", "--store", real_store.location, "--format", "csv")
    got = pd.read_csv(io.StringIO(out))
    pub = pd.read_csv(shared_phase1 / "critical_periods_detailed.csv").sort_values("experiment")
    assert rc == 0 and got["experiment"].tolist() == pub["experiment"].tolist()
    pd.testing.assert_series_equal(
        got["loss_correlation"], pub["loss_correlation"].reset_index(drop=True), rtol=1e-9
    )


def test_moments(real_store, capsys):
    rc, out, _ = run(
        capsys,
        "moments",
        "--store",
        real_store.location,
        "-e",
        EXP,
        "--num-jumps",
        "2",
        "--format",
        "csv",
    )
    got = pd.read_csv(io.StringIO(out))
    ref = identify_moments(real_store, EXP, num_jumps=2)
    assert rc == 0
    assert got["step"].tolist() == [m.step for m in ref]
    assert got["index"].tolist() == [m.index for m in ref]
    assert got["moment_type"].tolist() == [m.moment_type for m in ref]


def test_compare(real_store, shared_phase1, capsys):
    rc, out, _ = run(
        capsys,
        "compare",
        "--store",
        real_store.location,
        "-e",
        EXP,
        "--before",
        "333",
        "--after",
        "343",
        "--format",
        "json",
    )
    res = json.loads(out)
    data = json.loads((shared_phase1 / "phase1_full" / f"{EXP}.json").read_text())["measurements"]
    assert rc == 0
    assert res["loss_change"] == data[69]["loss"] - data[67]["loss"]
    rc, out, _ = run(
        capsys,
        "compare",
        "--store",
        real_store.location,
        "-e",
        EXP,
        "--before",
        "333",
        "--after",
        "343",
    )
    assert rc == 0 and "step 335 (index 67) -> step 345 (index 69)" in out


def test_report(real_store, tmp_path, capsys):
    rc, out, _ = run(
        capsys,
        "report",
        "--store",
        real_store.location,
        "-e",
        EXP,
        "--out",
        str(tmp_path / "r"),
        "--num-jumps",
        "1",
        "--no-figures",
    )
    assert rc == 0
    assert sorted(Path(p).name for p in out.split()) == [
        "analysis_results.json",
        "comparison_report.md",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["moments", "-e", "nope"],
        ["compare", "-e", "nope", "--before", "1", "--after", "2"],
        ["report", "-e", "nope", "--out", "x"],
        ["jumps", "-e", "nope"],
    ],
)
def test_errors_are_one_line(real_store, capsys, argv):
    rc, out, err = run(capsys, argv[0], "--store", real_store.location, *argv[1:])
    assert rc == 1 and out == ""
    assert err.startswith("ndt-store: error:") and "nope" in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["jumps", "periods", "moments", "compare", "report"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "--store" in capsys.readouterr().out
