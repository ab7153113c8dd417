"""Cost and accuracy of the ways to get a Phase 1 spectrum over tokens.

The Recorder's Phase 1 metrics need every singular value of each layer's
``tokens × features`` output. This measures, on one thread, for ``layers`` matrices
of ``tokens × features`` (default: 4 of 1,024 × 512, the MLP layers of
``bench_capture_hf.py``'s GPT-2 with tokens as samples), with singular values
spread over three decades:

- the Recorder's method for models on the CPU (its writer thread): numpy, a float64
  Gram matrix as one symmetric rank-k update (``A.T @ A``) + ``eigvalsh``, each timed;
- the same in torch (the method on accelerators, and on the CPU before 2026-12-04);
- a float32 Gram matrix + ``eigvalsh``;
- ``torch.linalg.svdvals`` in float32;

and the largest error of each against ``svdvals`` in float64, relative to σ1, on
that matrix and on a rank-deficient one (half its features mixes of the others).

It also times one record of ``bench_capture_hf.py``'s 17 tracked layers (1,024 tokens;
4 × 384, 8 × 128 and 5 × 512 features) through the writer's kernel
(``ndt_store._kernels.dimensionality.gram_singular_values``), wall and CPU time, with
numpy's BLAS on its default threads and on one thread (what the writer uses), and
through the torch kernel on one thread.

Run::

    python benchmarks/bench_spectra.py                  # ~10 s
    python benchmarks/bench_spectra.py --tokens 512     # other sizes
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any


def _best_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 1)


def measure(layers: int = 4, tokens: int = 1024, features: int = 512, repeats: int = 3) -> dict:
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from ndt_store._kernels.dimensionality import gram_singular_values

    torch.set_num_threads(1)
    limit = threadpool_limits(1)  # numpy's BLAS on one thread too
    gen = torch.Generator().manual_seed(0)
    scale = torch.logspace(0, -3, features, dtype=torch.float64)
    x64 = torch.randn(layers, tokens, features, generator=gen, dtype=torch.float64) * scale
    x32 = x64.float()
    ref = torch.linalg.svdvals(x64)
    top = ref[:, 0].max()

    def from_gram(x: Any) -> Any:
        gram = x.transpose(1, 2) @ x
        lam = torch.linalg.eigvalsh(gram.double())
        return lam.clamp(min=0).sqrt().flip(-1)

    def error(s: Any, ref: Any = ref, top: Any = top) -> float:
        return float((s.double() - ref).abs().max() / top)

    # a rank-deficient output (half the features a mix of the others, as after a
    # narrow layer): its zero singular values are where a float32 Gram loses most
    low = x64[..., : features // 2]
    deficient = torch.cat(
        [
            low,
            low
            @ torch.randn(
                features // 2, features - features // 2, generator=gen, dtype=torch.float64
            ),
        ],
        -1,
    )
    ref_d = torch.linalg.svdvals(deficient)
    top_d = ref_d[:, 0].max()

    g64 = x64.transpose(1, 2) @ x64
    n64 = [m.numpy() for m in x64]
    ng64 = [m.T @ m for m in n64]

    def from_numpy(x: Any) -> Any:
        return torch.from_numpy(np.stack(gram_singular_values([m.numpy() for m in x])))

    result = {
        "sizes": {"layers": layers, "tokens": tokens, "features": features},
        "ms": {
            "numpy float64 Gram (A.T @ A)": _best_ms(lambda: [m.T @ m for m in n64], repeats),
            "numpy float64 eigvalsh": _best_ms(lambda: np.linalg.eigvalsh(ng64), repeats),
            "torch float64 Gram": _best_ms(lambda: x64.transpose(1, 2) @ x64, repeats),
            "torch float64 eigvalsh": _best_ms(lambda: torch.linalg.eigvalsh(g64), repeats),
            "float32 Gram": _best_ms(lambda: x32.transpose(1, 2) @ x32, repeats),
            "svdvals float32": _best_ms(lambda: torch.linalg.svdvals(x32), repeats),
        },
        "max_error_over_sigma1": {
            "numpy float64 Gram + eigvalsh": error(from_numpy(x64)),
            "torch float64 Gram + eigvalsh": error(from_gram(x64)),
            "float32 Gram + eigvalsh": error(from_gram(x32)),
            "svdvals float32": error(torch.linalg.svdvals(x32)),
        },
        "max_error_over_sigma1_rank_deficient": {
            "numpy float64 Gram + eigvalsh": error(from_numpy(deficient), ref_d, top_d),
            "torch float64 Gram + eigvalsh": error(from_gram(deficient), ref_d, top_d),
            "float32 Gram + eigvalsh": error(from_gram(deficient.float()), ref_d, top_d),
            "svdvals float32": error(torch.linalg.svdvals(deficient.float()), ref_d, top_d),
        },
    }
    limit.unregister()
    return result


def threads(repeats: int = 5) -> dict[str, dict[str, float]]:
    """Wall and CPU ms for one record of the 17 layers, by kernel and BLAS threads."""
    import numpy as np
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from ndt_store._kernels.dimensionality import gram_singular_values
    from ndt_store.capture.metrics import gram_singular_values as torch_kernel

    rng = np.random.default_rng(0)
    shapes = [(1024, 384), (1024, 128), (1024, 512), (1024, 128)] * 4 + [(1024, 512)]
    acts = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    tacts = [torch.from_numpy(a) for a in acts]

    def timed(fn: Callable[[], Any]) -> dict[str, float]:
        wall, cpu = [], []
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
        return {"wall_ms": round(statistics.median(wall) * 1e3, 1),
                "cpu_ms": round(statistics.median(cpu) * 1e3, 1)}  # fmt: skip

    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    torch.set_num_threads(1)
    out = {
        f"numpy, BLAS default threads ({blas[0] if blas else '?'})": timed(
            lambda: gram_singular_values(acts)
        )
    }
    with threadpool_limits(1, user_api="blas"):
        out["numpy, BLAS on one thread (the writer)"] = timed(lambda: gram_singular_values(acts))
    out["torch, one thread"] = timed(lambda: torch_kernel(tacts))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = measure(args.layers, args.tokens, args.features, args.repeats)
    result["one record of 17 layers"] = threads()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
