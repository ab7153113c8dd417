"""Where a report's time goes, against reading its arrays and drawing its figures alone.

On one quickstart run (the transformer: 120 Phase 1 records, 15 snapshots of
weights, activations and attention; trained here by ``run_quickstart`` unless
``--data`` holds one), in one process, alternating, medians of the repeats:

* **report** — ``write_report(store, run, out)`` with figures, as ``ndt-store
  report`` runs it (significance test, moments, every before/after comparison,
  figures, Markdown and JSON);
* **read + render** — the baseline: read every array the report uses into memory
  (the Phase 1 dataset and every snapshot tensor, once) plus the report's figure
  stage alone (``_figures`` given the finished analysis: the plot data and
  matplotlib's drawing and PNG encoding).

Target: report <= 2x read + render. The report's own stages are timed too
(analysis, figures, writing), so the row says where the time goes.

Run: ``python benchmarks/bench_report.py [--quick] [--data DIR]``; writes
``benchmarks/results/report.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "report.json"
RUN = "transformer_digits"


def _store(folder: Path, steps: int) -> Any:
    import ndt_store
    from ndt_store.quickstart import run_quickstart

    path = folder / "store.zarr"
    if not path.exists():
        run_quickstart(folder, steps=steps, models=(RUN,), progress=False)
    return ndt_store.open_store(path, mode="r")


def _read_all(store: Any) -> float:
    from ndt_store.compare import load_snapshots

    start = time.perf_counter()
    store.refresh()  # nothing cached from an earlier round
    store.phase1(RUN).load()
    assert load_snapshots(store, RUN) is not None
    return time.perf_counter() - start


def _report(store: Any, out: Path) -> dict[str, float]:
    """The report, stage by stage (the stages write_report runs)."""
    from ndt_store import report as r

    store.refresh()
    t0 = time.perf_counter()
    results, table = r._build_report(
        store, RUN, num_jumps=3, offset=10, steps="train", alpha=r.DEFAULT_ALPHA,
        include_nonsignificant=False, metric="stable_rank", num_periods=0,
    )  # fmt: skip
    t1 = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    results["figures"] = r._figures(store, results, out, jumps=table)
    t2 = time.perf_counter()
    (out / "comparison_report.md").write_text(r.report_markdown(results), encoding="utf-8")
    (out / "analysis_results.json").write_text(json.dumps(r.jsonable(results), allow_nan=False))
    t3 = time.perf_counter()
    return {"total": t3 - t0, "analysis": t1 - t0, "figures": t2 - t1, "writing": t3 - t2,
            "results": results, "table": table}  # fmt: skip


def _render(store: Any, results: dict[str, Any], table: Any, out: Path) -> float:
    from ndt_store import report as r

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    r._figures(store, results, out, jumps=table)
    return time.perf_counter() - start


def _whole_report(store: Any, out: Path) -> float:
    from ndt_store.report import write_report

    store.refresh()
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    write_report(store, RUN, out)
    return time.perf_counter() - start


def run(quick: bool = False, data: Path | None = None) -> list[dict[str, Any]]:
    """Rows as described in ``benchmarks/run.py``."""
    import matplotlib

    matplotlib.use("Agg")
    repeats = 2 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(data) if data is not None else Path(tmp) / "qs"
        start = time.perf_counter()
        store = _store(folder, 200 if quick else 600)
        gen = time.perf_counter() - start
        whole, read, render, stages = [], [], [], []
        for rep in range(repeats):
            for side in ("report", "baseline") if rep % 2 == 0 else ("baseline", "report"):
                if side == "report":
                    whole.append(_whole_report(store, Path(tmp) / "out"))
                    st = _report(store, Path(tmp) / "staged")
                    stages.append(st)
                else:
                    read.append(_read_all(store))
                    last = stages[-1] if stages else _report(store, Path(tmp) / "staged")
                    render.append(_render(store, last["results"], last["table"], Path(tmp) / "f"))
        med = {
            k: statistics.median(s[k] for s in stages) for k in ("analysis", "figures", "writing")
        }
        w, base = statistics.median(whole), statistics.median(read) + statistics.median(render)
        info = store.summary(RUN)
    row = {
        "case": f"report of one quickstart run ({RUN}: {info['records']} records, "
        f"{info['snapshots']} snapshots), figures on",
        "ndt_store": w,
        "baseline": base,
        "unit": "s",
        "baseline_name": "read every array it uses into memory + its figure stage alone",
        "target": "<= 2x the baseline",
        "met": w <= 2 * base,
        "time_vs_baseline": w / base,
        "notes": (
            f"report stages (medians): analysis {med['analysis']:.2f} s (jump test, moments, "
            f"{len(stages[-1]['results']['comparisons'])} event and "
            f"{len(stages[-1]['results']['snapshot_comparisons'])} snapshot comparisons), "
            f"figures {med['figures']:.2f} s, Markdown + JSON {med['writing']:.2f} s; baseline: "
            f"read {statistics.median(read):.2f} s + render {statistics.median(render):.2f} s; "
            f"repeats {repeats}; training the run took {gen:.0f} s"
        ),
    }
    print(json.dumps(row), flush=True)
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 200-step run, 2 repeats")
    parser.add_argument("--data", type=Path, help="a quickstart folder to reuse (or create)")
    args = parser.parse_args()
    rows = run(args.quick, args.data)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
