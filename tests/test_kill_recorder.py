"""Crash safety: a recording process killed with SIGKILL at random moments.

Every time, the store must open and hold every flushed step, complete and
consistent, and the next run must resume after the last stored step.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import ndt_store
from ndt_store import _dims as D

CHILD = textwrap.dedent(
    """
    import sys, torch, torch.nn as nn
    import ndt_store
    from ndt_store.capture import Recorder

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    store = ndt_store.open_store(sys.argv[1])
    with Recorder(store, "killme", model, probe=(x[:8], y[:8]), every=1, snapshot_every=7,
                  flush_every=3, flush_seconds=0.05) as rec:
        print("ready", rec.start_step, flush=True)
        for step in range(rec.start_step, 10**9):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            rec.step(step, loss=loss)
            opt.zero_grad()
            if step % 4 == 3:
                rec.flush()
                print("flushed", step, flush=True)
    """
)


def _check_store(path: Path, flushed: int | None) -> int:
    store = ndt_store.open_store(path, mode="r")
    assert store.experiments() == ["killme"]
    ds = store.phase1("killme")
    steps = ds[D.STEP].values
    n = steps.size
    # no torn step: consecutive records from 0, every variable complete
    assert steps.tolist() == list(range(n))
    for var in (*D.PHASE1_METRICS, D.LOSS, D.GRAD_NORM):
        assert ds[var].shape[0] == n
        assert np.isfinite(ds[var].values).all(), var
    if flushed is not None:
        assert n - 1 >= flushed, f"flushed step {flushed} lost (stored up to {n - 1})"
    snaps = store.snapshot_steps("killme")
    assert all(s % 7 == 0 for s in snaps)
    if flushed is not None:
        assert [s for s in range(0, flushed + 1, 7)] == [s for s in snaps if s <= flushed]
    if snaps:
        weights = store.weights("killme")
        assert set(weights) == {"0.weight", "0.bias", "2.weight", "2.bias"}
        for arr in weights.values():
            assert arr[D.STEP].values.tolist() == snaps
            assert np.isfinite(arr.values).all()
        acts = store.activations("killme")
        for arr in acts.values():
            assert arr[D.STEP].values.tolist() == snaps and np.isfinite(arr.values).all()
            assert arr[D.LABEL].size == 8
    return int(steps[-1]) if n else -1


def _kill_once(path: Path, rng: random.Random, expected_start: int | None) -> int | None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            proc.kill()
            raise AssertionError(f"child failed: {line}{proc.stderr.read()}")  # type: ignore[union-attr]
        start = int(line.split()[1])
        if expected_start is not None:
            assert start == expected_start
        time.sleep(rng.uniform(0.0, 1.2))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    flushed = [int(ln.split()[1]) for ln in out.splitlines() if ln.startswith("flushed")]
    return flushed[-1] if flushed else None


def _kill_loop(path: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    last: int | None = None
    for _ in range(kills):
        expected = None if last is None else last + 1
        flushed = _kill_once(path, rng, expected if last is not None and last >= 0 else None)
        last = _check_store(path, flushed)


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    _kill_loop(tmp_path / "kill.zarr", kills=3, seed=1)


@pytest.mark.slow
def test_sigkill_soak(tmp_path: Path) -> None:
    _kill_loop(tmp_path / "soak.zarr", kills=20, seed=2)
