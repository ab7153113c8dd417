"""Where to compute Phase 1 spectra when the model trains on a GPU (diagnosis).

For the Gram matrices of ``bench_capture_hf.py --device cuda``'s model (32 of 512 x 512
and one of 4,096 x 4,096 per record, from 4,096 tokens), this times:

- ``eigvalsh`` on the GPU, float64 and float32, cuSOLVER and MAGMA;
- ``eigvalsh`` on the host, one thread and all threads, and a pool of threads;
- a training loop of that model with a record every 5 steps, the spectra computed
  (a) inline on the training stream, (b) by a second thread on a side CUDA stream,
  (c) by a second thread on the host (Gram matrices copied asynchronously).

Run (on a machine with a GPU)::

    python benchmarks/bench_spectra_gpu.py     # ~1 min; prints and writes JSON

Results: ``benchmarks/results/spectra_gpu.json``.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _ms(fn: Callable[[], Any], repeats: int = 3, sync: bool = True) -> float:
    times = []
    for _ in range(repeats + 1):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times[1:]) * 1e3, 1)


def kernels() -> dict[str, float]:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(32, 4096, 512, device=dev, generator=g)
    big = torch.randn(4096, 8192, device=dev, generator=g)
    small64 = (x.double().transpose(1, 2) @ x.double()).contiguous()
    big64 = big.double() @ big.double().T
    out: dict[str, float] = {}
    out["gram fp64 32x(4096x512)"] = _ms(lambda: x.double().transpose(1, 2) @ x.double())
    out["gram fp64 4096x8192"] = _ms(lambda: big.double() @ big.double().T)
    for lib in ("cusolver", "magma"):
        try:
            torch.backends.cuda.preferred_linalg_library(lib)
            out[f"gpu {lib} eigvalsh fp64 32x512"] = _ms(lambda: torch.linalg.eigvalsh(small64))
            out[f"gpu {lib} eigvalsh fp32 32x512"] = _ms(
                lambda: torch.linalg.eigvalsh(small64.float())
            )
            out[f"gpu {lib} eigvalsh fp64 4096"] = _ms(lambda: torch.linalg.eigvalsh(big64))
            out[f"gpu {lib} eigvalsh fp32 4096"] = _ms(lambda: torch.linalg.eigvalsh(big64.float()))
        except Exception as exc:  # a backend may be absent
            out[f"gpu {lib} error"] = str(exc)[:200]  # type: ignore[assignment]
    torch.backends.cuda.preferred_linalg_library("default")
    h_small, h_big = small64.cpu(), big64.cpu()
    threads = torch.get_num_threads()
    out["host threads"] = threads
    out["host eigvalsh fp64 32x512 all threads"] = _ms(
        lambda: torch.linalg.eigvalsh(h_small), sync=False
    )
    out["host eigvalsh fp64 4096 all threads"] = _ms(
        lambda: torch.linalg.eigvalsh(h_big), 1, sync=False
    )
    torch.set_num_threads(1)
    out["host eigvalsh fp64 1x512 one thread"] = _ms(
        lambda: torch.linalg.eigvalsh(h_small[0]), sync=False
    )
    torch.set_num_threads(threads)
    with ThreadPoolExecutor(max(1, threads // 2)) as pool:

        def pooled() -> None:
            list(pool.map(torch.linalg.eigvalsh, h_small))

        out[f"host eigvalsh fp64 32x512 pool of {max(1, threads // 2)}"] = _ms(pooled, sync=False)
    return out


def overlap(steps: int = 40, every: int = 5) -> dict[str, float]:
    import bench_capture_hf as bench

    bench._use_device("cuda")
    model = bench.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = bench._batches(4)
    layers = [m for n, m in model.named_modules() if n.endswith(("c_fc", "c_proj", "c_attn"))]
    layers.append(model.lm_head)
    outs: list[Any] = []
    for m in layers:
        m.register_forward_hook(lambda m, a, o: outs.append(o.detach()) if capture[0] else None)
    capture = [False]

    def grams() -> list[Any]:
        gs = []
        for o in outs:
            a = o.reshape(-1, o.shape[-1]).double()
            gs.append(a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T)
        return gs

    def group_eig(gs: list[Any]) -> list[Any]:
        by: dict[tuple[int, ...], list[Any]] = {}
        for gm in gs:
            by.setdefault(tuple(gm.shape), []).append(gm)
        return [torch.linalg.eigvalsh(torch.stack(v)) for v in by.values()]

    side = torch.cuda.Stream()
    work: queue.Queue[Any] = queue.Queue()

    def worker(mode: str) -> None:
        while (item := work.get()) is not None:
            gs, event = item
            if mode == "side":
                with torch.cuda.stream(side):
                    side.wait_event(event)
                    for lam in group_eig(gs):
                        lam.cpu()
            else:
                event.synchronize()
                host = [gm.cpu() for gm in gs]
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(torch.linalg.eigvalsh, host))

    def loop(mode: str) -> float:
        th = None
        if mode in ("side", "host"):
            th = threading.Thread(target=worker, args=(mode,))
            th.start()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for step in range(steps):
            ids = batches[step % len(batches)]
            capture[0] = mode != "plain" and step % every == 0
            outs.clear()
            loss = model(ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if capture[0]:
                gs = grams()
                if mode == "inline":
                    for lam in group_eig(gs):
                        lam.cpu()
                else:
                    event = torch.cuda.Event()
                    event.record()
                    work.put((gs, event))
        if th is not None:
            work.put(None)
            th.join()
        torch.cuda.synchronize()
        return 1e3 * (time.perf_counter() - t0) / steps

    loop("plain")
    res: dict[str, list[float]] = {m: [] for m in ("plain", "inline", "side", "host")}
    for _ in range(2):
        for mode in res:
            res[mode].append(loop(mode))
    return {f"ms/step {m}": round(statistics.median(v), 1) for m, v in res.items()}


RESULTS = Path(__file__).resolve().parent / "results" / "spectra_gpu.json"

if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "cpus": os.cpu_count()}
    result.update(kernels())
    result.update(overlap())
    result["command"] = "python benchmarks/bench_spectra_gpu.py"
    result["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(result, indent=2))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
