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


def test_quickstart_cli_reduced_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
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


def test_models_and_data_offline() -> None:
    data = load_digits_split(probe_size=16)
    assert data["x_probe"].shape == (16, 8, 8) and data["x_train"].max() <= 1.0
    names = {n for n, _ in build_model("cnn_digits").named_modules()}
    assert {"conv_layers.0", "conv_layers.3", "fc"} <= names
    with pytest.raises(ndt_store.InputError):
        build_model("nope")
