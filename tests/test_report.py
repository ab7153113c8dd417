"""Reports: files and values, figures when data exist, self-contained HTML, crash safety."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import ndt_store
from ndt_store.compare import compare_representations
from ndt_store.errors import InputError
from ndt_store.measures.dynamics import DegenerateMetricWarning
from ndt_store.moments import identify_moments
from ndt_store.report import build_report, jsonable, write_report
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
    assert "| fc2 | 5.0286 |" in md  # the jump row: magnitude, then noise floor and p-value
    assert "![" in md and "run_loss_moments.png" in md
    html = (out / "report.html").read_text()
    assert html.count('" src="data:image/png;base64,') == 6 and 'src="run_' not in html
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.tmp")]


def test_phase1_only_report_has_no_tensor_figures(real_store, tmp_path):
    written = write_report(
        real_store, "transformer_deep_mnist", tmp_path / "r", num_jumps=1,
        metric="participation_ratio",
    )  # fmt: skip
    assert sorted(written) == [
        "analysis_results.json",
        "comparison_report.md",
        "transformer_deep_mnist_loss_moments.png",
        "transformer_deep_mnist_participation_ratio_heatmap.png",
    ]
    results = json.loads((tmp_path / "r" / "analysis_results.json").read_text())
    assert results["metric"] == "participation_ratio" and results["comparisons"]


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


def section_order(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("## ")]


def test_summary_first_with_p_values_and_links(rich_store, tmp_path):
    write_report(rich_store, "run", tmp_path / "r", num_jumps=1, figures=False)
    md = (tmp_path / "r" / "comparison_report.md").read_text()
    assert section_order(md)[0] == "## Summary"
    summary = md.split("<!-- summary -->")[1].split("<!-- /summary -->")[0]
    results = json.loads((tmp_path / "r" / "analysis_results.json").read_text())
    (event,) = results["events"]
    p = event["p_value"]  # the sequential test stops once the jump is clearly significant
    assert 0 < p < 0.01 and event["significant"]
    assert f"| #1 | 145 (29) | `fc2` | {p:.3g} | yes | [details](#moment-1) |" in summary
    assert "‖W₀‖" in summary and "[→](#interval-1)" in summary
    assert len(summary.splitlines()) < 40  # one screen
    for anchor in re.findall(r"\]\(#([^)]+)\)", md):
        assert f'<a id="{anchor}"></a>' in md, anchor
    assert event["jumps"][0]["noise_floor"] > 0


def test_each_record_pair_once_and_steps_used(rich_store, tmp_path):
    """Overlapping jump windows: the same pair of records is compared and shown once."""
    results = build_report(rich_store, "run", num_jumps=3, offset=10, include_nonsignificant=True)
    keys = [(c["step_before"], c["step_after"]) for c in results["comparisons"]]
    assert len(keys) == len(set(keys))
    moments = [(m.moment_type, m.index) for m in results["moments"]]
    assert len(moments) == len(set(moments))
    snap = results["snapshot_comparisons"][0]
    assert snap["steps_used"]["phase1"] == {
        "before": 100,
        "after": 150,
        "distance_before": 0,
        "distance_after": 0,
    }
    moment_pair = results["comparisons"][0]
    assert moment_pair["steps_used"]["weights"]["before"] is None  # no snapshot at 95/145
    assert "weights" not in moment_pair


def test_snapshot_interval_never_mixes_steps(tmp_path):
    """Snapshots off the Phase 1 grid: the Phase 1 part is left out, not taken 4 steps away."""
    store = ndt_store.open_store(tmp_path / "s.zarr")
    ndt_store.ingest_phase1(store, write_phase1_json(tmp_path / "run.json", n_records=30))
    rng = np.random.default_rng(1)
    for step in (1, 99):
        store.write_snapshot("run", step, weights={"w": rng.normal(size=(3, 3))})
    results = build_report(store, "run", num_jumps=0)
    (c,) = results["snapshot_comparisons"]
    assert c["layer_changes"] == {} and c["steps_used"]["phase1"]["nearest"] == [0, 100]
    assert c["steps_used"]["weights"]["before"] == 1


def test_nothing_significant_is_said_first(tmp_path):
    store = ndt_store.open_store(tmp_path / "s.zarr")
    ndt_store.ingest_phase1(store, write_phase1_json(tmp_path / "run.json", n_records=60))
    write_report(store, "run", tmp_path / "r", figures=False)
    md = (tmp_path / "r" / "comparison_report.md").read_text()
    first = "\n".join(md.splitlines()[:5])
    assert "No significant jump" in first and "p-value above α = 0.05" in first
    assert "## Moments" not in md
    write_report(store, "run", tmp_path / "r2", figures=False, include_nonsignificant=True)
    md = (tmp_path / "r2" / "comparison_report.md").read_text()
    assert "No significant jump" in md and "| **no** |" in md and "no (not significant)" in md


def test_alpha_outside_unit_interval_is_refused(rich_store, tmp_path):
    for alpha in (0, 1, 2, -0.5):
        with pytest.raises(InputError, match="alpha"):
            write_report(rich_store, "run", tmp_path / "r", alpha=alpha)
    assert not (tmp_path / "r").exists()


def test_out_is_a_file(rich_store, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        write_report(rich_store, "run", target / "sub", figures=False)
    with pytest.raises(InputError, match="is a file"):
        write_report(rich_store, "run", target, figures=False)


def test_degenerate_metric_on_real_run(real_store, tmp_path):
    """mlp_narrow_mnist: stable rank spans 1e-12; the report says so and names what varies."""
    with pytest.warns(DegenerateMetricWarning):
        write_report(real_store, "mlp_narrow_mnist", tmp_path / "r", figures=False)
    md = (tmp_path / "r" / "comparison_report.md").read_text()
    first = "\n".join(md.splitlines()[:6])
    assert "stable_rank is degenerate" in first
    assert "participation_ratio" in first and "nuclear_norm_ratio" in first
    assert "## Moments" not in md and "0.0000 |" not in md
    write_report(
        real_store, "mlp_narrow_mnist", tmp_path / "p", metric="participation_ratio", figures=False
    )
    md = (tmp_path / "p" / "comparison_report.md").read_text()
    assert "metric `participation_ratio`" in md and "## Moments" in md
    assert "degenerate" not in md.split("## Summary")[0]
    results = json.loads((tmp_path / "p" / "analysis_results.json").read_text())
    assert results["events"] and all(e["significant"] for e in results["events"])
