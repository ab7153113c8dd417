"""The benchmark harness (``benchmarks/run.py``) and the out-of-core statistics.

The benchmarks themselves are run by hand (minutes, a quiet machine); these tests
check the bookkeeping that turns their rows into the committed table.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    return _load("run")


def test_ratio_is_how_many_times_better(harness: ModuleType) -> None:
    times = harness.finish_row({"ndt_store": 2.0, "baseline": 10.0}, "b", 5.0)
    rates = harness.finish_row({"ndt_store": 2.0, "baseline": 10.0, "higher_is_better": True},
                               "b", None)  # fmt: skip
    given = harness.finish_row({"ndt_store": 2.0, "baseline": 1.0, "ratio": 0.9}, "b", None)
    assert times["ratio"] == 5.0 and times["peak_rss_mb"] == 5.0 and times["benchmark"] == "b"
    assert rates["ratio"] == 0.2
    assert given["ratio"] == 0.9


def _results(date: str, quick: bool, benches: dict) -> dict:
    return {"date": date, "quick": quick, "machine": {"cpus": 2}, "benchmarks": benches}


def test_merge_keeps_other_benchmarks_with_their_dates(harness: ModuleType, tmp_path) -> None:
    row = {"case": "point query", "ndt_store": 1.0, "baseline": 3.0, "unit": "ms", "ratio": 3.0}
    old = _results("2020-01-01 10:00", False, {"store_queries": {"rows": [row], "seconds": 1.0,
                                                                 "peak_rss_mb": 9.0}})  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(old))
    # nothing matches --only, so the merged file is the previous one, re-dated
    assert harness.main(["--only", "no_such_benchmark", "--merge", "--out", str(tmp_path)]) == 0
    new = json.loads((tmp_path / "results.json").read_text())
    assert new["date"] != "2020-01-01 10:00"
    assert new["benchmarks"]["store_queries"]["rows"] == [row]
    assert new["benchmarks"]["store_queries"]["date"] == "2020-01-01 10:00"
    md = (tmp_path / "results.md").read_text()
    assert "(from the run of 2020-01-01 10:00)" in md and "| point query |" in md


def test_merge_refuses_mixing_sizes(harness: ModuleType, tmp_path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(_results("2020-01-01 10:00", True, {})))
    with pytest.raises(SystemExit, match="quick-size results"):
        harness.main(["--only", "no_such_benchmark", "--merge", "--out", str(tmp_path)])


def test_without_merge_only_the_run_benchmarks_remain(harness: ModuleType, tmp_path) -> None:
    old = _results("2020-01-01 10:00", False, {"x": {"rows": [], "seconds": 0, "peak_rss_mb": 0}})
    (tmp_path / "results.json").write_text(json.dumps(old))
    assert harness.main(["--only", "no_such_benchmark", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["benchmarks"] == {}


def test_paired_ratio_is_the_median_of_same_round_ratios() -> None:
    ooc = _load("bench_out_of_core")

    def runs(gbps: list[float]) -> list[dict]:
        return [{"nbytes": 1e9, "seconds": 1 / g} for g in gbps]

    # the disk drifts from 1 to 3 GB/s over the rounds; ndt is 0.9x of raw in each
    raw = [1.0, 2.0, 3.0, 1.5]
    by_threads = {("raw", t): runs(raw) for t in ooc.THREAD_CHOICES}
    by_threads |= {("ndt", t): runs([0.9 * g for g in raw]) for t in ooc.THREAD_CHOICES}
    assert ooc._paired_ratio(by_threads, "ndt") == pytest.approx(0.9)
    # best-of compares the luckiest runs: here the same 0.9, by construction
    best = ooc._best(by_threads, "ndt")["nbytes"] / ooc._best(by_threads, "ndt")["seconds"]
    assert best / 3.0e9 == pytest.approx(0.9)


SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_script_answers_help_without_running(script: str) -> None:
    import subprocess

    text = (BENCH / script).read_text()
    if "\nimport torch" in text:
        pytest.importorskip("torch")
    got = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=BENCH,
    )
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stdout.startswith("usage:"), got.stdout[:500]
    assert "Traceback" not in got.stderr
