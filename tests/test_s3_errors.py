"""S3 failures end in one clear line, within a bounded time, and leave nothing open.

A frozen endpoint (a socket that accepts and never answers; a moto server stopped
with SIGSTOP) fails within about ``NDT_STORE_S3_TIMEOUT × NDT_STORE_S3_ATTEMPTS``;
a wrong bucket, missing credentials and an unreachable endpoint each give one
``ndt-store: error:`` line from the CLI (no traceback); a session of S3 writes and
reads run with ``-W error::ResourceWarning`` reports no unclosed session and leaves
no thread of its own behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import ndt_store
from ndt_store.errors import RemoteStoreError

pytest.importorskip("s3fs")
pytest.importorskip("obstore")
pytest.importorskip("moto.server")

from s3server import BUCKET, NO_LEAKS, client_env, reset, s3_env, s3_server

__all__ = ["s3_env", "s3_server"]

pytestmark = NO_LEAKS  # an unclosed HTTP session or socket fails the test

ROOT = Path(__file__).resolve().parents[1]
FAST = {"NDT_STORE_S3_TIMEOUT": "1", "NDT_STORE_S3_ATTEMPTS": "2"}
BOUND = 15.0  # seconds: 2 attempts of 1 s (connect + read) plus back-off, with slack


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP endpoint that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ndt_store.cli", *args],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ndt-store: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_silent_endpoint_times_out_with_a_clear_error(
    silent_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = client_env(silent_endpoint)
    for key, value in {**env, **FAST}.items():
        monkeypatch.setenv(key, value)
    start = time.monotonic()
    with pytest.raises(RemoteStoreError, match=r"did not answer within 1 s \(2 attempt"):
        ndt_store.open_store(f"s3://{BUCKET}/x.zarr", storage_options={"skip_instance_cache": True})
    assert time.monotonic() - start < BOUND
    # and through the CLI: one line, exit 1 (its time is bounded the same way, but
    # interpreter start-up on a loaded machine makes wall time a poor measure)
    proc = _cli(["ls", "--store", f"s3://{BUCKET}/x.zarr"], {**env, **FAST})
    _assert_one_line(proc, "did not answer", "NDT_STORE_S3_TIMEOUT")


def test_timeout_is_configurable(silent_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in client_env(silent_endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("NDT_STORE_S3_TIMEOUT", "0.5")
    monkeypatch.setenv("NDT_STORE_S3_ATTEMPTS", "1")
    start = time.monotonic()
    with pytest.raises(RemoteStoreError, match=r"within 0.5 s \(1 attempt"):
        ndt_store.open_store(f"s3://{BUCKET}/x.zarr", storage_options={"skip_instance_cache": True})
    assert time.monotonic() - start < 5
    monkeypatch.setenv("NDT_STORE_S3_TIMEOUT", "soon")
    with pytest.raises(ndt_store.NdtStoreError, match="NDT_STORE_S3_TIMEOUT='soon'"):
        ndt_store.open_store(f"s3://{BUCKET}/x.zarr")


def test_stopped_server_mid_session_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hang that was seen: the S3 server freezes (SIGSTOP) while a writer works."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                reset(endpoint)
                break
            except Exception:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)
        for key, value in {**client_env(endpoint), **FAST}.items():
            monkeypatch.setenv(key, value)
        url = f"s3://{BUCKET}/frozen.zarr"
        store = ndt_store.open_store(url, storage_options={"skip_instance_cache": True})
        store.create_run("e", {}, ["l0"])
        store.write_snapshot("e", 1, weights={"w": np.ones(3)})
        server.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(RemoteStoreError, match=r"did not answer|cannot connect"):
                store.write_snapshot("e", 2, weights={"w": np.ones(3)})
            assert time.monotonic() - start < BOUND
            start = time.monotonic()
            with pytest.raises(RemoteStoreError, match=r"did not answer|cannot connect"):
                ndt_store.open_store(url, "r", storage_options={"skip_instance_cache": True})
            assert time.monotonic() - start < BOUND
        finally:
            server.send_signal(signal.SIGCONT)
        # once the server answers again, the store is whole: step 2 never committed
        assert ndt_store.open_store(url, "r").snapshot_steps("e") == [1]
    finally:
        server.kill()
        server.wait(10)


def test_wrong_bucket_is_one_line(s3_env: str, s3_server: str) -> None:
    env = client_env(s3_server)
    for mode_args in (["ls"], ["ingest", "tables", "--jumps", os.devnull]):
        proc = _cli([*mode_args, "--store", "s3://no-such-bucket/x.zarr"], env)
        _assert_one_line(proc, "bucket 'no-such-bucket' does not exist")
    with pytest.raises(RemoteStoreError, match="bucket 'no-such-bucket' does not exist"):
        ndt_store.open_store("s3://no-such-bucket/x.zarr")


def test_missing_credentials_is_one_line(s3_env: str, s3_server: str, tmp_path: Path) -> None:
    env = client_env(s3_server)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(key)
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    proc = _cli(["ls", "--store", f"{s3_env}/x.zarr"], env)
    _assert_one_line(proc, "no S3 credentials found")


def test_unreachable_endpoint_is_one_line(s3_env: str) -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    proc = _cli(["ls", "--store", f"{s3_env}/x.zarr"], {**client_env(endpoint), **FAST})
    _assert_one_line(proc, "cannot connect to the S3 endpoint", "NDT_STORE_S3_ATTEMPTS")


LEAK_SCRIPT = """
import sys, threading, gc
import numpy as np, ndt_store
url = sys.argv[1]
opts = {"skip_instance_cache": True}
after = []
for i in range(4):  # several file systems, each dropped after use
    store = ndt_store.open_store(url, storage_options=opts)
    store.create_run("e", {}, ["l0"])
    store.write_snapshot("e", i, weights={"w": np.ones(3)})
    reader = ndt_store.open_store(url, "r", storage_options=opts)
    assert reader.weights("e")["w"].sum().compute() > 0
    del store, reader
    gc.collect()
    after.append(sorted(t.name for t in threading.enumerate()))
store = ndt_store.open_store(url)  # a cached file system, alive at exit
print(store.snapshot_steps("e"))
print("threads", after)
"""


def test_s3_session_leaves_nothing_open(s3_env: str, s3_server: str) -> None:
    env = {**client_env(s3_server), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", LEAK_SCRIPT, f"{s3_env}/leak.zarr"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[0, 1, 2, 3]" in proc.stdout
    assert "Unclosed" not in proc.stderr and "ResourceWarning" not in proc.stderr, proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr
    after = json.loads(proc.stdout.split("threads", 1)[1].replace("'", '"'))
    # no lease thread outlives its lock, and no thread per store or file system: what
    # remains is zarr's event loop and its executor, and dask's worker pool (bounded
    # pools that grow on demand and stop at exit)
    pools = re.compile(r"MainThread|zarr_io|asyncio_\d+|ThreadPoolExecutor-\d+_\d+")
    assert all(pools.fullmatch(n) for names in after for n in names), after
