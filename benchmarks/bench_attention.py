"""Attention entropy per (step, head): labeled reduction vs hand-written numpy.

Runs as a script (prints GB/s and the ratio) or under pytest as a smoke test on a
small array. The labeled path is ``attention_entropy(attn).mean(("sample", "query"))``
on an in-memory DataArray; the reference is the loop-free numpy expression
``-(p * log p).sum(-1).mean((1, 3))`` with ``0 log 0`` handled by ``np.where``.

Usage::

    python benchmarks/bench_attention.py [--gib 1.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from ndt_store._dims import HEAD, KEY, QUERY, SAMPLE, STEP
from ndt_store.measures.attention import attention_entropy

DIMS = (STEP, SAMPLE, HEAD, QUERY, KEY)


def make_attention(gib: float, seed: int = 0) -> xr.DataArray:
    """float32 softmax attention of about ``gib`` GiB: (step, 32, 8, 128, 128)."""
    per_step = 32 * 8 * 128 * 128 * 4
    steps = max(1, round(gib * 2**30 / per_step))
    rng = np.random.default_rng(seed)
    p = rng.random((steps, 32, 8, 128, 128), dtype=np.float32)
    p **= 4  # peaky rows
    p /= p.sum(-1, keepdims=True)
    return xr.DataArray(p, dims=DIMS, coords={STEP: np.arange(steps) * 100})


def labeled(attn: xr.DataArray) -> xr.DataArray:
    return attention_entropy(attn).mean((SAMPLE, QUERY), skipna=False)


def numpy_reference(p: np.ndarray) -> np.ndarray:
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)
    return -plogp.sum(-1).mean(axis=(1, 3))


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(gib: float = 1.0, repeat: int = 3) -> dict[str, float]:
    attn = make_attention(gib)
    nbytes = attn.nbytes
    np.testing.assert_allclose(labeled(attn).values, numpy_reference(attn.values), rtol=1e-4)
    t_lab = best_of(lambda: labeled(attn), repeat)
    t_np = best_of(lambda: numpy_reference(attn.values), repeat)
    return {
        "bytes": nbytes,
        "labeled_GBps": nbytes / t_lab / 1e9,
        "numpy_GBps": nbytes / t_np / 1e9,
        "labeled_over_numpy_time": t_lab / t_np,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows for ``benchmarks/run.py``: labeled reduction vs hand-written numpy, in memory."""
    res = measure(gib=0.25 if quick else 1.0, repeat=3)
    return [
        {
            "case": f"attention entropy per (step, head), {res['bytes'] / 2**30:.2f} GiB float32 "
            "in memory: labeled reduction",
            "ndt_store": res["labeled_GBps"], "baseline": res["numpy_GBps"], "unit": "GB/s",
            "higher_is_better": True, "target": "within 1.5x of numpy (ratio >= 0.67)",
            "met": res["labeled_over_numpy_time"] <= 1.5,
            "baseline_name": "hand-written loop-free numpy (-(p*log p).sum(-1), mean)",
        }
    ]  # fmt: skip


def test_bench_attention_smoke() -> None:
    result = measure(gib=0.01, repeat=1)
    assert result["labeled_GBps"] > 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    res = measure(args.gib, args.repeat)
    print(
        f"{res['bytes'] / 2**30:.2f} GiB float32: labeled {res['labeled_GBps']:.2f} GB/s, "
        f"numpy {res['numpy_GBps']:.2f} GB/s, time ratio {res['labeled_over_numpy_time']:.2f}"
    )
