"""Point queries and cross-experiment queries versus the study's JSON re-parse per call.

Baseline (the study's way): every query opens the experiment's JSON file, parses
it and picks the record nearest the step (``load_measurements_at_step``).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import ndt_store
from ndt_store import _dims as D
from ndt_store.ingest.phase1 import export_phase1_json
from ndt_store.synth import synth_store

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "phase1"


def legacy_query(path: Path, step: int, layer: str, metric: str) -> float:
    """The study's way: parse the whole file, take the record nearest ``step``."""
    with open(path) as fh:
        data = json.load(fh)
    records = data["measurements"]
    best = min(range(len(records)), key=lambda i: abs(records[i]["step"] - step))
    return records[best]["layer_metrics"][layer][metric]


def legacy_cross(files: list[Path], step: int) -> dict[str, dict[str, float]]:
    """Stable rank of every layer of every experiment at ``step``, the study's way."""
    out = {}
    for path in files:
        with open(path) as fh:
            data = json.load(fh)
        records = data["measurements"]
        best = min(range(len(records)), key=lambda i: abs(records[i]["step"] - step))
        out[path.stem] = {k: v[D.STABLE_RANK] for k, v in records[best]["layer_metrics"].items()}
    return out


def _timeit(fn: Any, n: int) -> float:
    """Median seconds of ``n`` calls."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _real(tmp: Path, quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    files = sorted((DATA / "phase1_full").glob("*.json"))
    if not files:
        return [{"case": "real data", "notes": f"skipped: no data at {DATA}"}]
    start = time.perf_counter()
    store = ndt_store.open_store(tmp / "real.zarr")
    ndt_store.ingest_phase1(store, DATA)
    ingest = time.perf_counter() - start
    parse = _timeit(lambda: [json.loads(f.read_text()) for f in files], 3)
    rows.append({
        "case": f"ingest the {len(files)} real Phase 1 files",
        "ndt_store": ingest, "baseline": parse, "unit": "s",
        "baseline_name": "json.load of the same files (no store)",
        "notes": "ingest = parse + validate + write; a one-off cost paid back after a few queries",
    })  # fmt: skip
    rng = np.random.default_rng(0)
    queries = []
    for _ in range(200):
        f = files[rng.integers(len(files))]
        exp = ndt_store.open_store(tmp / "real.zarr", mode="r").phase1(f.stem)
        layer = str(exp[D.LAYER].values[rng.integers(exp.sizes[D.LAYER])])
        queries.append((f, int(rng.integers(0, 2000)), layer, D.PHASE1_METRICS[rng.integers(4)]))
    legacy = _timeit(lambda: legacy_query(*queries[0]), 5 if quick else 15)
    reader = ndt_store.open_store(tmp / "real.zarr", mode="r")
    for f, s, layer, m in queries:  # answers agree
        assert reader.record(f.stem, s)["layer_metrics"][layer][m] == legacy_query(f, s, layer, m)
    start = time.perf_counter()
    for f, s, layer, m in queries:
        reader.record(f.stem, s)["layer_metrics"][layer][m]
    repeated = (time.perf_counter() - start) / len(queries)
    rows.append({
        "case": "point query (experiment, step, layer, metric), open store",
        "ndt_store": repeated * 1e3, "baseline": legacy * 1e3, "unit": "ms",
        "baseline_name": "legacy JSON re-parse per call", "target": ">= 20x",
    })  # fmt: skip
    rows[-1]["met"] = legacy / repeated >= 20

    def first() -> None:
        s = ndt_store.open_store(tmp / "real.zarr", mode="r")
        s.record(files[0].stem, 1000)["layer_metrics"]

    cold = _timeit(first, 5 if quick else 15)
    rows.append({
        "case": "first query right after open_store",
        "ndt_store": cold * 1e3, "baseline": legacy * 1e3, "unit": "ms",
        "baseline_name": "legacy JSON re-parse per call", "target": "> 1x",
        "met": cold < legacy, "notes": "open_store + first record in a warm Python process",
    })  # fmt: skip
    return rows


def _cross(tmp: Path, quick: bool) -> list[dict[str, Any]]:
    n = 100 if quick else 1000
    loc = tmp / "many.zarr"
    start = time.perf_counter()
    store = synth_store(loc, experiments=n, steps=0, records=400, kinds=("phase1",), seed=1)
    synth_s = time.perf_counter() - start
    start = time.perf_counter()
    store.measurements()
    build = time.perf_counter() - start
    json_dir = tmp / "json"
    json_dir.mkdir()
    for name in store.experiments():
        (json_dir / f"{name}.json").write_text(json.dumps(export_phase1_json(store, name)))
    files = sorted(json_dir.glob("*.json"))

    def open_view() -> Any:
        return ndt_store.open_store(loc, mode="r").measurements()

    import dask.array as da

    da.ones(4, chunks=2).sum().compute()  # first dask compute of a process: imports, pool
    open_s = _timeit(open_view, 3)
    ds = open_view()
    steps = ds[D.STEP].values
    rng = np.random.default_rng(2)
    picks = [int(s) for s in rng.choice(steps, 20)]
    times = []
    for s in picks:
        t = time.perf_counter()
        _ = ds[D.STABLE_RANK].sel({D.STEP: s}).values
        times.append(time.perf_counter() - t)
    query = statistics.median(times)
    worst = max(times)
    got = ds[D.STABLE_RANK].sel({D.STEP: picks[0]}).values
    start = time.perf_counter()
    ref = legacy_cross(files, picks[0])
    legacy = time.perf_counter() - start
    li = {str(x): i for i, x in enumerate(ds[D.LAYER].values)}
    for e, name in enumerate(ds[D.EXPERIMENT].values):  # answers agree
        for layer, v in ref[str(name)].items():
            assert got[e, li[layer]] == v
    n_layers = ds.sizes[D.LAYER]
    return [
        {
            "case": f"open the cross-experiment view ({n} experiments, {n_layers} layers)",
            "ndt_store": open_s, "baseline": legacy, "unit": "s",
            "baseline_name": "parse all JSON files once", "target": "< 2 s",
            "met": open_s < 2.0,
            "notes": f"first build of the derived catalog: {build:.1f} s; writing the "
            f"synthetic store: {synth_s:.0f} s",
        },
        {
            "case": f"cross-experiment query: all {n} experiments, one step, all layers",
            "ndt_store": query * 1e3, "baseline": legacy * 1e3, "unit": "ms",
            "baseline_name": "legacy JSON re-parse of every file", "target": "< 100 ms each",
            "met": worst < 0.1, "notes": f"worst of 20 queries: {worst * 1e3:.1f} ms",
        },
    ]  # fmt: skip


def run(quick: bool) -> list[dict[str, Any]]:
    """Run the benchmark; rows as described in ``benchmarks/run.py``."""
    tmp = Path(tempfile.mkdtemp(prefix="ndt-bench-queries-"))
    try:
        return _real(tmp, quick) + _cross(tmp, quick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    from _script import main

    main(run, __doc__)
