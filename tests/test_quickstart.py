"""``ndt-store quickstart`` at reduced steps, from the CLI: the report files exist and parse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

import ndt_store
from ndt_store import _dims as D
from ndt_store.cli import main
from ndt_store.quickstart import MODELS, build_model, load_digits_split


def test_quickstart_cli_reduced_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ndt_store.plot._common import readability_problems

    figures: list = []
    import ndt_store.plot._common as common

    real_finish = common.finish

    def keep(fig, path, **kw):
        figures.append((Path(path).name if path else "", fig))
        return real_finish(fig, path, **kw)

    for module in ("phase1", "weights", "attention"):
        monkeypatch.setattr(f"ndt_store.plot.{module}.finish", keep)
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--steps", "60", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report" / "comparison_report.md") in printed

    store = ndt_store.open_store(out / "store.zarr", mode="r")
    assert store.experiments() == sorted(MODELS)
    for name in MODELS:
        ds = store.phase1(name)
        assert ds[D.STEP].values.tolist() == list(range(0, 60, 5))
        assert store.metadata(name)["capture"]["metric_samples"] == 64
        meta = store.metadata(name)
        assert meta[D.DATASET] == "digits" and 0 <= meta[D.FINAL_ACCURACY] <= 1
        assert store.snapshot_steps(name, D.WEIGHTS)[:1] == [1]
    assert store.attention("transformer_digits")  # per-head attention was captured
    layers = store.phase1("transformer_digits")[D.LAYER].values.tolist()
    assert layers[0] == "input_proj" and "transformer.layers.1.linear2" in layers

    report = out / "report"
    results = json.loads((report / "analysis_results.json").read_text())
    assert set(results["experiments"]) == set(MODELS)
    md = (report / "comparison_report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links, "the markdown report links no figures"
    for link in links:
        assert (report / link).is_file(), link
    assert len(list(report.rglob("*.png"))) >= 3

    # every figure reads at its real size
    assert figures
    for name, fig in figures:
        assert readability_problems(fig) == [], name
    # the summary comes first: all runs' summaries before any details
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections == ["## Summaries", "## Details"]
    summaries = md.split("## Details")[0]
    assert len(summaries.splitlines()) < 80
    for name in MODELS:
        assert f"### {name}" in summaries and "metric `stable_rank`" in summaries
    # no non-significant moment presented as critical; when none is significant, it says so
    for name in MODELS:
        run = results["experiments"][name]
        assert run["alpha"] == 0.05
        assert all(e["significant"] for e in run["events"]), name
        for m in run["moments"]:
            if m["moment_type"] == "during_jump":
                assert m["jump_info"]["significant"] and m["jump_info"]["p_value"] <= 0.05
        if not run["events"]:
            assert "No significant jump" in run["notice"] or "degenerate" in run["notice"]
            run_md = (report / name / "comparison_report.md").read_text()
            assert run["notice"].split(":")[0] in "\n".join(run_md.splitlines()[:6])

    # run again: complete runs are reused, and it says so; --fresh trains again
    assert main(["quickstart", "--out", str(out), "--steps", "60"]) == 0
    err = capsys.readouterr().err
    assert "reusing mlp_narrow_digits" in err and "--fresh" in err


def test_models_and_data_offline() -> None:
    data = load_digits_split(probe_size=16)
    assert data["x_probe"].shape == (16, 8, 8) and data["x_train"].max() <= 1.0
    names = {n for n, _ in build_model("cnn_digits").named_modules()}
    assert {"conv_layers.0", "conv_layers.3", "fc"} <= names
    with pytest.raises(ndt_store.InputError):
        build_model("nope")
