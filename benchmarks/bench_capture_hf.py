"""Recording a Hugging Face GPT-2-style model: overhead, bytes and memory.

On the CPU (the default): a 4-layer, width-128 ``transformers`` GPT-2 (vocabulary 512,
random init) trained with AdamW on 16 x 64-token batches (a training step takes
>= 100 ms here). With ``--device cuda``: an 8-layer, width-512 GPT-2 (vocabulary 8,192,
16 x 256-token batches, probe 8 x 256) on the GPU, where the Phase 1 spectra are computed
on the device; results go to ``capture_hf_cuda.json``.
Measured in one process, loops interleaved (plain, recorded, plain, ...; the
machine is shared and noisy), medians over repeats:

* plain training steps;
* the Recorder with its defaults (Phase 1 every 5 steps over tokens, from the
  training forward, Conv1D layers and lm_head tracked) — target overhead <= 5 %;
* the same with jump-triggered snapshots on (model state kept at every
  measurement, snapshots of a jump with eager attention) — target <= 10 %;
* bytes per snapshot: the estimate of bytes on disk (``Recorder.estimate``'s
  ``snapshot_stored``: each tensor's first MiB compressed at entry) against the bytes
  the second snapshot of a run added on disk — target within 10 %; the uncompressed
  estimate is reported beside it;
* a burst of snapshots (one every step) through a writer queue bounded at
  ``--queue-mib``: the queue's peak bytes and the process's peak RSS.

Run:  python benchmarks/bench_capture_hf.py [--steps 60] [--repeats 3] [--skip-spectra]
      python benchmarks/bench_capture_hf.py --device cuda   (on a machine with a GPU)

Prints a table and writes benchmarks/results/capture_hf.json (capture_hf_cuda.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import ndt_store
from ndt_store.capture import JumpPolicy, Recorder

RESULTS = Path(__file__).resolve().parent / "results" / "capture_hf.json"
# model and batch sizes per device: (layers, width, heads, vocab, batch, seq, probe)
SIZES = {"cpu": (4, 128, 4, 512, 16, 64, 8), "cuda": (8, 512, 8, 8192, 16, 256, 8)}
DEVICE = torch.device("cpu")
N_LAYER, WIDTH, N_HEAD, VOCAB, BATCH, SEQ, PROBE = SIZES["cpu"]


def _use_device(name: str) -> None:
    global DEVICE, N_LAYER, WIDTH, N_HEAD, VOCAB, BATCH, SEQ, PROBE, RESULTS
    DEVICE = torch.device(name)
    N_LAYER, WIDTH, N_HEAD, VOCAB, BATCH, SEQ, PROBE = SIZES[DEVICE.type]
    if DEVICE.type != "cpu":
        RESULTS = RESULTS.with_name(f"capture_hf_{DEVICE.type}.json")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def build_model() -> Any:
    import transformers

    cfg = transformers.GPT2Config(
        n_layer=N_LAYER,
        n_embd=WIDTH,
        n_head=N_HEAD,
        vocab_size=VOCAB,
        n_positions=SEQ,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).to(DEVICE)


def _batches(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    # a learnable stream: token t+1 depends on token t (loss falls, dynamics move)
    out = []
    for _ in range(n):
        start = torch.randint(0, VOCAB, (BATCH, 1), generator=g)
        steps = torch.randint(1, 4, (BATCH, SEQ), generator=g).cumsum(1)
        out.append(((start + steps) % VOCAB).to(DEVICE))
    return out


def _probe() -> torch.Tensor:
    return _batches(1)[0][:PROBE].cpu()


def _loop(mode: str, steps: int, root: Path, tag: str) -> dict[str, Any]:
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = _batches(8)
    rec = None
    if mode != "plain":
        store = ndt_store.open_store(root / f"{tag}.zarr")
        # a short window and a low threshold: jumps fire within a short benchmark
        jumps = JumpPolicy(window=4, threshold=1.2, max_count=6) if mode == "jumps" else None
        tokens = False if mode == "tokens_off" else None
        rec = Recorder(
            store, "bench", model, probe=_probe(), every=5, jump_snapshots=jumps, tokens=tokens
        )
        rec.__enter__()
    _sync()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        for step in range(steps):
            ids = batches[step % len(batches)]
            loss = model(ids, labels=ids).loss
            loss.backward()
            opt.step()
            if rec is not None:
                rec.step(step, loss=loss)
            opt.zero_grad()
        _sync()
        elapsed = time.perf_counter() - t0
    finally:
        if rec is not None:
            rec.__exit__(None, None, None)
    # CPU seconds of all threads, the writer's included (it finishes in __exit__)
    cpu = time.process_time() - c0
    made = len(rec.jumps.written) if rec is not None and rec.jumps is not None else 0
    return {"seconds": elapsed, "cpu_seconds": cpu, "jump_snapshots": made}


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _snapshot_bytes(root: Path) -> dict[str, Any]:
    """The estimate against the bytes one snapshot adds on disk (the second of a run)."""
    model = build_model()
    est = Recorder.estimate(model, _probe())
    store = ndt_store.open_store(root / "bytes.zarr")
    with Recorder(store, "bytes", model, probe=_probe(), every=10**9) as rec:
        rec.snapshot(0)
        rec.flush()
        before = _du(root / "bytes.zarr")
        rec.snapshot(1)
        rec.flush()
        after = _du(root / "bytes.zarr")
    return {
        "estimate": est["snapshot_stored"],
        "estimate_uncompressed": est["snapshot"],
        "estimate_weights": est["snapshot_weights"],
        "estimate_activations": est["snapshot_activations"],
        "estimate_attention": est["snapshot_attention"],
        "on_disk": after - before,
        "ratio": (after - before) / est["snapshot_stored"],
        "ratio_to_uncompressed": (after - before) / est["snapshot"],
    }


def _burst(root: Path, steps: int, queue_mib: int) -> dict[str, Any]:
    """A snapshot every step through a byte-bounded queue: peak queue bytes, peak RSS."""
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = _batches(4)
    store = ndt_store.open_store(root / "burst.zarr")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with Recorder(
        store,
        "burst",
        model,
        probe=_probe(),
        every=5,
        snapshot_every=1,
        max_queue_bytes=queue_mib * 2**20,
    ) as rec:
        t0 = time.perf_counter()
        for step in range(steps):
            ids = batches[step % len(batches)]
            loss = model(ids, labels=ids).loss
            loss.backward()
            opt.step()
            rec.step(step, loss=loss)
            opt.zero_grad()
        elapsed = time.perf_counter() - t0
        peak_queue = rec._writer.peak_queued_bytes if rec._writer else None
    return {
        "snapshots": steps,
        "snapshot_bytes": rec.estimate["snapshot"],
        "queue_bound_bytes": queue_mib * 2**20,
        "peak_queue_bytes": peak_queue,
        "peak_rss_mb_before": rss0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ms_per_step": 1e3 * elapsed / steps,
    }


def measure(steps: int, repeats: int, queue_mib: int, *, write: bool) -> dict[str, Any]:
    if DEVICE.type == "cpu":
        torch.set_num_threads(1)
    modes = ("plain", "defaults", "tokens_off", "plain2", "jumps")
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    jumps_made: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _loop("plain", 5, root, "warm")
        for r in range(repeats):
            for mode in modes:
                got = _loop(mode.rstrip("2"), steps, root, f"{mode}{r}")
                times[mode].append(got["seconds"])
                cpu[mode].append(got["cpu_seconds"])
                if mode == "jumps":
                    jumps_made.append(got["jump_snapshots"])
        snap = _snapshot_bytes(root)
        burst = _burst(root, 20 if DEVICE.type == "cpu" else 10, queue_mib)
    # paired: each recorded loop against the plain loop run just before it
    over_defaults = [d / p - 1 for d, p in zip(times["defaults"], times["plain"], strict=True)]
    over_jumps = [j / p - 1 for j, p in zip(times["jumps"], times["plain2"], strict=True)]
    over_seq = [j / p - 1 for j, p in zip(times["tokens_off"], times["plain"], strict=True)]
    cpu_over = {
        m: statistics.median(
            [
                c / p - 1
                for c, p in zip(cpu[m], cpu["plain2" if m == "jumps" else "plain"], strict=True)
            ]
        )
        for m in ("defaults", "tokens_off", "jumps")
    }
    ms = {m: 1e3 * statistics.median(v) / steps for m, v in times.items()}
    cpu_ms = {m: 1e3 * statistics.median(v) / steps for m, v in cpu.items()}
    result = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": len(os.sched_getaffinity(0)),
            "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
        },
        "model": f"GPT-2 {N_LAYER} layers x {WIDTH}, vocab {VOCAB}, batch {BATCH} x {SEQ} tokens, "
        f"probe {PROBE} x {SEQ}",
        "steps": steps,
        "repeats": repeats,
        "ms_per_step": ms,
        "raw_seconds": times,
        "cpu_ms_per_step": cpu_ms,
        "load_average": os.getloadavg(),
        "overhead_defaults": statistics.median(over_defaults),
        "overhead_jumps": statistics.median(over_jumps),
        "overhead_tokens_off": statistics.median(over_seq),
        "cpu_overhead": cpu_over,
        "jump_snapshots_per_run": jumps_made,
        "snapshot": snap,
        "burst": burst,
        "command": f"python benchmarks/bench_capture_hf.py --steps {steps} --repeats {repeats} "
        f"--queue-mib {queue_mib}" + (f" --device {DEVICE.type}" if DEVICE.type != "cpu" else ""),
    }
    print(
        result["model"] + f", {steps} steps x {repeats} repeats on {result['machine']['device']}"
        f", torch threads {result['machine']['threads']}"
    )
    print(
        f"plain {ms['plain']:.1f} ms/step; defaults {ms['defaults']:.1f} "
        f"({100 * result['overhead_defaults']:.1f}% paired); jumps {ms['jumps']:.1f} "
        f"({100 * result['overhead_jumps']:.1f}% paired, jump snapshots {jumps_made})"
    )
    print(f"tokens=False: {ms['tokens_off']:.1f} ms/step "
          f"({100 * result['overhead_tokens_off']:.1f}% paired)")  # fmt: skip
    print(
        "CPU ms/step (all threads): "
        + ", ".join(f"{k} {v:.1f}" for k, v in cpu_ms.items())
        + f"; load average {os.getloadavg()[0]:.1f} on {result['machine']['cpus']} CPUs"
    )
    print(
        f"snapshot: estimate on disk {snap['estimate'] / 2**20:.2f} MiB (uncompressed "
        f"{snap['estimate_uncompressed'] / 2**20:.2f} MiB), on disk "
        f"{snap['on_disk'] / 2**20:.2f} MiB (ratio {snap['ratio']:.3f})"
    )
    print(
        f"burst of {burst['snapshots']} snapshots: queue peak "
        f"{burst['peak_queue_bytes'] / 2**20:.1f} MiB (bound {queue_mib} MiB), peak RSS "
        f"{burst['peak_rss_mb']:.0f} MB"
    )
    if write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS}")
    return result


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows for ``benchmarks/run.py``."""
    res = measure(20 if quick else 60, 1 if quick else 3, 48, write=False)
    ms, snap, burst = res["ms_per_step"], res["snapshot"], res["burst"]
    over_d, over_j = res["overhead_defaults"], res["overhead_jumps"]
    return [
        {
            "case": "HF GPT-2 training step with the Recorder (defaults: Phase 1 every 5 steps "
            "over tokens)",
            "ndt_store": ms["defaults"], "baseline": ms["plain"], "unit": "ms",
            "baseline_name": "the same loop without the Recorder",
            "target": "overhead <= 5%", "met": over_d <= 0.05,
            "notes": f"paired overhead {100 * over_d:.1f}%",
        },
        {
            "case": "HF GPT-2 training step with the Recorder and jump-triggered snapshots",
            "ndt_store": ms["jumps"], "baseline": ms["plain2"], "unit": "ms",
            "baseline_name": "the same loop without the Recorder",
            "target": "overhead <= 10%", "met": over_j <= 0.10,
            "notes": f"paired overhead {100 * over_j:.1f}%, jump snapshots "
            f"{res['jump_snapshots_per_run']}",
        },
        {
            "case": "HF GPT-2 bytes one snapshot adds on disk",
            "ndt_store": snap["on_disk"] / 2**20, "baseline": snap["estimate"] / 2**20,
            "unit": "MiB", "baseline_name": "Recorder.estimate['snapshot_stored'] (on disk)",
            "target": "within 10% of the estimate", "met": abs(snap["ratio"] - 1) <= 0.10,
            "notes": f"ratio {snap['ratio']:.3f}; to the uncompressed estimate "
            f"({snap['estimate_uncompressed'] / 2**20:.2f} MiB): "
            f"{snap['ratio_to_uncompressed']:.3f}",
        },
        {
            "case": "HF GPT-2, a snapshot every step: writer queue peak",
            "ndt_store": burst["peak_queue_bytes"] / 2**20,
            "baseline": burst["queue_bound_bytes"] / 2**20, "unit": "MiB",
            "baseline_name": "max_queue_bytes",
            "met": burst["peak_queue_bytes"] <= burst["queue_bound_bytes"],
            "peak_rss_mb": burst["peak_rss_mb"],
        },
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--queue-mib", type=int, default=48)
    p.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="where the model trains; cuda uses a larger model (see the module docstring)",
    )
    p.add_argument(
        "--skip-spectra",
        action="store_true",
        help="diagnosis: replace the Phase 1 eigendecompositions by constants (metrics are "
        "wrong) to see how much of the overhead they are; results are not written",
    )
    p.add_argument(
        "--writer-nice",
        type=int,
        metavar="N",
        help="diagnosis: run the Recorder's writer thread (where the spectra are computed) at "
        "scheduling priority nice N, to see whether it takes CPU time from training; results "
        "are not written",
    )
    args = p.parse_args()
    _use_device(args.device)
    if args.writer_nice is not None:
        import threading

        from ndt_store.capture.writer import BackgroundWriter

        run_writer = BackgroundWriter._run

        def niced(self: Any) -> None:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), args.writer_nice)
            run_writer(self)

        BackgroundWriter._run = niced  # type: ignore[method-assign]
    if args.skip_spectra:
        import ndt_store.capture.metrics as metrics

        def constant(acts: Any) -> list[Any]:
            return [torch.ones(min(a.shape[0], a[0].numel()), dtype=torch.float64) for a in acts]

        metrics.gram_singular_values = constant  # the writer looks it up at each record
    diagnosis = args.skip_spectra or args.writer_nice is not None
    measure(args.steps, args.repeats, args.queue_mib, write=not diagnosis)


if __name__ == "__main__":
    main()
