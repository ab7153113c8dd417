"""Overhead of recording during training, on the quickstart transformer (digits, CPU).

Measures, in one process and interleaved (the machine is shared and noisy):

* plain training steps (forward, backward, Adam step);
* the same loop with a Recorder writing Phase 1 metrics every 5 steps, no
  snapshots: from the training forward's layer outputs (``metrics_from="batch"``,
  the default and the study's method) — the overhead target is <= 10 % — and,
  for comparison, from an extra forward on the fixed probe batch
  (``metrics_from="probe"``, 64 and all 128 probe samples);
* the same with jump-triggered snapshots on (a copy of the model state kept at every
  measurement; the snapshots of a jump are made from it when one is found), and with
  a zero snapshot budget (what the state copies and the online rule cost alone);
* one full snapshot (state dict + probe activations + attention): time on the
  training thread to take it, and time to write it to the store.

Run:  python benchmarks/bench_capture.py [--steps 2000] [--repeats 3] [--threads 1]

2,000 steps (about 6 s a loop) include Phase 1 appends at their usual rate
(every 200 records or 5 s); the store is opened and closed outside the timing.
Prints a table and writes benchmarks/results/capture.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import ndt_store
from ndt_store.capture import JumpPolicy, Recorder
from ndt_store.quickstart import build_model, load_digits_split

RESULTS = Path(__file__).resolve().parent / "results" / "capture.json"


def _loop(mode: str, steps: int, data: dict, root: Path, tag: str) -> float:
    torch.manual_seed(0)
    model = build_model("transformer_digits")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = torch.from_numpy(data["x_train"])
    y = torch.from_numpy(data["y_train"])
    probe = (torch.from_numpy(data["x_probe"]), torch.from_numpy(data["y_probe"]))
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(y) - 64, 64)]

    def train(rec: Recorder | None) -> float:
        t0 = time.perf_counter()
        for step in range(steps):
            xb, yb = batches[step % len(batches)]
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            if rec is not None:
                rec.step(step, loss=loss)
            opt.zero_grad()
        return time.perf_counter() - t0

    if mode == "plain":
        return train(None)
    store = ndt_store.open_store(root / f"{tag}.zarr")
    jumps = {"jumps": JumpPolicy(max_count=9), "jumps_nobudget": JumpPolicy(max_count=0)}.get(mode)
    k = 64 if mode in ("phase1_64", "phase1") else None
    source = "batch" if mode in ("phase1", "jumps", "jumps_nobudget") else "probe"
    with Recorder(
        store,
        "bench",
        model,
        probe=probe,
        every=5,
        jump_snapshots=jumps,
        metric_samples=k,
        metrics_from=source,
    ) as rec:
        elapsed = train(rec)
    return elapsed


def _snapshot_cost(data: dict, root: Path, repeats: int) -> dict[str, float]:
    model = build_model("transformer_digits")
    probe = (torch.from_numpy(data["x_probe"]), torch.from_numpy(data["y_probe"]))
    store = ndt_store.open_store(root / "snap.zarr")
    take, write = [], []
    with Recorder(store, "snap", model, probe=probe, every=10**9) as rec:
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            rec.snapshot(i)
            t1 = time.perf_counter()
            rec.flush()
            t2 = time.perf_counter()
            if i:  # the first snapshot also creates the arrays
                take.append(t1 - t0)
                write.append(t2 - t1)
        nbytes = rec.estimate["snapshot"]
    return {
        "snapshot_bytes": nbytes,
        "take_ms": 1e3 * statistics.median(take),
        "write_ms": 1e3 * statistics.median(write),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    measure(args.steps, args.repeats, args.threads, write=True)


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows for ``benchmarks/run.py``: recording overhead vs plain training."""
    res = measure(600 if quick else 2000, 2 if quick else 3, 1, write=False)
    ms = res["ms_per_step"]
    snap = res["snapshot"]
    rows: list[dict[str, Any]] = []
    for key, label in (
        ("phase1", "Phase 1 every 5 steps from the training forward (the default)"),
        ("phase1_64", "Phase 1 every 5 steps from an extra probe forward (64 samples)"),
        ("phase1_probe", "Phase 1 every 5 steps from an extra probe forward (all 128)"),
        ("jumps", "Phase 1 + jump-triggered snapshots (model state kept every 5 steps)"),
        (
            "jumps_nobudget",
            "the same with a zero snapshot budget (state copies and the online jump rule only)",
        ),
    ):
        rows.append({
            "case": f"quickstart transformer training step with the Recorder: {label}",
            "ndt_store": ms[key], "baseline": ms["plain"], "unit": "ms",
            "baseline_name": "the same loop without the Recorder",
            "target": "overhead <= 10%" if key == "phase1" else None,
            "met": ms[key] <= 1.10 * ms["plain"] if key == "phase1" else None,
            "notes": f"overhead {100 * (ms[key] / ms['plain'] - 1):.1f}%",
        })  # fmt: skip
    rows.append({
        "case": f"one full snapshot ({snap['snapshot_bytes'] / 2**20:.2f} MiB): time on the "
        "training thread",
        "ndt_store": snap["take_ms"], "baseline": snap["write_ms"], "unit": "ms",
        "baseline_name": "time to commit it in the background writer thread",
    })  # fmt: skip
    return rows


def measure(steps: int, repeats: int, threads: int, *, write: bool) -> dict[str, Any]:
    """Time plain vs recorded training of the quickstart transformer; medians."""

    class _Args:
        pass

    args = _Args()
    args.steps, args.repeats, args.threads = steps, repeats, threads  # type: ignore[attr-defined]
    torch.set_num_threads(args.threads)
    data = load_digits_split()
    times: dict[str, list[float]] = {
        "plain": [],
        "phase1": [],
        "phase1_64": [],
        "phase1_probe": [],
        "jumps": [],
        "jumps_nobudget": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _loop("plain", 50, data, root, "warm")  # warm-up
        for r in range(args.repeats):
            for mode in times:
                times[mode].append(_loop(mode, args.steps, data, root, f"{mode}{r}"))
        snap = _snapshot_cost(data, root, 5)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_step = {k: 1e3 * v / args.steps for k, v in med.items()}
    loops = [
        ("plain training", per_step["plain"]),
        ("+ Phase 1, training forward", per_step["phase1"]),
        ("+ Phase 1, probe (64)", per_step["phase1_64"]),
        ("+ Phase 1, probe (128)", per_step["phase1_probe"]),
        ("+ jump snapshots", per_step["jumps"]),
        ("+ jumps, zero budget", per_step["jumps_nobudget"]),
    ]
    rows = [(name, ms, ms / per_step["plain"] - 1) for name, ms in loops]
    print(
        f"quickstart transformer, batch 64, probe 128, torch threads {args.threads}, "
        f"{args.steps} steps x {args.repeats} repeats (median)"
    )
    print(f"{'loop':28s} {'ms/step':>9s} {'overhead':>9s}")
    for name, ms, over in rows:
        print(f"{name:28s} {ms:9.3f} {100 * over:8.1f}%")
    print(
        f"one full snapshot ({snap['snapshot_bytes'] / 2**20:.2f} MiB): "
        f"{snap['take_ms']:.1f} ms on the training thread, "
        f"{snap['write_ms']:.1f} ms to commit in the writer thread"
    )
    result = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": args.threads,
            "cpus": len(__import__("os").sched_getaffinity(0)),
        },
        "steps": args.steps,
        "repeats": args.repeats,
        "ms_per_step": per_step,
        "raw_seconds": times,
        "overhead_phase1": per_step["phase1"] / per_step["plain"] - 1,
        "overhead_phase1_probe64": per_step["phase1_64"] / per_step["plain"] - 1,
        "overhead_phase1_probe128": per_step["phase1_probe"] / per_step["plain"] - 1,
        "overhead_jumps": per_step["jumps"] / per_step["plain"] - 1,
        "overhead_jumps_nobudget": per_step["jumps_nobudget"] / per_step["plain"] - 1,
        "snapshot": snap,
        "command": "python benchmarks/bench_capture.py "
        f"--steps {args.steps} --repeats {args.repeats} --threads {args.threads}",
    }
    if write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
