"""Run every benchmark and write ``benchmarks/results/results.{json,md}``.

Usage::

    python benchmarks/run.py            # full sizes (minutes on 2 cores)
    python benchmarks/run.py --quick    # small sizes (smoke test)
    python benchmarks/run.py --only out_of_core store_queries
    python benchmarks/run.py --only out_of_core --merge   # replace just that section

Every ``benchmarks/bench_*.py`` module exposing ``run(quick: bool) -> list[dict]``
is discovered and run in its own subprocess, so peak memory is measured per
benchmark. Each returned row is a dict with at least:

``case``         what was measured (one line)
``ndt_store``    ndt_store's figure
``baseline``     the baseline's figure, measured in the same run
``unit``         unit of both figures (``"s"``, ``"ms"``, ``"GB/s"`` ...)

and optionally ``baseline_name`` (what the baseline is), ``higher_is_better``
(default: False, i.e. times), ``ratio`` (computed when absent: how many times
better ndt_store is, > 1 = ndt_store better), ``target`` (text) and ``met``
(bool), ``peak_rss_mb`` (else the subprocess's peak is used), ``notes``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def discover(only: list[str] | None = None) -> list[Path]:
    """The ``bench_*.py`` files next to this script (filtered by ``only``)."""
    files = sorted(HERE.glob("bench_*.py"))
    if only:
        files = [f for f in files if f.stem.removeprefix("bench_") in only or f.stem in only]
    return files


def _load(path: Path) -> Any:
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(path: Path, quick: bool, out: Path) -> None:
    """Run one benchmark module in this process and write its rows to ``out``."""
    import inspect

    module = _load(path)
    fn = getattr(module, "run", None)
    if not callable(fn) or "quick" not in inspect.signature(fn).parameters:
        out.write_text(json.dumps({"skipped": "does not expose run(quick: bool) -> list[dict]"}))
        return
    start = time.perf_counter()
    rows = fn(quick=quick)
    elapsed = time.perf_counter() - start
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        out.write_text(json.dumps({"skipped": "run(quick) did not return a list of dicts"}))
        return
    peak = _peak_rss_mb()
    out.write_text(json.dumps({"rows": rows, "peak_rss_mb": peak, "seconds": elapsed}))


def _peak_rss_mb() -> float:
    """Peak resident set of this process image (``VmHWM`` on Linux, else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def finish_row(row: dict[str, Any], bench: str, peak: float | None) -> dict[str, Any]:
    """Fill the derived fields of one row (ratio, peak memory, benchmark name)."""
    row = {"benchmark": bench, **row}
    ndt, base = row.get("ndt_store"), row.get("baseline")
    if (
        row.get("ratio") is None
        and isinstance(ndt, (int, float))
        and isinstance(base, (int, float))
    ):
        if row.get("higher_is_better"):
            row["ratio"] = ndt / base if base else math.inf
        else:
            row["ratio"] = base / ndt if ndt else math.inf
    if row.get("peak_rss_mb") is None:
        row["peak_rss_mb"] = peak
    return row


def machine() -> dict[str, Any]:
    """A short description of the machine the figures were measured on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 1e9, 1)
    except ImportError:  # pragma: no cover
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if "model name" in ln), None)
        info["cpu"] = model
    except OSError:  # pragma: no cover
        pass
    for name in ("numpy", "xarray", "zarr", "dask", "distributed"):
        try:
            info[name] = importlib.import_module(name).__version__
        except ImportError:  # pragma: no cover
            pass
    return info


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown table (one per benchmark)."""
    lines = [
        "# Benchmark results",
        "",
        f"Run {results['date']} ({'quick' if results['quick'] else 'full'} sizes) on: "
        + ", ".join(f"{k} {v}" for k, v in results["machine"].items()),
        "",
        "`ratio` = how many times better ndt_store is than the baseline measured in the same "
        "run (> 1: ndt_store better). Peak memory is the resident set of the process that ran "
        "the case.",
        "",
    ]
    header = "| case | ndt_store | baseline | unit | ratio | target | met | peak MB | baseline is |"
    for bench, info in results["benchmarks"].items():
        lines += [f"## {bench}", ""]
        if info.get("date", results["date"]) != results["date"]:
            lines += [f"(from the run of {info['date']})", ""]
        if "error" in info:
            lines += [f"FAILED: `{info['error']}`", ""]
            continue
        if "skipped" in info:
            lines += [f"skipped: {info['skipped']}", ""]
            continue
        lines += [header, "|" + "---|" * 9]
        for r in info["rows"]:
            cells = [
                r.get("case"), r.get("ndt_store"), r.get("baseline"), r.get("unit"),
                r.get("ratio"), r.get("target"), r.get("met"), r.get("peak_rss_mb"),
                r.get("baseline_name"),
            ]  # fmt: skip
            lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
        notes = [r["notes"] for r in info["rows"] if r.get("notes")]
        lines += [""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]
        lines.append(f"({info['seconds']:.0f} s, process peak {info['peak_rss_mb']:.0f} MB)")
        lines.append("")
    return "\n".join(lines)


def _previous(path: Path, quick: bool) -> dict[str, Any]:
    """The benchmarks of an earlier results file, each with the date of its run."""
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    if old.get("quick") != quick:
        raise SystemExit(
            f"--merge: {path} holds {'quick' if old.get('quick') else 'full'}-size results; "
            f"rerun with{'out' if not old.get('quick') else ''} --quick or without --merge"
        )
    return {name: {"date": old["date"], **info} for name, info in old["benchmarks"].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--only", nargs="*", help="benchmark names (e.g. out_of_core)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other benchmarks of the existing results (same sizes), each labelled "
        "with the date of its own run, and replace only those run now",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.quick, args.child_out)
        return 0
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "quick": args.quick,
        "machine": machine(),
        "benchmarks": {},
    }
    if args.merge:
        results["benchmarks"] = _previous(args.out / "results.json", args.quick)
    failed = 0
    for path in discover(args.only):
        bench = path.stem.removeprefix("bench_")
        print(f"== {bench}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path),
                   "--child-out", str(out)] + (["--quick"] if args.quick else [])  # fmt: skip
            proc = subprocess.run(cmd, check=False)
            if proc.returncode != 0 or not out.exists():
                failed += 1
                results["benchmarks"][bench] = {"error": f"exit status {proc.returncode}"}
                continue
            info = json.loads(out.read_text())
        info["date"] = results["date"]
        if "rows" in info:
            info["rows"] = [finish_row(r, bench, info["peak_rss_mb"]) for r in info["rows"]]
            for r in info["rows"]:
                print(f"   {r['case']}: ratio {_fmt(r.get('ratio'))}", flush=True)
        results["benchmarks"][bench] = info
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (args.out / "results.md").write_text(markdown(results))
    print(f"wrote {args.out / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
