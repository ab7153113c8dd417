"""What a user waits for: whole ``ndt-store`` processes, verify and synth, against baselines.

Every ratio is paired in one run: the two sides alternate, each repeated, and
the medians are compared. Whole processes run with ``ndt_store``'s bytecode
compiled first (``compileall``), as an installed package has it: without that,
an environment that sets ``PYTHONDONTWRITEBYTECODE`` compiles every imported
module of the package from source in every process (the study's one-file script
is compiled on each run either way).

* **jumps** — ``ndt-store jumps --store S --format csv`` (p-values on: the
  default) on 55 synthetic 55-like experiments (built as
  ``bench_phase1_tables`` builds them: the same float64 values in a store and as
  study-format JSON files), whole process, against the study's plain loop over
  the JSON files (``benchmarks/study_jumps_loop.py``: ``json.load`` + numpy per
  series, the z rule, CSV out; the study had no p-values). Both outputs are
  checked to list the same jumps.
* **--help** and **ls** — ``ndt-store --help`` and ``ndt-store ls --store S``,
  whole process, against ``python -c "import xarray, zarr, dask.array"``.
* **verify** — ``verify_store`` in one process against a raw read (``open`` +
  ``read``) of the same chunk files, page cache warm for both; MB/s of chunk bytes.
  Two stores: the synth store below (236 chunk files of ~0.6 MB) and one of many
  small chunks like the issue's (20 experiments x 50 steps at the synth defaults
  but seq 32 and 64 features: 9,220 chunk files of ~49 KB, 448 MB), also timed as
  a whole ``ndt-store verify`` process.
* **write** — the store's write path against a raw write of the same bytes into
  the same number of files (``np.ndarray.tofile``), MB/s of the files written. The
  synthetic experiments' tensors are generated first (``synth_experiment``, outside
  the timed region); the timed region writes them as ``synth`` and ingest do:
  ``Store.write_experiment`` then ``Store.write_snapshots`` per batch of steps, 4
  experiments at a time from threads. Two stores: the issue's case (``synth``
  defaults, 40 experiments x 50 steps: ~12 KB files) and 4 experiments of large
  tensors (2 MiB chunks).
* **synth** — the whole ``synth_store`` (tensor generation included) on the issue's
  case, against the same raw write.

Run ``python benchmarks/bench_user_commands.py [--quick] [--data DIR] [--only jumps|io]``;
writes ``benchmarks/results/user_commands.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "user_commands.json"
IMPORTS = [sys.executable, "-c", "import xarray, zarr, dask.array"]
CLI = [sys.executable, "-m", "ndt_store.cli"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _timed(cmd: list[str]) -> tuple[float, bytes]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=_env(), check=True)
    return time.perf_counter() - start, proc.stdout


def _paired(sides: dict[str, list[str]], repeats: int) -> tuple[dict[str, float], dict[str, bytes]]:
    """Median whole-process seconds of each command, the sides alternating."""
    times: dict[str, list[float]] = {k: [] for k in sides}
    outputs: dict[str, bytes] = {}
    names = list(sides)
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            elapsed, out = _timed(sides[name])
            times[name].append(elapsed)
            outputs.setdefault(name, out)
    return {k: statistics.median(v) for k, v in times.items()}, outputs


def _jump_keys(text: bytes) -> set[tuple[str, str, int]]:
    rows = csv.DictReader(io.StringIO(text.decode()))
    return {(r["experiment"], r["layer"], int(r["step"])) for r in rows}


def _compile_package() -> None:
    """Write ``ndt_store``'s bytecode, as installing the package does."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "ndt_store")], check=True)


def jumps_rows(folder: Path, repeats: int) -> list[dict[str, Any]]:
    sys.path.insert(0, str(HERE))
    import bench_phase1_tables as phase1

    _compile_package()

    info = phase1.generate(folder, 55, with_json=True)
    store = folder / "store.zarr"
    sides = {
        "ndt_store": [*CLI, "jumps", "--store", str(store), "--format", "csv"],
        "study": [sys.executable, str(HERE / "study_jumps_loop.py"), str(folder / "json")],
        "imports": IMPORTS,
        "help": [*CLI, "--help"],
        "ls": [*CLI, "ls", "--store", str(store)],
    }
    med, out = _paired(sides, repeats)
    ours, theirs = _jump_keys(out["ndt_store"]), _jump_keys(out["study"])
    assert ours == theirs, f"jump tables differ: {len(ours ^ theirs)} rows"
    head = out["ndt_store"].decode().splitlines()[0].split(",")
    assert "p_value" in head and "significant" in head
    common = {
        "n_experiments": 55, "series": info.get("layers_union"), "repeats": repeats,
        "bytecode": "compiled first",
    }  # fmt: skip
    return [
        {
            "case": "ndt-store jumps --format csv (p-values on), 55 experiments, whole process",
            "ndt_store": med["ndt_store"],
            "baseline": med["study"],
            "unit": "s",
            "baseline_name": "study loop over the 55 JSON files (json + numpy, z rule, CSV)",
            "target": "<= 1.0x the baseline's time",
            "met": med["ndt_store"] <= med["study"],
            "time_vs_baseline": med["ndt_store"] / med["study"],
            "jumps": len(ours),
            **common,
        },
        {
            "case": "ndt-store --help, whole process",
            "ndt_store": med["help"],
            "baseline": med["imports"],
            "unit": "s",
            "baseline_name": 'python -c "import xarray, zarr, dask.array"',
            "target": "<= 0.25x the baseline's time",
            "met": med["help"] <= 0.25 * med["imports"],
            "time_vs_baseline": med["help"] / med["imports"],
            **common,
        },
        {
            "case": "ndt-store ls, 55 experiments, whole process",
            "ndt_store": med["ls"],
            "baseline": med["imports"],
            "unit": "s",
            "baseline_name": 'python -c "import xarray, zarr, dask.array"',
            "target": "<= 1.1x the baseline's time",
            "met": med["ls"] <= 1.1 * med["imports"],
            "time_vs_baseline": med["ls"] / med["imports"],
            **common,
        },
    ]


# --- verify and synth ---------------------------------------------------------------------
SYNTH = {"experiments": 4, "steps": 8, "layers": 2, "heads": 8, "seq": 64, "samples": 16,
         "features": 256, "records": 400}  # fmt: skip
QUICK_SYNTH = {**SYNTH, "experiments": 2, "steps": 4}
MANY_CHUNKS = {"experiments": 20, "steps": 50, "seq": 32, "features": 64}  # synth defaults else
QUICK_MANY_CHUNKS = {**MANY_CHUNKS, "experiments": 4, "steps": 20}
ISSUE = {"experiments": 40, "steps": 50}
"""The issue's case ("synth wrote 100 experiments x 50 steps, 48,902 files") at 40%:
``synth`` defaults (3 layers, 4 heads, 16 x 16 attention, 8 samples), ~12 KB files."""
QUICK_ISSUE = {"experiments": 8, "steps": 20}
WORKERS = 4
"""Experiments written at once, as ``synth_store`` does by default."""


def _throughput(case: str, nbytes: int, ours: float, base: float, name: str) -> dict[str, Any]:
    """A row comparing MB/s of ``nbytes`` moved in ``ours`` and ``base`` seconds (target 0.5x)."""
    return {
        "case": case,
        "ndt_store": nbytes / 1e6 / ours,
        "baseline": nbytes / 1e6 / base,
        "unit": "MB/s",
        "higher_is_better": True,
        "baseline_name": name,
        "target": ">= 0.5x the baseline's throughput",
        "met": base / ours >= 0.5,
    }


def _chunk_files(store: Path) -> list[Path]:
    return sorted(
        p for p in store.rglob("*")
        if p.is_file() and ("/c/" in p.as_posix() or p.name.startswith("c."))
    )  # fmt: skip


def _raw_read(files: list[Path]) -> int:
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            total += len(fh.read())
    return total


def _raw_write(folder: Path, sizes: list[int]) -> None:
    rng = np.random.default_rng(0)
    block = rng.integers(0, 255, size=max(sizes), dtype=np.uint8)
    folder.mkdir(parents=True)
    for k, size in enumerate(sizes):
        block[:size].tofile(folder / f"{k}")


def _pregenerate(sizes: dict[str, int]) -> list[Any]:
    """``synth_store``'s experiments with every batch of tensors generated (not timed)."""
    from ndt_store.synth import SynthSpec, synth_experiment

    spec = SynthSpec(**sizes)
    out = []
    for e in range(spec.experiments):
        exp = synth_experiment(e, spec)
        exp.batches = list(exp.batches)
        out.append(exp)
    return out


def _write_pregenerated(location: Path, exps: list[Any]) -> None:
    """Write ``exps`` as ``synth_store`` does: ``WORKERS`` threads, each its own Store."""
    from concurrent.futures import ThreadPoolExecutor

    import ndt_store

    def write(w: int) -> None:
        store = ndt_store.open_store(location)
        for exp in exps[w::WORKERS]:
            store.write_experiment(exp.name, exp.phase1, exp.metadata, overwrite=True)
            for batch in exp.batches:
                store.write_snapshots(exp.name, **batch)

    with ThreadPoolExecutor(WORKERS) as pool:
        for done in [pool.submit(write, w) for w in range(WORKERS)]:
            done.result()


def _paired_writes(
    folder: Path, repeats: int, write: Any, label: str
) -> tuple[list[float], list[float], list[Path]]:
    """Seconds of ``write(store)`` and of the raw write of its files, alternating."""
    store = folder / f"{label}.zarr"
    ours, raw_s = [], []
    for rep in range(repeats):
        for side in ["store", "raw"] if rep % 2 == 0 else ["raw", "store"]:
            if side == "store" or not store.exists():  # the raw side needs the file sizes
                shutil.rmtree(store, ignore_errors=True)
                start = time.perf_counter()
                write(store)
                if side == "store":
                    ours.append(time.perf_counter() - start)
            if side == "raw":
                sizes = [p.stat().st_size for p in store.rglob("*") if p.is_file()]
                raw = folder / "raw"
                shutil.rmtree(raw, ignore_errors=True)
                start = time.perf_counter()
                _raw_write(raw, sizes)
                raw_s.append(time.perf_counter() - start)
    shutil.rmtree(folder / "raw", ignore_errors=True)
    return ours, raw_s, [p for p in store.rglob("*") if p.is_file()]


def _write_row(case: str, ours: list[float], raw: list[float], files: list[Path],
               extra: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    nbytes = sum(p.stat().st_size for p in files)
    s, w = statistics.median(ours), statistics.median(raw)
    return {
        **_throughput(
            f"{case}, {len(files)} files, {nbytes / 1e6:.0f} MB",
            nbytes,
            s,
            w,
            "np.ndarray.tofile of the same bytes into the same number of files",
        ),
        "seconds": {"ndt_store": ours, "baseline": raw},
        "repeats": len(ours),
        **extra,
    }


def write_rows(folder: Path, repeats: int, quick: bool) -> list[dict[str, Any]]:
    """The store's write path and the whole ``synth_store``, each against a raw write."""
    from ndt_store.synth import BATCH_BYTES, synth_store

    rows = []
    issue = QUICK_ISSUE if quick else ISSUE
    for label, sizes in (("issue", issue), ("large", QUICK_SYNTH if quick else SYNTH)):
        exps = _pregenerate(sizes)
        ours, raw, files = _paired_writes(
            folder, repeats, lambda p, exps=exps: _write_pregenerated(p, exps), f"write-{label}"
        )
        what = "issue's case" if label == "issue" else "large tensors"
        rows.append(_write_row(
            f"store write path (write_experiment + write_snapshots, tensors generated "
            f"beforehand, {WORKERS} threads), {what}",
            ours, raw, files, {"sizes": sizes, "batch_bytes": BATCH_BYTES},
        ))  # fmt: skip
        del exps
    ours, raw, files = _paired_writes(
        folder, repeats, lambda p: synth_store(p, **issue, workers=WORKERS), "synth-issue"
    )
    rows.append(_write_row(
        f"synth_store (tensor generation included, {WORKERS} threads), issue's case",
        ours, raw, files, {"sizes": issue},
    ))  # fmt: skip
    return rows


def io_rows(folder: Path, repeats: int, quick: bool = False) -> list[dict[str, Any]]:
    """verify on the synth store, the store's write path and ``synth_store``, each against its
    raw baseline."""
    from ndt_store.synth import synth_store

    folder.mkdir(parents=True, exist_ok=True)
    sizes = QUICK_SYNTH if quick else SYNTH
    store = folder / "verify.zarr"
    shutil.rmtree(store, ignore_errors=True)
    synth_store(store, **sizes)
    rows = [verify_row(store, repeats * 3, f"synth store {sizes['experiments']}x{sizes['steps']}")]
    return rows + write_rows(folder, repeats, quick)


def verify_row(store: Path, repeats: int, label: str, cli: bool = False) -> dict[str, Any]:
    """``verify_store`` against ``open`` + ``read`` of the same chunk files, alternating."""
    import ndt_store

    chunks = _chunk_files(store)
    chunk_bytes = _raw_read(chunks)  # warms the page cache for both sides
    verify_s, read_s = [], []
    for rep in range(repeats):
        for side in ("verify", "raw") if rep % 2 == 0 else ("raw", "verify"):
            start = time.perf_counter()
            if side == "verify":
                report = ndt_store.verify_store(ndt_store.open_store(store, mode="r"))
                assert report.ok, report.format()
                verify_s.append(time.perf_counter() - start)
            else:
                _raw_read(chunks)
                read_s.append(time.perf_counter() - start)
    v, r = statistics.median(verify_s), statistics.median(read_s)
    row: dict[str, Any] = {
        **_throughput(
            f"verify_store, {label}: {len(chunks)} chunk files, {chunk_bytes / 1e6:.0f} MB (warm)",
            chunk_bytes,
            v,
            r,
            "open + read of the same chunk files, one thread",
        ),
        "ratio": r / v,
        "verify_s": v,
        "raw_read_s": r,
        "repeats": repeats,
        "load_avg_1min": os.getloadavg()[0],
    }
    if cli:  # the whole process a user waits for
        cmd = [*CLI, "verify", "--store", str(store), "--no-progress"]
        row["cli_verify_s"] = statistics.median(_timed(cmd)[0] for _ in range(3))
    return row


def many_chunks_rows(folder: Path, repeats: int, sizes: dict[str, int]) -> list[dict[str, Any]]:
    """verify on a store of many small chunks, like the issue's (built once)."""
    from ndt_store.synth import synth_store

    store = folder / "many.zarr"
    if not store.exists():
        synth_store(store, **sizes)
    return [verify_row(store, repeats, f"{sizes['experiments']}x{sizes['steps']} steps", True)]


def run(
    quick: bool = False, data: Path | None = None, only: str | None = None
) -> list[dict[str, Any]]:
    repeats = 3 if quick else 5
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(data) if data is not None else Path(tmp)
        if only in (None, "jumps"):
            rows += jumps_rows(root / "n55", repeats)
        if only in (None, "io"):
            rows += io_rows(Path(tmp) / "io", 2 if quick else 3, quick)
            rows += many_chunks_rows(
                root / "many" if data is not None else Path(tmp) / "many",
                repeats,
                QUICK_MANY_CHUNKS if quick else MANY_CHUNKS,
            )
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def _group(row: dict[str, Any]) -> str:
    """``jumps`` (whole-process jumps, --help, ls) or ``io`` (verify, synth)."""
    return "jumps" if row["case"].startswith("ndt-store") else "io"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller synth store")
    parser.add_argument(
        "--data", type=Path, help="keep/reuse the 55-experiment and many-chunk stores here"
    )
    parser.add_argument("--only", choices=["jumps", "io"], help="only these rows")
    args = parser.parse_args()
    rows = run(quick=args.quick, data=args.data, only=args.only)
    if args.only and RESULTS.exists():  # keep the other group's rows of the last run
        last = json.loads(RESULTS.read_text())
        if last.get("quick") == args.quick:
            rows = [r for r in last["rows"] if _group(r) != args.only] + rows
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"quick": args.quick, "rows": rows}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
