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
    rc, out, _ = run(
        capsys, "jumps", "--store", real_store.location, "--format", "csv", "--phase", "index"
    )
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
        "--metric",
        "participation_ratio",
        "--format",
        "csv",
    )
    got = pd.read_csv(io.StringIO(out))
    ref = identify_moments(real_store, EXP, num_jumps=2, metric="participation_ratio")
    assert rc == 0 and len(ref) == 6
    assert got["step"].tolist() == [m.step for m in ref]
    assert got["index"].tolist() == [m.index for m in ref]
    assert got["moment_type"].tolist() == [m.moment_type for m in ref]
    assert (got["p_value"] <= 0.05).all() and got["significant"].all()
    assert (got["noise_floor"] > 0).all()


def test_moments_of_a_degenerate_metric_warn(real_store, capsys):
    rc, out, err = run(capsys, "moments", "--store", real_store.location, "-e", "mlp_narrow_mnist")
    assert rc == 0 and "(no rows)" in out
    assert "stable_rank is degenerate" in err and "participation_ratio" in err


@pytest.mark.parametrize("alpha", ["2", "0", "1", "-0.1", "x"])
@pytest.mark.parametrize("command", ["moments", "report", "jumps"])
def test_alpha_outside_unit_interval_refused(real_store, capsys, command, alpha, tmp_path):
    argv = [command, "--store", real_store.location, "-e", EXP, "--alpha", alpha]
    argv += ["--out", str(tmp_path / "r")] if command == "report" else []
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--alpha" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


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


def test_report_out_pointing_at_a_file_is_one_line(real_store, capsys, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    rc, out, err = run(
        capsys, "report", "--store", real_store.location, "-e", EXP, "--out", str(target),
        "--metric", "participation_ratio", "--no-figures",
    )  # fmt: skip
    assert rc == 1 and out == ""
    assert err.startswith("ndt-store: error:") and "is a file" in err and err.count("\n") == 1
    assert target.read_text() == "keep me"


def test_quickstart_out_pointing_at_a_file_is_one_line(capsys, tmp_path):
    pytest.importorskip("torch")
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    rc, _, err = run(capsys, "quickstart", "--out", str(target), "--steps", "10")
    assert rc == 1 and "is a file" in err and err.count("\n") == 1
    assert target.read_text() == "keep me"


def test_failed_ingest_leaves_no_store(capsys, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# not a Phase 1 file\n")
    rc, _, err = run(capsys, "ingest", "phase1", str(readme), "--store", str(tmp_path / "bad.zarr"))
    assert rc == 1 and err.startswith("ndt-store: error:") and err.count("\n") == 1
    assert not (tmp_path / "bad.zarr").exists()


def test_report_progress_lines_when_piped(real_store, capsys, tmp_path, monkeypatch):
    """Not a terminal: plain stage lines, no carriage returns."""
    monkeypatch.setattr("ndt_store.cli._common.HEARTBEAT_DELAY", 0.0)
    rc, _, err = run(
        capsys, "report", "--store", real_store.location, "-e", EXP, "--out",
        str(tmp_path / "r"), "--metric", "participation_ratio", "--num-jumps", "1",
    )  # fmt: skip
    assert rc == 0 and "\r" not in err
    assert "report: analysing transformer_deep_mnist" in err
    assert "report: drawing the figures" in err
