"""Phase 1 tables for N experiments: ndt_store from the store vs the study's loop over JSON.

Both tables of the study (the jump table ``all_jumps_detailed.csv`` and the
critical-period table ``critical_periods_detailed.csv``) are recomputed for N
synthetic 55-like experiments (400 records every 5 steps, 3 to 16 layers with
the study's layer names, a few planted jumps; see :mod:`ndt_store.synth`) that
exist twice, with the same float64 values:

* as one study-format JSON file per experiment (the baseline's input), and
* in an ndt_store store (written with ``Store.write_experiment``).

**Baseline** (the study's way): for each JSON file ``json.load``, then per layer
numpy on that one series (velocity, z-score jumps, window speed, critical and
transition percentiles, coordination, loss correlation), appending one dict
per row; two DataFrames at the end.

**ndt_store**: ``open_store`` + ``store.measurements()`` + ``phase1_tables(ds,
n_surrogates=0)`` (both tables in one pass, equal to ``jump_table`` +
``critical_period_table``); opening the store is
included. The store's cross-experiment cache is built once after writing (a
one-off cost, reported separately as ``catalog_build_s``).

Every measurement runs in a fresh process (imports excluded from the timing,
peak RSS = that process's ``VmHWM``), the two sides alternating, each
repeated (median reported). A process times its first call (``cold``: first
use of the libraries' I/O machinery in the process) and then further calls
(``warm``, their median: as in an analysis session; 3 calls up to N = 200, 1
above); the headline figures are the warm ones.
The first repeat's tables of both sides are checked equal (same rows, floats
to 1e-12) before any figure is reported.

Run ``python benchmarks/bench_phase1_tables.py`` (``--quick`` skips N =
10,000; ``--data DIR`` keeps/reuses the generated data). Prints a table and
writes ``benchmarks/results/phase1_tables.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
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
RESULTS = HERE / "results" / "phase1_tables.json"
N_RECORDS = 400
INTERVAL = 5
REPEATS = 3
WARM_CALLS = 3  # warm calls per process (median) up to N = 200; one above
BASELINE_MAX = 1_000  # the baseline is measured up to this N, extrapolated beyond
TARGET = 10.0
_ARCHS = ("mlp", "cnn", "transformer")
_DATASETS = ("mnist", "fashion_mnist", "qmnist", "ag_news")


# --- data -----------------------------------------------------------------------------
def _experiment(seed: int, k: int) -> tuple[str, Any, dict[str, Any]]:
    """The k-th synthetic experiment: name, Phase 1 Dataset over (step, layer), metadata."""
    from ndt_store.synth import phase1_dataset, phase1_layer_names

    rng = np.random.default_rng([seed, k])
    arch = _ARCHS[k % len(_ARCHS)]
    layers = phase1_layer_names(arch, int(rng.integers(3, 17)))
    ds, _ = phase1_dataset(rng, layers, N_RECORDS, INTERVAL)
    meta = {
        "arch_name": f"{arch}_{len(layers)}",
        "dataset": _DATASETS[k % len(_DATASETS)],
        "num_steps": N_RECORDS * INTERVAL,
        "measurement_interval": INTERVAL,
        "final_accuracy": float(rng.uniform(0.8, 0.99)),
    }
    return f"{arch}_{k:05d}", ds, meta


def _study_json(ds: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """The experiment in the study's JSON schema (same float64 values)."""
    from ndt_store import _dims as D

    layers = [str(x) for x in ds[D.LAYER].values]
    metrics = {m: ds[m].values.tolist() for m in D.PHASE1_METRICS}
    loss, grad, epoch = (ds[v].values.tolist() for v in (D.LOSS, D.GRAD_NORM, D.EPOCH))
    steps = ds[D.STEP].values.tolist()
    records = [
        {
            "step": steps[t],
            "epoch": epoch[t],
            "loss": loss[t],
            "grad_norm": grad[t],
            "layer_metrics": {
                layer: {m: metrics[m][t][j] for m in D.PHASE1_METRICS}
                for j, layer in enumerate(layers)
            },
        }
        for t in range(len(steps))
    ]
    return {
        "arch_name": meta["arch_name"],
        "dataset_name": meta["dataset"],
        "num_steps": meta["num_steps"],
        "measurement_interval": meta["measurement_interval"],
        "final_accuracy": meta["final_accuracy"],
        "elapsed_time": 1.0,
        "architecture_params": {"depth": len(layers)},
        "measurements": records,
    }


def write_part(store_path: Path, json_dir: Path | None, seed: int, ks: range) -> None:
    """Write experiments ``ks`` to the store (and as JSON files when ``json_dir``)."""
    import ndt_store

    store = ndt_store.open_store(store_path, mode="a")
    for k in ks:
        name, ds, meta = _experiment(seed, k)
        store.write_experiment(name, ds, meta)
        if json_dir is not None:
            Path(json_dir, f"{name}.json").write_text(json.dumps(_study_json(ds, meta)))


def generate(folder: Path, n: int, *, with_json: bool, seed: int = 0) -> dict[str, Any]:
    """Write (or reuse) ``folder/store.zarr`` and ``folder/json/`` for ``n`` experiments."""
    import ndt_store

    store_path, json_dir = folder / "store.zarr", folder / "json"
    done = folder / "complete.json"
    if done.exists() and (not with_json or json.loads(done.read_text())["json"]):
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    json_dir.mkdir(parents=True)
    ndt_store.open_store(store_path, mode="w")
    start = time.perf_counter()
    workers = max(1, min(2, os.cpu_count() or 1))  # writers of different experiments
    procs = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--write-part", str(folder),
             str(int(with_json)), str(seed), str(w), str(workers), str(n)]
        )
        for w in range(workers)
    ]  # fmt: skip
    if any([proc.wait() != 0 for proc in procs]):  # wait for every writer
        raise RuntimeError(f"writing the synthetic data under {folder} failed")
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    ds = ndt_store.open_store(store_path).measurements()  # builds the cross-experiment cache
    info = {
        "n": n,
        "json": with_json,
        "write_s": write_s,
        "catalog_build_s": time.perf_counter() - start,
        "layers_union": int(ds.sizes["layer"]),
        "chunks": [list(c) for c in ds["stable_rank"].chunks],
    }
    done.write_text(json.dumps(info))
    return info


# --- the two ways -----------------------------------------------------------------------
def study_loop(paths: list[Path]) -> tuple[Any, Any]:
    """The study's way: per JSON file, per layer, numpy on one series at a time."""
    import pandas as pd

    jumps, periods = [], []
    for path in paths:
        with open(path) as fh:
            run = json.load(fh)
        meas = run["measurements"]
        layers = list(meas[0]["layer_metrics"])
        loss = np.array([m["loss"] for m in meas])
        falling = np.diff(loss) < 0
        score = np.zeros(len(meas))
        n_crit = n_trans = 0
        corr = []
        for layer in layers:
            x = np.array([m["layer_metrics"][layer]["stable_rank"] for m in meas])
            v = np.diff(x)
            z = np.abs(v - v.mean()) / v.std()
            for i in np.flatnonzero(z > 2.0):
                s, e = max(0, i - 2), min(len(x), i + 3)
                phase = i / run["num_steps"]
                jumps.append(
                    {
                        "step": int(i),
                        "magnitude": abs(v[i]),
                        "speed": abs(x[e - 1] - x[s]) / (e - s),
                        "direction": "increase" if v[i] > 0 else "decrease",
                        "phase": phase,
                        "layer": layer,
                        "experiment": path.stem,
                        "arch_name": run["arch_name"],
                        "dataset": run["dataset_name"],
                        "phase_category": (
                            "early" if phase < 0.33 else "mid" if phase < 0.67 else "late"
                        ),
                    }
                )
            a = np.abs(v)
            crit = np.flatnonzero(a > np.percentile(a, 90))
            acc = np.abs(np.diff(v))
            n_crit += crit.size
            n_trans += int((acc > np.percentile(acc, 90)).sum())
            score[crit] += 1
            corr.append(float(np.mean(falling[crit])) if crit.size else 0.0)
        score /= len(layers)
        periods.append(
            {
                "experiment": path.stem,
                "arch_name": run["arch_name"],
                "dataset": run["dataset_name"],
                "total_critical_steps": n_crit,
                "total_transitions": n_trans,
                "num_coordinated_periods": int((score >= 0.5).sum()),
                "max_coordination": score.max(),
                "mean_coordination": score.mean(),
                "loss_correlation": float(np.mean(corr)),
            }
        )
    return pd.DataFrame(jumps), pd.DataFrame(periods)


def ndt_store_tables(store_path: Path) -> tuple[Any, Any]:
    """ndt_store's way: open the store, one lazy Dataset, both tables."""
    import ndt_store
    from ndt_store.measures.dynamics import phase1_tables

    ds = ndt_store.open_store(store_path, mode="r").measurements()
    return phase1_tables(ds, n_surrogates=0, phase="index")  # the published phase formula


def check_equal(ndt: tuple[Any, Any], study: tuple[Any, Any]) -> None:
    """Same rows in both tables, floats equal to 1e-12 (raises AssertionError)."""
    for got, want, keys in ((ndt[0], study[0], ["experiment", "layer", "step"]),
                            (ndt[1], study[1], ["experiment"])):  # fmt: skip
        assert len(got) == len(want), f"{len(got)} rows != {len(want)} rows"
        got = got.sort_values(keys, kind="stable").reset_index(drop=True)
        want = want.sort_values(keys, kind="stable").reset_index(drop=True)
        for col in want.columns:
            a, b = got[col].to_numpy(), want[col].to_numpy()
            if np.issubdtype(b.dtype, np.floating):
                np.testing.assert_allclose(a.astype(float), b, rtol=1e-12, atol=0, err_msg=col)
            else:
                assert a.tolist() == b.tolist(), col


# --- measurement in a fresh process -------------------------------------------------------
def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - not Linux


def child(side: str, folder: Path, out: Path | None, warm_calls: int = 1) -> dict[str, Any]:
    """Run one side in this (fresh) process: one cold call, then ``warm_calls`` (median)."""
    import pandas  # noqa: F401  (both sides build DataFrames; import outside the timing)

    if side == "ndt_store":
        import dask.array  # noqa: F401  (imported by the store on first use)

        import ndt_store.measures.dynamics  # noqa: F401

        try:  # dask imports it at the first compute when it is installed
            import distributed  # noqa: F401
        except ImportError:  # pragma: no cover
            pass

        def work() -> tuple[Any, Any]:
            return ndt_store_tables(folder / "store.zarr")
    else:
        paths = sorted((folder / "json").glob("*.json"))

        def work() -> tuple[Any, Any]:
            return study_loop(paths)

    import_rss = _rss_mb("VmRSS")
    times = []
    for _ in range(1 + warm_calls):
        start = time.perf_counter()
        tables = work()
        times.append(time.perf_counter() - start)
    if out is not None:
        out.write_bytes(pickle.dumps(tables))
    return {"cold_s": times[0], "warm_s": statistics.median(times[1:]),
            "peak_rss_mb": _rss_mb("VmHWM"), "import_rss_mb": import_rss,
            "jumps": len(tables[0])}  # fmt: skip


def _spawn(side: str, folder: Path, out: Path | None, warm_calls: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--data", str(folder),
           "--warm-calls", str(warm_calls)]  # fmt: skip
    if out is not None:
        cmd += ["--child-out", str(out)]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(folder: Path, n: int, with_baseline: bool, repeats: int) -> dict[str, Any]:
    """Alternate fresh-process runs of both sides; check equality; medians."""
    sides = ["study", "ndt_store"] if with_baseline else ["ndt_store"]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            for side in sides if rep % 2 == 0 else sides[::-1]:
                out = Path(tmp, f"{side}.pkl") if rep == 0 else None
                runs[side].append(_spawn(side, folder, out, WARM_CALLS if n <= 200 else 1))
        if with_baseline:
            check_equal(*(pickle.loads(Path(tmp, f"{s}.pkl").read_bytes())
                          for s in ("ndt_store", "study")))  # fmt: skip
    med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in runs.items()}
    return {"n": n, "runs": runs, "median": med}


# --- report ---------------------------------------------------------------------------
def _row(n: int, meas: dict[str, Any], info: dict[str, Any], per_exp: float | None) -> dict:
    ndt = meas["median"]["ndt_store"]
    base = meas["median"].get("study")
    row: dict[str, Any] = {
        "benchmark": "phase1_tables",
        "case": f"N={n}",
        "n_experiments": n,
        "ndt_store": ndt["warm_s"],
        "baseline": base["warm_s"] if base else None,
        "unit": "s",
        "baseline_name": "study loop on JSON (json.load + per-layer numpy)",
        "ratio": base["warm_s"] / ndt["warm_s"] if base else None,
        "target": f">= {TARGET:g}x" if n == 55 else "~linear in N, bounded memory",
        "peak_rss_mb": ndt["peak_rss_mb"],
        "ndt_store_cold_s": ndt["cold_s"],
        "baseline_cold_s": base["cold_s"] if base else None,
        "cold_ratio": base["cold_s"] / ndt["cold_s"] if base else None,
        "ndt_store_import_rss_mb": ndt["import_rss_mb"],
        "baseline_peak_rss_mb": base["peak_rss_mb"] if base else None,
        "jumps": ndt["jumps"],
        "ndt_store_per_experiment_ms": 1e3 * ndt["warm_s"] / n,
        "layers_union": info["layers_union"],
        "catalog_build_s": info["catalog_build_s"],
        "repeats": len(meas["runs"]["ndt_store"]),
        "baseline_measured": base is not None,
    }
    if n == 55:
        row["met"] = bool(row["ratio"] is not None and row["ratio"] >= TARGET)
    if base is None and per_exp is not None:
        row["baseline_extrapolated_s"] = per_exp * n
        row["ratio_vs_extrapolated"] = per_exp * n / ndt["warm_s"]
        row["notes"] = (
            f"baseline not measured above N={BASELINE_MAX:,}: extrapolated linearly from the "
            "largest measured N (baseline_extrapolated_s, ratio_vs_extrapolated)"
        )
    return row


def run(quick: bool = False, data: Path | None = None, repeats: int = REPEATS) -> list[dict]:
    """Measure at N = 55, 200, 1,000 (+ 10,000 for ndt_store alone unless ``quick``)."""
    sizes = [55, 200, 1_000] + ([] if quick else [10_000])
    rows: list[dict[str, Any]] = []
    per_exp: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(data) if data is not None else Path(tmp)
        for n in sizes:
            with_baseline = n <= BASELINE_MAX
            info = generate(root / f"n{n}", n, with_json=with_baseline)
            meas = measure(root / f"n{n}", n, with_baseline, repeats)
            if with_baseline:
                per_exp = meas["median"]["study"]["warm_s"] / n
            rows.append(_row(n, meas, info, per_exp))
            print(_format(rows[-1]), flush=True)
    return rows


def _format(r: dict[str, Any]) -> str:
    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    base = r["baseline"] if r["baseline"] is not None else r.get("baseline_extrapolated_s")
    ratio = r["ratio"] if r["ratio"] is not None else r.get("ratio_vs_extrapolated")
    mark = "" if r["baseline"] is not None else " (extrapolated)"
    return (
        f"{r['case']:>8} | ndt_store {f(r['ndt_store'], '8.3f')} s (cold "
        f"{f(r['ndt_store_cold_s'], '.3f')}) | study {f(base, '8.2f')} s (cold "
        f"{f(r['baseline_cold_s'], '.2f')}) | ratio {f(ratio, '6.1f')}x{mark} (cold "
        f"{f(r['cold_ratio'], '.1f')}x) | {f(r['ndt_store_per_experiment_ms'], '.2f')} ms/exp | "
        f"peak RSS {f(r['peak_rss_mb'], '.0f')} MB (after imports "
        f"{f(r['ndt_store_import_rss_mb'], '.0f')}; study {f(r['baseline_peak_rss_mb'], '.0f')})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip N = 10,000")
    parser.add_argument("--data", type=Path, help="keep/reuse generated data in this folder")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--child", choices=["ndt_store", "study"], help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warm-calls", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--write-part", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_part:
        folder, with_json, seed, w, workers, n = args.write_part
        json_dir = Path(folder, "json") if int(with_json) else None
        write_part(
            Path(folder, "store.zarr"), json_dir, int(seed), range(int(w), int(n), int(workers))
        )
        return
    if args.child:
        print(json.dumps(child(args.child, args.data, args.child_out, args.warm_calls)))
        return
    rows = run(quick=args.quick, data=args.data, repeats=args.repeats)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"quick": args.quick, "rows": rows}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
