"""Reports: files and values, figures when data exist, self-contained HTML, crash safety."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import ndt_store
from ndt_store.compare import compare_representations
from ndt_store.moments import identify_moments
from ndt_store.report import jsonable, write_report
from ndt_store.testing import write_phase1_json


@pytest.fixture
def rich_store(tmp_path: Path) -> ndt_store.Store:
    """A run with a planted jump plus weights (with a conv), activations and attention."""
    store = ndt_store.open_store(tmp_path / "s.zarr")
    path = write_phase1_json(tmp_path / "run.json", n_records=60, jumps=[("fc2", 30, 5.0)])
    ndt_store.ingest_phase1(store, path)
    rng = np.random.default_rng(0)
    for step in (100, 150, 200):
        logits = rng.normal(size=(6, 2, 4, 4))
        store.write_snapshot(
            "run",
            step,
            weights={
                "conv.weight": rng.normal(size=(4, 1, 3, 3)),
                "fc.weight": rng.normal(size=(3, 5)),
            },
            activations={"fc": rng.normal(size=(6, 5))},
            attention={"attn": np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)},
            labels=np.arange(6) % 2,
            probe_hash="p",
        )
    return store


def test_report_files_and_values(rich_store, tmp_path):
    out = tmp_path / "report"
    written = write_report(rich_store, "run", out, num_jumps=1, html_page=True)
    names = set(written)
    assert {"analysis_results.json", "comparison_report.md", "report.html"} <= names
    for suffix in (
        "stable_rank_heatmap",
        "loss_moments",
        "weight_change",
        "attention_pattern",
        "entropy_evolution",
        "filter_viz",
    ):
        assert f"run_{suffix}.png" in names, suffix
        assert (out / f"run_{suffix}.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "analysis_results.json").read_text())  # strict JSON
    moments = identify_moments(rich_store, "run", num_jumps=1)
    assert [m["step"] for m in results["moments"]] == [m.step for m in moments]
    expected = compare_representations(rich_store, moments[0], moments[1])
    got = results["comparisons"][0]
    assert got["pair"] == "before_jump_to_during_jump"
    assert got["loss_change"] == expected["loss_change"]
    assert got["layer_changes"] == jsonable(expected["layer_changes"])
    assert len(results["comparisons"]) == 2
    snap = results["snapshot_comparisons"]
    assert [(c["requested_before"], c["requested_after"]) for c in snap] == [(100, 150), (150, 200)]
    direct = rich_store.weights("run")["fc.weight"].values
    assert snap[0]["weights"]["fc.weight"]["l2_norm"] == pytest.approx(
        np.linalg.norm(direct[1] - direct[0])
    )
    md = (out / "comparison_report.md").read_text()
    assert f"{expected['loss_change']:.4f}" in md
    assert "layer `fc2`" in md and "| fc2 |" in md
    assert "![" in md and "run_loss_moments.png" in md
    html = (out / "report.html").read_text()
    assert html.count('" src="data:image/png;base64,') == 6 and 'src="run_' not in html
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.tmp")]


def test_phase1_only_report_has_no_tensor_figures(real_store, tmp_path):
    written = write_report(
        real_store, "transformer_deep_mnist", tmp_path / "r", num_jumps=1, steps="index"
    )
    assert sorted(written) == [
        "analysis_results.json",
        "comparison_report.md",
        "transformer_deep_mnist_loss_moments.png",
        "transformer_deep_mnist_stable_rank_heatmap.png",
    ]
    results = json.loads((tmp_path / "r" / "analysis_results.json").read_text())
    assert round(results["comparisons"][0]["loss_change"], 4) == 0.1298


def test_crash_leaves_previous_report_intact(rich_store, tmp_path, monkeypatch):
    out = tmp_path / "report"
    write_report(rich_store, "run", out, num_jumps=1, figures=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash while drawing")

    monkeypatch.setattr("ndt_store.report.metric_heatmap", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        write_report(rich_store, "run", out, num_jumps=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_crash_between_renames_never_leaves_partial_files(rich_store, tmp_path, monkeypatch):
    out = tmp_path / "report"
    calls = []
    real_replace = os.replace

    def flaky(src, dst):
        if Path(dst).parent == out:  # the report's own renames (the store renames too)
            if len(calls) == 1:
                raise OSError("simulated crash between renames")
            calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr("ndt_store.report.os.replace", flaky)
    with pytest.raises(OSError):
        write_report(rich_store, "run", out, num_jumps=1, figures=False)
    assert [p.name for p in out.iterdir()] == ["comparison_report.md"]
    assert (out / "comparison_report.md").read_text().startswith("# Before/after")


def test_jsonable():
    assert jsonable({"a": [np.float32(1.5), float("nan")], 3: np.arange(2)}) == {
        "a": [1.5, None],
        "3": [0, 1],
    }
