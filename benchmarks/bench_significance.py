"""Jump significance in-process: the sequential test against the fixed 999-surrogate test.

**Speed** — ``jump_table(ds)`` with default settings (p-values on, 999
surrogates at most, alpha 0.05) on 55 synthetic 55-like experiments (the
``bench_phase1_tables`` data, loaded in memory), timed in fresh processes,
the two sides alternating: ndt_store as it is, and the same package at
``REFERENCE`` (the last commit before the sequential test, extracted with
``git archive``), whose significance drew all 999 surrogates for every series
and every index.

**Same answer** — both tables must list the same jumps; the share of rows on
which ``significant`` agrees and the largest p-value difference among rows
with ``p <= 0.1`` in either are reported. Validity of the new test is measured
as in ``tests/test_significance.py``: recall of planted 10σ steps (one or four
per 400-point series) and false fires per 1,000 points on Gaussian noise and
on drift + noise (199 surrogates, 200-250 series each).

**Scale** — time per experiment of ``jump_table`` on N in-memory synthetic
experiments (``--sizes``; default 100 and 1,000, ``--quick`` 30 and 300;
``--sizes 1000 10000`` for the 10,000 row, ~15 minutes on 2 cores).

Run ``python benchmarks/bench_significance.py [--quick] [--data DIR]``; writes
``benchmarks/results/significance.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
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
RESULTS = HERE / "results" / "significance.json"
REFERENCE = "f2ba8a7"  # the fixed-B significance (999 surrogates for every series)


def _reference_tree(tmp: Path) -> Path | None:
    """The package at ``REFERENCE``, extracted under ``tmp`` (None without git history)."""
    out = tmp / "reference"
    out.mkdir()
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", REFERENCE, "ndt_store"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


# --- children ----------------------------------------------------------------------------
def child_table(store: Path, out: Path) -> dict[str, Any]:
    import ndt_store
    from ndt_store.measures.dynamics import jump_table

    ds = ndt_store.open_store(store, mode="r").measurements().compute()
    jump_table(ds.isel(experiment=[0]))  # first use of the libraries, outside the timing
    start = time.perf_counter()
    table = jump_table(ds)
    seconds = time.perf_counter() - start
    out.write_bytes(pickle.dumps(table))
    return {"seconds": seconds, "rows": len(table), "file": ndt_store.__file__}


def _steps(n: int, n_steps: int, height: float, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 400))
    where = []
    for row in range(n):
        gaps = 10 + rng.multinomial(400 - 20 - 10 * n_steps, np.ones(n_steps + 1) / (n_steps + 1))
        taus = 5 + np.cumsum(gaps[:-1])
        for tau in taus:
            x[row, tau:] += height * rng.choice([-1.0, 1.0])
        where.append(taus - 1)
    return x, where


def child_validity() -> dict[str, Any]:
    import xarray as xr

    from ndt_store.measures.dynamics import detect_jumps

    def sig(x: np.ndarray) -> np.ndarray:
        da = xr.DataArray(x, dims=("series", "step"))
        return detect_jumps(da, alpha=0.05, n_surrogates=199).significant.values

    out: dict[str, Any] = {}
    for n_steps in (1, 4):
        x, where = _steps(200, n_steps, 10.0, n_steps)
        s = sig(x)
        hits, near = 0, np.zeros_like(s)
        for row, idx in enumerate(where):
            for i in idx:
                hits += bool(s[row, max(0, i - 2) : i + 3].any())
                near[row, max(0, i - 2) : i + 3] = True
        out[f"recall_{n_steps}_steps_10sigma"] = hits / sum(len(i) for i in where)
        out[f"false_per_1000_{n_steps}_steps"] = 1000 * (s & ~near).sum() / s.size
    rng = np.random.default_rng(11)
    drift = np.linspace(0.0, 20.0, 400) * rng.uniform(-1, 1, size=(250, 1))
    for name, x in (("noise", rng.normal(size=(250, 400))),
                    ("drift", drift + rng.normal(size=(250, 400)))):  # fmt: skip
        out[f"false_per_1000_{name}"] = 1000 * sig(x).sum() / x.size
    return out


def child_scale(n: int) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    import bench_phase1_tables as phase1
    import xarray as xr

    from ndt_store.measures.dynamics import jump_table

    parts = [phase1._experiment(1, k) for k in range(n)]
    layers = sorted({str(v) for _, ds, _ in parts for v in ds["layer"].values})
    x = np.full((n, 400, len(layers)), np.nan)
    for e, (_, ds, _) in enumerate(parts):
        cols = [layers.index(str(v)) for v in ds["layer"].values]
        x[e][:, cols] = ds["stable_rank"].transpose("step", "layer").values
    da = xr.DataArray(
        x,
        dims=("experiment", "step", "layer"),
        coords={"experiment": [p[0] for p in parts], "layer": layers,
                "step": 5 * np.arange(400), "num_steps": ("experiment", [2000] * n)},
    )  # fmt: skip
    del parts
    start = time.perf_counter()
    table = jump_table(da)
    seconds = time.perf_counter() - start
    with open("/proc/self/status") as fh:
        peak = next(int(ln.split()[1]) / 1024 for ln in fh if ln.startswith("VmHWM:"))
    series = int((~np.isnan(x).all(axis=1)).sum())
    return {"seconds": seconds, "rows": len(table), "series": series, "peak_rss_mb": peak}


def _child(args: list[str], pythonpath: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the benchmark -----------------------------------------------------------------------
def speed_rows(folder: Path, repeats: int) -> list[dict[str, Any]]:
    sys.path.insert(0, str(HERE))
    import bench_phase1_tables as phase1

    phase1.generate(folder, 55, with_json=False)
    store = folder / "store.zarr"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        ref = _reference_tree(Path(tmp))
        sides = {"new": ROOT} | ({"reference": ref} if ref is not None else {})
        times: dict[str, list[float]] = {k: [] for k in sides}
        for rep in range(repeats):
            for side in list(sides) if rep % 2 == 0 else list(sides)[::-1]:
                res = _child(["table", str(store), str(Path(tmp, f"{side}.pkl"))], sides[side])
                assert Path(res["file"]).resolve().is_relative_to(Path(sides[side]).resolve())
                times[side].append(res["seconds"])
        new = pickle.loads(Path(tmp, "new.pkl").read_bytes())
        validity = _child(["validity"], ROOT)
        row: dict[str, Any] = {
            "case": "jump_table with p-values (999 surrogates at most, alpha 0.05), 55 "
            "experiments, in-process",
            "ndt_store": statistics.median(times["new"]),
            "unit": "s",
            "target": ">= 10x faster than the fixed 999-surrogate test, equal validity",
            "repeats": repeats,
            "jumps": len(new),
            **validity,
        }
        if ref is not None:
            old = pickle.loads(Path(tmp, "reference.pkl").read_bytes())
            key = ["experiment", "layer", "step"]
            assert new[key].equals(old[key]), "the two tables list different jumps"
            close = (new.p_value <= 0.1) | (old.p_value <= 0.1)
            row |= {
                "baseline": statistics.median(times["reference"]),
                "baseline_name": f"the same at {REFERENCE}: 999 surrogates for every series",
                "significant_agree": float((new.significant == old.significant).mean()),
                "significant_new": int(new.significant.sum()),
                "significant_reference": int(old.significant.sum()),
                "max_abs_p_diff_where_p_le_0.1": float(
                    (new.p_value - old.p_value).abs()[close].max()
                ),
            }
            row["met"] = bool(
                row["baseline"] / row["ndt_store"] >= 10
                and min(row["recall_1_steps_10sigma"], row["recall_4_steps_10sigma"]) >= 0.95
                and max(v for k, v in validity.items() if k.startswith("false")) <= 1.0
            )
        rows.append(row)
    return rows


def scale_rows(sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        res = _child(["scale", str(n)], ROOT)
        rows.append(
            {
                "case": f"jump_table with p-values, N={n:,} in-memory experiments",
                "ndt_store": 1e3 * res["seconds"] / n,
                "unit": "ms per experiment",
                "target": "flat from 1,000 to 10,000 experiments",
                "n_experiments": n,
                "seconds": res["seconds"],
                "series": res["series"],
                "jumps": res["rows"],
                "peak_rss_mb": res["peak_rss_mb"],
            }
        )
    if len(rows) > 1:
        ratio = rows[-1]["ndt_store"] / rows[0]["ndt_store"]
        rows[-1]["per_experiment_vs_smallest"] = ratio
        if sizes[0] >= 1_000 and sizes[-1] >= 10_000:  # the target's range
            rows[-1]["met"] = bool(ratio <= 1.25)
    return rows


def run(quick: bool = False, data: Path | None = None, sizes: list[int] | None = None) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(data) if data is not None else Path(tmp)
        rows = speed_rows(folder / "n55", 2 if quick else 3)
    rows += scale_rows(sizes or ([30, 300] if quick else [100, 1_000]))
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", type=Path, help="keep/reuse the 55-experiment data here")
    parser.add_argument("--sizes", type=int, nargs="+", help="N of the scale rows")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "table":
            print(json.dumps(child_table(Path(rest[0]), Path(rest[1]))))
        elif kind == "validity":
            print(json.dumps(child_validity()))
        else:
            print(json.dumps(child_scale(int(rest[0]))))
        return
    rows = run(quick=args.quick, data=args.data, sizes=args.sizes)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"quick": args.quick, "rows": rows}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
