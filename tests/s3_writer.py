"""A writer for the S3 concurrency tests: snapshots (and Phase 1 rows) into one experiment.

Run as ``python s3_writer.py URL EXPERIMENT WRITER_ID COUNT MODE [SECONDS [PAUSE]]``
with the endpoint and credentials in the environment. Writer ``k`` stores snapshots at steps
``100_000 * k + j``; writer 0 also appends one Phase 1 record (step ``j``) after each
snapshot. An attempt refused with :class:`~ndt_store.ConflictError` (the other
writer holds the lock) is retried; anything else fails the writer. Prints one
JSON line: the committed snapshot steps, Phase 1 steps and the number of refusals.

``MODE`` is ``fresh`` (a new ``Store`` object for every write), ``refresh`` (one
long-lived object, ``refresh()`` before each write) or ``long`` (one long-lived
object, never refreshed).
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

import numpy as np
import xarray as xr

import ndt_store
from ndt_store import _dims as D

LAYERS = ["l0", "l1"]


def phase1_row(step: int) -> xr.Dataset:
    """One Phase 1 record over :data:`LAYERS`."""
    data: dict[str, Any] = {
        m: ((D.STEP, D.LAYER), np.full((1, len(LAYERS)), float(step))) for m in D.PHASE1_METRICS
    }
    data[D.LOSS] = ((D.STEP,), np.asarray([1.0 / (step + 1)]))
    return xr.Dataset(data, coords={D.STEP: [step], D.LAYER: LAYERS})


def retry(fn: Any, refusals: list[int]) -> Any:
    """Call ``fn`` until it is not refused by another writer's lock."""
    while True:
        try:
            return fn()
        except ndt_store.ConflictError:
            refusals.append(1)
            time.sleep(0.01)


def run(
    url: str,
    experiment: str,
    writer: int,
    count: int,
    mode: str,
    seconds: float = 0.0,
    pause: float = 0.0,
) -> dict[str, Any]:
    """Write ``count`` snapshots (and Phase 1 rows for writer 0); report what committed.

    With ``seconds`` > 0, stop early once that much time has passed; ``pause`` is the
    longest random wait between two writes (the training step between snapshots).
    """
    deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
    opts = {"skip_instance_cache": True}
    long_lived = ndt_store.open_store(url, storage_options=opts)
    retry(lambda: long_lived.create_run(experiment, {"arch_name": "soak"}, LAYERS), [])
    snaps: list[int] = []
    rows: list[int] = []
    refusals: list[int] = []

    def store() -> ndt_store.Store:
        if mode == "fresh":
            return ndt_store.open_store(url, storage_options=opts)
        if mode == "refresh":
            long_lived.refresh()
        return long_lived

    for j in range(count):
        if time.monotonic() > deadline:
            break
        step = 100_000 * writer + j
        weights = {"w": np.full((3, 2), float(step), dtype=np.float32)}
        s = store()  # refused attempts are retried through the same object
        retry(lambda s=s, step=step, weights=weights: s.write_snapshot(
            experiment, step, weights=weights), refusals)  # fmt: skip
        snaps.append(step)
        if writer == 0:
            s = store()
            retry(lambda s=s, j=j: s.append_phase1(experiment, phase1_row(j)), refusals)
            rows.append(j)
        if pause:
            time.sleep(random.uniform(0, pause))
    return {"writer": writer, "snapshots": snaps, "phase1": rows, "refusals": len(refusals)}


if __name__ == "__main__":
    url, experiment, writer, count, mode = sys.argv[1:6]
    seconds = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    pause = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
    result = run(url, experiment, int(writer), int(count), mode, seconds, pause)
    print(json.dumps(result), flush=True)
