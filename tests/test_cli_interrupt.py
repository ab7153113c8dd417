"""Ctrl-C on a long command: one line, exit status 130, a consistent store, a prompt stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ndt_store

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
EXPERIMENTS = 40


def _committed(path: Path) -> list[str]:
    try:
        return ndt_store.open_store(path, mode="r").experiments()
    except ndt_store.NdtStoreError:
        return []  # not created yet


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_stops_synth_between_experiments(tmp_path) -> None:
    store = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "ndt_store.cli", "synth", "--store", str(store),
           "--experiments", str(EXPERIMENTS), "--steps", "6", "--threads", str(THREADS),
           "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not _committed(store):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no experiment committed in 120 s"
            time.sleep(0.05)
        seen = len(_committed(store))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "ndt-store: interrupted"
    assert "wrote" not in out
    # each thread finished at most the experiment it was writing (plus one being
    # committed as the listing was read), then stopped: not all 40 were written
    done = _committed(store)
    assert seen <= len(done) <= seen + 2 * THREADS < EXPERIMENTS
    s = ndt_store.open_store(store, mode="r")
    report = ndt_store.verify_store(s)
    assert report.ok, report.format()
    for name in done:  # every committed experiment is whole
        assert s.snapshot_steps(name) == s.snapshot_steps(done[0])
        assert s.phase1(name).sizes["step"] > 0
