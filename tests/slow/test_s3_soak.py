"""Soak: two writer processes and a reader against one S3 experiment (slow suite).

Two processes write snapshots (and one of them Phase 1 records) into the same
experiment on a moto S3 server for ``NDT_S3_SOAK_SECONDS`` (default 120), one with
a fresh ``Store`` per write, one with a long-lived ``Store`` refreshed before each
write, each pausing up to 0.5 s between writes; a third process reads in a loop.
Every commit a writer reported must be found afterwards (0 lost), the reader
must never see the store as corrupt, and ``verify_store`` must be clean.
Run: ``pytest -m slow tests/slow/test_s3_soak.py -s``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ndt_store

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

pytest.importorskip("s3fs")
pytest.importorskip("obstore")
pytest.importorskip("moto.server")

from s3server import BUCKET, client_env, reset, start_server  # noqa: E402

READER = """
import sys, time, ndt_store
from ndt_store.errors import CorruptStoreError, NotFoundError
url, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
loops = corrupt = 0
last = 0
while time.monotonic() < end:
    try:
        store = ndt_store.open_store(url, "r", storage_options={"skip_instance_cache": True})
        if "e" in store:
            steps = store.snapshot_steps("e")
            assert len(steps) >= last, "a committed snapshot disappeared"
            last = len(steps)
            if steps:
                store.weights("e")["w"].isel(step=-1).values
            store.phase1("e")
        loops += 1
        time.sleep(0.2)
    except NotFoundError:  # not created yet
        time.sleep(0.05)
    except CorruptStoreError as exc:
        corrupt += 1
        print("corrupt:", exc, file=sys.stderr)
print(loops, corrupt)
"""


@pytest.mark.slow
def test_s3_two_writer_soak() -> None:
    seconds = float(os.environ.get("NDT_S3_SOAK_SECONDS", "120"))
    assert seconds > 0
    server, endpoint = start_server()
    try:
        reset(endpoint)
        url = f"s3://{BUCKET}/soak.zarr"
        env = {**client_env(endpoint), "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"}
        writer = str(TESTS / "s3_writer.py")
        start = time.monotonic()
        procs = [
            subprocess.Popen(
                [sys.executable, writer, url, "e", str(k), "1000000", mode, str(seconds), "0.5"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k, mode in enumerate(("fresh", "refresh"))
        ]
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, url, str(seconds)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        results = []
        for p in procs:
            out, err = p.communicate(timeout=seconds + 600)
            assert p.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
        out, err = reader.communicate(timeout=600)
        assert reader.returncode == 0, err[-3000:]
        loops, corrupt = (int(x) for x in out.split())
        elapsed = time.monotonic() - start

        for key, value in client_env(endpoint).items():
            os.environ[key] = value
        store = ndt_store.open_store(url, "r", storage_options={"skip_instance_cache": True})
        reported = sorted(s for r in results for s in r["snapshots"])
        found = store.snapshot_steps("e")
        rows = sorted(s for r in results for s in r["phase1"])
        found_rows = store.phase1("e")["step"].values.tolist()
        report = ndt_store.verify_store(store)
        summary = {
            "seconds": round(elapsed, 1),
            "snapshot_commits": len(reported),
            "phase1_commits": len(rows),
            "lost_snapshots": len(set(reported) - set(found)),
            "lost_phase1": len(set(rows) - set(found_rows)),
            "extra": len(set(found) - set(reported)),
            "refusals": sum(r["refusals"] for r in results),
            "reader_loops": loops,
            "reader_corrupt": corrupt,
            "verify_ok": report.ok,
        }
        print("S3 soak:", json.dumps(summary))
        assert found == reported and found_rows == rows
        assert corrupt == 0 and report.ok
        assert len(reported) > 0 and summary["refusals"] > 0  # the writers did contend
    finally:
        server.stop()
