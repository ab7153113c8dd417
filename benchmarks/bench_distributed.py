"""The out-of-core attention measurement on dask.distributed versus the threaded scheduler.

Same store, same lazy graph (entropy per (step, layer, head)); only the scheduler
changes: dask's threaded scheduler with 2 threads (the baseline), a LocalCluster
of 1 worker process and one of 2 worker processes (1 thread each). On one machine
the processes pay for inter-process transfers and task bookkeeping; the point of
the cluster is reaching machines (and memory) beyond this one.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 1 << 20
SHAPE = dict(samples=16, heads=8, seq=128)
STEP_BYTES = 16 * 8 * 128 * 128 * 4


def _graph(path: Path) -> tuple[list[Any], int]:
    import ndt_store
    from ndt_store import _dims as D
    from ndt_store.measures.attention import attention_entropy

    store = ndt_store.open_store(path, mode="r")
    arrays = store.attention(store.experiments()[0])
    lazy = [attention_entropy(a).mean((D.SAMPLE, D.QUERY), skipna=False) for a in arrays.values()]
    return lazy, sum(a.nbytes for a in arrays.values())


def _best(fn: Any, n: int = 2) -> float:
    best = float("inf")
    for _ in range(n):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(quick: bool) -> list[dict[str, Any]]:
    """Run the benchmark; rows as described in ``benchmarks/run.py``."""
    import dask
    import numpy as np

    from ndt_store.cluster import use_scheduler
    from ndt_store.synth import synth_store

    size = 256 if quick else 1024
    tmp = Path(tempfile.mkdtemp(prefix="ndt-bench-dist-", dir="/tmp"))
    rows = []
    try:
        path = tmp / "attn.zarr"
        synth_store(path, experiments=1, steps=size * MIB // STEP_BYTES, layers=1, records=10,
                    kinds=("attention",), **SHAPE)  # fmt: skip
        lazy, nbytes = _graph(path)
        gb = nbytes / 1e9
        with dask.config.set(scheduler="threads", num_workers=2):
            expected = dask.compute(*lazy)
            threaded = _best(lambda: dask.compute(*lazy))
        for workers in (1, 2):
            with use_scheduler(workers=workers, memory_limit="1GB") as client:
                got = client.gather(client.compute(lazy))
                for a, b in zip(got, expected, strict=True):
                    np.testing.assert_array_equal(a.values, b.values)
                secs = _best(lambda c=client: c.gather(c.compute(lazy)))
            rows.append({
                "case": f"entropy per (step, layer, head), {size} MiB store, "
                        f"LocalCluster {workers} worker process(es) x 1 thread",
                "ndt_store": gb / secs, "baseline": gb / threaded, "unit": "GB/s",
                "higher_is_better": True,
                "baseline_name": "same graph on the threaded scheduler (2 threads)",
                "notes": "results identical to the threaded run; worker memory not counted "
                         "in peak MB (client process only)",
            })  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    from _script import main

    main(run, __doc__)
