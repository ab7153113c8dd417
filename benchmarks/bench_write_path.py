"""Where the store's write time goes: array creation, CPU per file, writer threads.

Diagnoses behind the write rows of ``bench_user_commands.py`` (each part alternates
its sides in one run, so the ratios hold on a noisy machine):

- **create**: ``groups`` groups × 29 arrays of a snapshot column's kind, created
  with ``zarr.create_array`` against the store's one-write creation
  (:func:`ndt_store._fast_create.create_local_array`).
- **write path**: the store's write path (``write_experiment`` +
  ``write_snapshots`` of pregenerated tensors, ``synth`` defaults, 4 threads) with
  the one-write creation against the same with zarr creating every column.
- **rusage**: one writer thread, the same write against ``np.ndarray.tofile`` of
  the same bytes into as many files, with the user and system CPU time of each
  (``getrusage``): which of the two the store spends more of.
- **threads**: ``synth_store`` with 1, 2 and 4 writer threads.

Run::

    python benchmarks/bench_write_path.py            # ~4 min
    python benchmarks/bench_write_path.py --quick    # ~1 min

Results go to ``benchmarks/results/write_path.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_user_commands as users

RESULTS = Path(__file__).resolve().parent / "results" / "write_path.json"
_SPEC = {"shape": (50, 8, 16), "dtype": "float32", "chunks": (1, 8, 16),
         "dimension_names": ("step", "a", "b")}  # fmt: skip


def _fresh(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.sync()  # each side starts with no dirty pages of the other


def _alternate(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each side, the order of the sides reversed every other round."""
    names = list(sides)
    out: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            out[name].append(sides[name]())
    return out


def _summary(seconds: dict[str, list[float]], first: str, second: str) -> dict[str, Any]:
    return {
        "seconds": {k: [round(x, 4) for x in v] for k, v in seconds.items()},
        "medians_s": {k: round(statistics.median(v), 4) for k, v in seconds.items()},
        "paired_ratio": round(
            statistics.median(b / a for a, b in zip(seconds[first], seconds[second], strict=True)),
            3,
        ),
        "paired_ratio_is": f"{second} / {first}",
    }


def create_part(root: Path, groups: int, repeats: int) -> dict[str, Any]:
    """``groups`` × 29 arrays: zarr's ``create_array`` against the one-write creation."""
    import zarr
    from zarr.api.asynchronous import create_array
    from zarr.core.sync import sync

    from ndt_store._fast_create import create_local_array

    def side(fast: bool) -> float:
        location = root / "create.zarr"
        _fresh(location)
        top = zarr.open_group(location, mode="w")
        subs = [top.create_group(f"g{g}") for g in range(groups)]
        start = time.perf_counter()
        for sub in subs:

            async def make(sub: Any = sub) -> None:
                if fast:
                    made = [create_local_array(sub.store_path, f"a{i}", _SPEC) for i in range(29)]
                else:
                    made = [
                        create_array(sub.store_path, name=f"a{i}", overwrite=True, **_SPEC)
                        for i in range(29)
                    ]
                await asyncio.gather(*made)

            sync(make())
        return time.perf_counter() - start

    seconds = _alternate({"create_array": lambda: side(False), "one_write": lambda: side(True)},
                         repeats)  # fmt: skip
    return {"arrays": groups * 29, **_summary(seconds, "one_write", "create_array")}


def write_path_part(root: Path, sizes: dict[str, int], repeats: int) -> dict[str, Any]:
    """The store's write path with the one-write creation against zarr creating columns."""
    import ndt_store._frame as frame

    exps = users._pregenerate(sizes)
    real = frame.create_local_array

    async def never(*args: Any, **kwargs: Any) -> None:
        return None

    def side(fast: bool) -> float:
        location = root / "write.zarr"
        _fresh(location)
        frame.create_local_array = real if fast else never  # type: ignore[assignment]
        try:
            start = time.perf_counter()
            users._write_pregenerated(location, exps)
            return time.perf_counter() - start
        finally:
            frame.create_local_array = real

    seconds = _alternate({"zarr_create": lambda: side(False), "one_write": lambda: side(True)},
                         repeats)  # fmt: skip
    summary = _summary(seconds, "one_write", "zarr_create")
    return {"sizes": sizes, "threads": users.WORKERS, **summary}


def _usage() -> tuple[float, float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime, r.ru_stime


def _spent(before: tuple[float, float, float]) -> dict[str, float]:
    after = _usage()
    kinds = ("wall", "user", "sys")
    return {k: round(a - b, 4) for k, a, b in zip(kinds, after, before, strict=True)}


def rusage_part(root: Path, sizes: dict[str, int], repeats: int) -> dict[str, Any]:
    """One writer thread: wall, user and system seconds of the store and the raw write."""
    import ndt_store

    exps = users._pregenerate(sizes)
    location, raw = root / "rusage.zarr", root / "rusage-raw"
    rounds = []
    for _ in range(repeats):
        _fresh(location)
        before = _usage()
        store = ndt_store.open_store(location)
        for exp in exps:
            store.write_experiment(exp.name, exp.phase1, exp.metadata, overwrite=True)
            for batch in exp.batches:
                store.write_snapshots(exp.name, **batch)
        ours = _spent(before)
        files = [p for p in location.rglob("*") if p.is_file()]
        _fresh(raw)
        before = _usage()
        users._raw_write(raw, [p.stat().st_size for p in files])
        rounds.append({"store": ours, "raw": _spent(before), "files": len(files)})
    shutil.rmtree(raw, ignore_errors=True)
    per_file_ms = {
        side: {
            kind: round(statistics.median(r[side][kind] / r["files"] for r in rounds) * 1e3, 3)
            for kind in ("wall", "user", "sys")
        }
        for side in ("store", "raw")
    }
    return {"sizes": sizes, "rounds": rounds, "median_ms_per_file": per_file_ms}


def threads_part(root: Path, sizes: dict[str, int], repeats: int) -> dict[str, Any]:
    """``synth_store`` with 1, 2 and 4 writer threads."""
    from ndt_store.synth import synth_store

    def side(workers: int) -> float:
        location = root / "threads.zarr"
        _fresh(location)
        start = time.perf_counter()
        synth_store(location, **sizes, workers=workers)
        return time.perf_counter() - start

    seconds = _alternate({f"{w} threads": lambda w=w: side(w) for w in (1, 2, 4)}, repeats)
    return {
        "sizes": sizes,
        "seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
        "medians_s": {k: round(statistics.median(v), 3) for k, v in seconds.items()},
    }


def measure(quick: bool) -> dict[str, Any]:
    small = {"experiments": 4 if quick else 8, "steps": 20 if quick else 50}
    large = {"experiments": 8 if quick else 16, "steps": 20 if quick else 50}
    with tempfile.TemporaryDirectory(prefix="ndt-bench-write-path-") as tmp:
        root = Path(tmp)
        return {
            "quick": quick,
            "load_avg_1min_at_start": os.getloadavg()[0],
            "create": create_part(root, 8, 3),
            "write_path": write_path_part(root, large, 3 if quick else 5),
            "rusage": rusage_part(root, small, 2 if quick else 4),
            "threads": threads_part(root, large, 2 if quick else 4),
        }


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Rows for ``benchmarks/run.py`` (diagnoses: no targets); also writes ``RESULTS``."""
    result = measure(quick)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    rows = []
    for part, what, ours, base in (
        ("create", f"create {result['create']['arrays']} arrays", "one_write", "create_array"),
        ("write_path", "store write path, 4 threads", "one_write", "zarr_create"),
    ):
        medians = result[part]["medians_s"]
        rows.append({
            "case": what, "ndt_store": medians[ours], "baseline": medians[base], "unit": "s",
            "higher_is_better": False, "baseline_name": f"the same with {base}",
            "notes": f"paired ratio {result[part]['paired_ratio']}",
        })  # fmt: skip
    raw = result["rusage"]["median_ms_per_file"]
    rows.append({
        "case": "one writer thread, per file", "ndt_store": raw["store"]["wall"],
        "baseline": raw["raw"]["wall"], "unit": "ms", "higher_is_better": False,
        "baseline_name": "np.ndarray.tofile of the same bytes into as many files",
    })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    args = parser.parse_args()
    for row in run(args.quick):
        print(json.dumps(row))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
