"""Cost of the commit protocol: per-append time of the store versus a raw Zarr write.

Everything is measured in one run on one disk, so the ratios are meaningful
even on a noisy machine (NOTES.md: disk varied 2-5x between runs).

Two workloads, each written three ways into fresh directories:

- **tensor rows** (one snapshot per step, ``--mib`` MiB of float32 weights):
  ``raw``: a plain Zarr array with the same chunking and codec, ``resize`` +
  ``arr[i] = row``; ``frame``: :class:`ndt_store._frame.Frame.append` (the rows
  plus the commit marker written last); ``store``: ``Store.write_snapshot``
  (writer lock + frame + the experiment's snapshot list).
- **Phase 1 rows** (one step of ``--layers`` layers x 4 metrics + 3 scalars per
  append): ``raw``: five plain Zarr arrays resized and written; ``store``:
  ``Store.append_phase1``.

Run::

    python benchmarks/bench_write_protocol.py --steps 30 --mib 4
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

import ndt_store
from ndt_store import _dims as D
from ndt_store._frame import COMPRESSORS, Frame


def _timed(n: int, step: Callable[[int], None]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        step(i)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def bench_tensor(base: Path, steps: int, mib: float) -> dict[str, list[float]]:
    """Per-append milliseconds of one ``mib``-MiB float32 tensor row, three ways."""
    side = int(np.sqrt(mib * (1 << 20) / 4))
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal((side, side)).astype(np.float32) for _ in range(3)]
    res: dict[str, list[float]] = {}

    raw = zarr.open_group(base / "raw.zarr", mode="w").create_array(
        "w",
        shape=(0, side, side),
        chunks=(1, side, side),
        dtype="f4",
        compressors=COMPRESSORS,
        fill_value=np.nan,
    )

    def raw_step(i: int) -> None:
        raw.resize((i + 1, side, side))
        raw[i] = rows[i % 3]

    res["raw zarr"] = _timed(steps, raw_step)

    frame = Frame.create(zarr.open_group(base / "frame.zarr", mode="w"), "f")

    def frame_step(i: int) -> None:
        frame.append(
            {"step": np.asarray([i]), "w": rows[i % 3][None]},
            dims={"step": ("step",), "w": ("step", "out", "in")},
            chunks={"w": (1, side, side)},
        )

    res["frame (commit marker)"] = _timed(steps, frame_step)

    store = ndt_store.open_store(base / "store.zarr")
    store.create_run("run", {}, ["x"])
    res["store.write_snapshot"] = _timed(
        steps, lambda i: store.write_snapshot("run", i, weights={"fc.weight": rows[i % 3]})
    )
    return res


def bench_phase1(base: Path, steps: int, n_layers: int) -> dict[str, list[float]]:
    """Per-append milliseconds of one Phase 1 record, raw Zarr vs ``append_phase1``."""
    layers = [f"layer{j}" for j in range(n_layers)]
    rng = np.random.default_rng(1)
    res: dict[str, list[float]] = {}
    grp = zarr.open_group(base / "raw1.zarr", mode="w")
    shapes = {"step": (), "metrics": (n_layers, 4), "loss": (), "grad_norm": (), "epoch": ()}
    arrays = {
        k: grp.create_array(
            k,
            shape=(0, *s),
            chunks=(512, *s),
            dtype="f8",
            compressors=COMPRESSORS,
            fill_value=np.nan,
        )
        for k, s in shapes.items()
    }

    def raw_step(i: int) -> None:
        for k, s in shapes.items():
            arrays[k].resize((i + 1, *s))
            arrays[k][i] = rng.standard_normal(s) if s else float(i)

    res["raw zarr (5 arrays)"] = _timed(steps, raw_step)

    store = ndt_store.open_store(base / "store1.zarr")
    store.create_run("run", {}, layers)

    def store_step(i: int) -> None:
        data = {
            m: ((D.STEP, D.LAYER), rng.standard_normal((1, n_layers))) for m in D.PHASE1_METRICS
        }
        data[D.LOSS] = (D.STEP, [float(i)])
        store.append_phase1("run", xr.Dataset(data, coords={D.STEP: [i], D.LAYER: layers}))

    res["store.append_phase1"] = _timed(steps, store_step)
    return res


def _summary(title: str, res: dict[str, list[float]], baseline: str) -> str:
    base = statistics.median(res[baseline])
    lines = [
        title,
        f"  {'method':28s} {'median ms':>10s} {'mean ms':>9s} {'p90 ms':>8s} "
        f"{'overhead ms':>12s} {'ratio':>6s}",
    ]
    for name, ms in res.items():
        med = statistics.median(ms)
        p90 = sorted(ms)[int(0.9 * (len(ms) - 1))]
        lines.append(
            f"  {name:28s} {med:10.2f} {statistics.fmean(ms):9.2f} {p90:8.2f} "
            f"{med - base:+12.2f} {med / base:6.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Run both workloads and print the tables; returns the printed text."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="appends per method (tensor rows)")
    p.add_argument("--mib", type=float, default=4.0, help="MiB per tensor row")
    p.add_argument("--phase1-steps", type=int, default=100)
    p.add_argument("--layers", type=int, default=24)
    args = p.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="ndt-bench-write-"))
    try:
        tensor = bench_tensor(base, args.steps, args.mib)
        phase1 = bench_phase1(base, args.phase1_steps, args.layers)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    text = "\n\n".join(
        [
            _summary(
                f"tensor rows: {args.mib:g} MiB float32 per step, {args.steps} appends",
                tensor,
                "raw zarr",
            ),
            _summary(
                f"Phase 1 rows: {args.layers} layers per step, {args.phase1_steps} appends",
                phase1,
                "raw zarr (5 arrays)",
            ),
        ]
    )
    print(text)
    return text


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows for ``benchmarks/run.py``: per-append cost of the commit protocol vs raw Zarr."""
    import statistics

    steps, phase1_steps = (10, 30) if quick else (30, 100)
    base = Path(tempfile.mkdtemp(prefix="ndt-bench-write-"))
    try:
        tensor = bench_tensor(base, steps, 4.0)
        phase1 = bench_phase1(base, phase1_steps, 24)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in {**tensor, **phase1}.items()}
    return [
        {
            "case": "append one 4 MiB tensor row and commit it (store.write_snapshot)",
            "ndt_store": med["store.write_snapshot"], "baseline": med["raw zarr"], "unit": "ms",
            "baseline_name": "raw zarr arr[i] = row (no commit marker, no lock)",
            "notes": f"Frame.append alone: {med['frame (commit marker)']:.1f} ms",
        },
        {
            "case": "append one Phase 1 record, 24 layers (store.append_phase1)",
            "ndt_store": med["store.append_phase1"], "baseline": med["raw zarr (5 arrays)"],
            "unit": "ms", "baseline_name": "raw zarr writes of the same 5 arrays",
        },
    ]  # fmt: skip


if __name__ == "__main__":
    main()
