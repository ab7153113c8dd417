"""Phase 1 tables for N synthetic experiments: vectorized ndt_store vs the study's per-series loop.

Each synthetic experiment mimics one of the study's 55: 400 records every 5
steps, 3 to 16 layers (NaN-padded to 16 in the labeled data), stable rank as
a random walk, a decaying loss. The study's way is a Python loop over JSON
files and, inside, over layers. ndt_store computes both tables from one
dask-backed Dataset chunked along ``experiment`` (generated chunk by chunk,
never materialized), so memory is bounded by the chunk.

Run ``python benchmarks/bench_phase1_tables.py`` (``--quick`` for a smoke
run). Prints a table and writes ``benchmarks/results/phase1_tables.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from ndt_store._dims import ARCH_NAME, DATASET, EXPERIMENT, LAYER, LOSS, NUM_STEPS, STEP
from ndt_store.measures.dynamics import critical_period_table, jump_table

N_RECORDS = 400
MAX_LAYERS = 16
LAYERS = [f"layer.{k}" for k in range(MAX_LAYERS)]
RESULTS = Path(__file__).resolve().parent / "results" / "phase1_tables.json"


def _block(block_id: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable rank (size, 400, 16) and loss (size, 400) of one chunk of experiments."""
    rng = np.random.default_rng(block_id)
    walk = 1 + np.cumsum(rng.normal(scale=1e-3, size=(size, N_RECORDS, MAX_LAYERS)), axis=1)
    walk[:, 150:] += 0.05 * (rng.random((size, 1, MAX_LAYERS)) < 0.3)  # a few real jumps
    n_layers = rng.integers(3, MAX_LAYERS + 1, size=size)
    walk = np.where(np.arange(MAX_LAYERS) < n_layers[:, None, None], walk, np.nan)
    loss = 2.3 * np.exp(-np.arange(N_RECORDS) / 150) + 0.01 * rng.normal(size=(size, N_RECORDS))
    return walk, loss


def synthetic(n: int, chunk: int) -> xr.Dataset:
    """Lazy Dataset of n experiments, one dask chunk per ``chunk`` experiments."""
    sizes = [min(chunk, n - s) for s in range(0, n, chunk)]
    sr = da.concatenate(
        [
            da.from_delayed(_delayed_part(i, s, 0), (s, N_RECORDS, MAX_LAYERS), np.float64)
            for i, s in enumerate(sizes)
        ]
    )
    loss = da.concatenate(
        [
            da.from_delayed(_delayed_part(i, s, 1), (s, N_RECORDS), np.float64)
            for i, s in enumerate(sizes)
        ]
    )
    names = [f"exp{k:05d}" for k in range(n)]
    return xr.Dataset(
        {"stable_rank": ((EXPERIMENT, STEP, LAYER), sr), LOSS: ((EXPERIMENT, STEP), loss)},
        coords={
            EXPERIMENT: names,
            STEP: 5 * np.arange(N_RECORDS),
            LAYER: LAYERS,
            ARCH_NAME: (EXPERIMENT, ["synthetic"] * n),
            DATASET: (EXPERIMENT, ["mnist"] * n),
            NUM_STEPS: (EXPERIMENT, [5 * N_RECORDS] * n),
        },
    )


def _delayed_part(block_id: int, size: int, which: int):
    import dask

    return dask.delayed(lambda: _block(block_id, size)[which])()


def write_json(ds: xr.Dataset, folder: Path) -> list[Path]:
    """One study-format JSON file per experiment (4 metrics per layer, as the study wrote)."""
    sr = ds["stable_rank"].values
    loss = ds[LOSS].values
    paths = []
    for e, name in enumerate(ds[EXPERIMENT].values.tolist()):
        present = [k for k in range(MAX_LAYERS) if not np.isnan(sr[e, 0, k])]
        records = [
            {
                "step": 5 * t,
                "epoch": 1,
                "loss": float(loss[e, t]),
                "grad_norm": 1.0,
                "layer_metrics": {
                    LAYERS[k]: {
                        "stable_rank": float(sr[e, t, k]),
                        "participation_ratio": 1.0,
                        "effective_rank_90": 1.0,
                        "nuclear_norm_ratio": 1.0,
                    }
                    for k in present
                },
            }
            for t in range(N_RECORDS)
        ]
        doc = {
            "arch_name": "synthetic",
            "dataset_name": "mnist",
            "num_steps": 5 * N_RECORDS,
            "measurement_interval": 5,
            "measurements": records,
        }
        path = folder / f"{name}.json"
        path.write_text(json.dumps(doc))
        paths.append(path)
    return paths


def study_loop(paths: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The study's way: per file, per layer, numpy on one series at a time."""
    jumps, periods = [], []
    for path in paths:
        run = json.loads(path.read_text())
        meas = run["measurements"]
        layers = list(meas[0]["layer_metrics"])
        loss = np.array([m["loss"] for m in meas])
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
                    }
                )
            a = np.abs(v)
            crit = np.flatnonzero(a > np.percentile(a, 90))
            acc = np.abs(np.diff(v))
            n_crit += crit.size
            n_trans += int((acc > np.percentile(acc, 90)).sum())
            score[crit] += 1
            corr.append(float(np.mean(np.diff(loss)[crit] < 0)) if crit.size else 0.0)
        score /= len(layers)
        periods.append(
            {
                "experiment": path.stem,
                "total_critical_steps": n_crit,
                "total_transitions": n_trans,
                "num_coordinated_periods": int((score >= 0.5).sum()),
                "max_coordination": score.max(),
                "mean_coordination": score.mean(),
                "loss_correlation": float(np.mean(corr)),
            }
        )
    return pd.DataFrame(jumps), pd.DataFrame(periods)


def vectorized(ds: xr.Dataset) -> tuple[pd.DataFrame, pd.DataFrame]:
    return jump_table(ds, n_surrogates=0), critical_period_table(ds)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = parser.parse_args()
    compare_sizes = [20, 100] if args.quick else [20, 100, 400]
    scale_sizes = [100, 1000] if args.quick else [100, 1000, 3000, 10000]
    chunk = 250
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in compare_sizes:
            ds = synthetic(n, chunk).persist()  # in-memory, dask-backed
            folder = Path(tmp) / str(n)
            folder.mkdir()
            paths = write_json(ds, folder)
            t0 = time.perf_counter()
            ref_j, ref_c = study_loop(paths)
            t_loop = time.perf_counter() - t0
            t0 = time.perf_counter()
            got_j, got_c = vectorized(ds)
            t_vec = time.perf_counter() - t0
            cols = list(ref_j.columns)
            ref_j = ref_j.sort_values(["experiment", "layer", "step"], kind="stable")
            ref_j = ref_j.reset_index(drop=True)
            pd.testing.assert_frame_equal(got_j[cols], ref_j[cols], check_exact=False, rtol=1e-12)
            for col in ref_c.columns:
                np.testing.assert_allclose(
                    got_c[col].to_numpy(dtype=float) if col != "experiment" else 0,
                    ref_c[col].to_numpy(dtype=float) if col != "experiment" else 0,
                    rtol=1e-12,
                )
            rows.append(
                {
                    "n_experiments": n,
                    "study_loop_s": round(t_loop, 3),
                    "ndt_store_s": round(t_vec, 3),
                    "speedup": round(t_loop / t_vec, 1),
                    "jumps": len(got_j),
                    "peak_rss_mb": round(peak_rss_mb()),
                }
            )
            print(rows[-1], flush=True)
    for n in scale_sizes:
        ds = synthetic(n, chunk)  # generated chunk by chunk inside the timing (twice)
        t0 = time.perf_counter()
        got_j, _ = vectorized(ds)
        t_vec = time.perf_counter() - t0
        rows.append(
            {
                "n_experiments": n,
                "study_loop_s": None,
                "ndt_store_s": round(t_vec, 3),
                "speedup": None,
                "jumps": len(got_j),
                "peak_rss_mb": round(peak_rss_mb()),
            }
        )
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"chunk_experiments": chunk, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
