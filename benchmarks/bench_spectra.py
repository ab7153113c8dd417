"""Cost and accuracy of the ways to get a Phase 1 spectrum over tokens.

The Recorder's Phase 1 metrics need every singular value of each layer's
``tokens × features`` output. This measures, on one thread, for ``layers`` matrices
of ``tokens × features`` (default: 4 of 1,024 × 512, the MLP layers of
``bench_capture_hf.py``'s GPT-2 with tokens as samples), with singular values
spread over three decades:

- the Recorder's method: float64 Gram matrix + ``eigvalsh`` (timed separately);
- a float32 Gram matrix + ``eigvalsh``;
- ``torch.linalg.svdvals`` in float32;

and the largest error of each against ``svdvals`` in float64, relative to σ1, on
that matrix and on a rank-deficient one (half its features mixes of the others).

Run::

    python benchmarks/bench_spectra.py                  # ~1 min
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
    import torch

    torch.set_num_threads(1)
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
    return {
        "sizes": {"layers": layers, "tokens": tokens, "features": features},
        "ms": {
            "float64 Gram": _best_ms(lambda: x64.transpose(1, 2) @ x64, repeats),
            "float64 eigvalsh": _best_ms(lambda: torch.linalg.eigvalsh(g64), repeats),
            "float32 Gram": _best_ms(lambda: x32.transpose(1, 2) @ x32, repeats),
            "svdvals float32": _best_ms(lambda: torch.linalg.svdvals(x32), repeats),
        },
        "max_error_over_sigma1": {
            "float64 Gram + eigvalsh": error(from_gram(x64)),
            "float32 Gram + eigvalsh": error(from_gram(x32)),
            "svdvals float32": error(torch.linalg.svdvals(x32)),
        },
        "max_error_over_sigma1_rank_deficient": {
            "float64 Gram + eigvalsh": error(from_gram(deficient), ref_d, top_d),
            "float32 Gram + eigvalsh": error(from_gram(deficient.float()), ref_d, top_d),
            "svdvals float32": error(torch.linalg.svdvals(deficient.float()), ref_d, top_d),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(measure(args.layers, args.tokens, args.features, args.repeats), indent=2))


if __name__ == "__main__":
    main()
