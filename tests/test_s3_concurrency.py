"""Two writers on one S3 experiment: exact, or one cleanly refused — as on a local disk.

The writer lock on S3 is a lease object written only with conditional puts
(``ndt_store._objlock``). These tests run against moto's HTTP server with S3's
atomic conditions (see ``tests/s3server.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ndt_store
from ndt_store.errors import ConflictError

pytest.importorskip("s3fs")
pytest.importorskip("obstore")
pytest.importorskip("moto.server")

from s3_writer import LAYERS, phase1_row
from s3server import NO_LEAKS, client_env, s3_env, s3_server

__all__ = ["s3_env", "s3_server"]

pytestmark = NO_LEAKS  # an unclosed HTTP session or socket fails the test

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OPTS = {"skip_instance_cache": True}
W = {"w": np.ones((2, 2), dtype=np.float32)}


def _open(url: str, mode: str = "a") -> ndt_store.Store:
    return ndt_store.open_store(url, mode, storage_options=OPTS)  # type: ignore[arg-type]


def _lease(store: ndt_store.Store, name: str) -> Any:
    return store.zarr_group.store.leases[name]  # type: ignore[attr-defined]


def test_second_writer_is_refused_while_the_first_holds_the_lock(s3_env: str) -> None:
    url = f"{s3_env}/lock.zarr"
    a, b = _open(url), _open(url)
    a.create_run("e", {}, LAYERS)
    with a.writer("e"):
        with pytest.raises(
            ConflictError, match=rf"experiment 'e' is being written.*pid {os.getpid()}"
        ):
            b.write_snapshot("e", 1, weights=W)
        with pytest.raises(ConflictError):
            b.append_phase1("e", phase1_row(0))
        a.write_snapshot("e", 2, weights=W)  # re-entrant for the holder
    assert b.write_snapshot("e", 1, weights=W) == "created"  # released: b may write now
    assert _open(url, "r").snapshot_steps("e") == [1, 2]
    # the lease object is kept, marked released (like the local lock file)
    assert ndt_store.verify_store(_open(url, "r")).ok


def _race(stores: list[ndt_store.Store]) -> tuple[list[int], list[int]]:
    """All ``stores`` try to take experiment e's lock at once; who won, who was refused."""
    barrier = threading.Barrier(len(stores))
    release = threading.Event()
    won: list[int] = []
    refused: list[int] = []

    def contend(i: int) -> None:
        barrier.wait()
        try:
            with stores[i].writer("e"):
                won.append(i)
                release.wait(10)
        except ConflictError:
            refused.append(i)
            if len(refused) == len(stores) - 1:
                release.set()

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return won, refused


def test_exactly_one_of_many_racing_writers_takes_the_lock(s3_env: str) -> None:
    url = f"{s3_env}/race.zarr"
    _open(url).create_run("e", {}, LAYERS)
    for _ in range(5):  # first a fresh lease object (If-None-Match), then released ones (If-Match)
        won, refused = _race([_open(url) for _ in range(4)])
        assert len(won) == 1 and len(refused) == 3, (won, refused)


def _threads_write(url: str, mode: str, count: int) -> list[dict[str, Any]]:
    from s3_writer import run

    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def go(k: int) -> None:
        try:
            results.append(run(url, "e", k, count, mode))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    return results


def _assert_exact(url: str, results: list[dict[str, Any]]) -> None:
    reader = _open(url, "r")
    committed = sorted(s for r in results for s in r["snapshots"])
    assert reader.snapshot_steps("e") == committed  # not one snapshot lost
    rows = sorted(s for r in results for s in r["phase1"])
    assert reader.phase1("e")["step"].values.tolist() == rows  # not one Phase 1 record lost
    weights = reader.weights("e")["w"]
    np.testing.assert_array_equal(
        weights.isel(out=0, **{"in": 0}).values, np.asarray(committed, dtype=np.float32)
    )
    report = ndt_store.verify_store(reader)
    assert report.ok, report


@pytest.mark.parametrize("mode", ["fresh", "refresh", "long"])
def test_two_writer_threads_lose_no_commit(s3_env: str, mode: str) -> None:
    url = f"{s3_env}/two.zarr"
    results = _threads_write(url, mode, count=6)
    _assert_exact(url, results)


def test_two_writer_processes_lose_no_commit(s3_env: str, s3_server: str) -> None:
    url = f"{s3_env}/procs.zarr"
    env = {**client_env(s3_server), "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "s3_writer.py"), url, "e", str(k), "5", "fresh"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    _assert_exact(url, results)


def test_a_killed_writer_blocks_only_until_its_lease_expires(
    s3_env: str, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NDT_STORE_S3_LOCK_TTL", "5")
    url = f"{s3_env}/kill.zarr"
    _open(url).create_run("e", {}, LAYERS)
    code = (
        "import sys, time, ndt_store\n"
        "s = ndt_store.open_store(sys.argv[1])\n"
        "with s.writer('e'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**client_env(s3_server), "PYTHONPATH": str(ROOT), "NDT_STORE_S3_LOCK_TTL": "5"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, url], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(ConflictError, match="being written by another process"):
            _open(url).write_snapshot("e", 1, weights=W)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        time.sleep(6.5)  # > ttl plus the server clock's one-second resolution
        store = _open(url)
        assert store.write_snapshot("e", 1, weights=W) == "created"
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert _open(url, "r").snapshot_steps("e") == [1]


def test_a_writer_that_lost_its_lease_writes_nothing_more(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NDT_STORE_S3_LOCK_TTL", "4")
    url = f"{s3_env}/stall.zarr"
    a, b = _open(url), _open(url)
    a.create_run("e", {}, LAYERS)
    a.write_snapshot("e", 1, weights=W)
    with a.writer("e"):
        lease = _lease(a, "e")
        lease._stop.set()  # a stalled process: the lease is no longer renewed
        lease._thread.join()
        time.sleep(5.5)  # the lease lapses on the server's clock too
        assert b.write_snapshot("e", 2, weights=W) == "created"  # b takes the lease over
        with pytest.raises(ConflictError, match="lost its lock"):
            a.write_snapshot("e", 3, weights=W)
    # a's release did not erase b's lease; b's commit stands, a's never started
    fresh = _open(url, "r")
    assert fresh.snapshot_steps("e") == [1, 2]
    assert ndt_store.verify_store(fresh).ok
    assert b.write_snapshot("e", 4, weights=W) == "created"


def test_release_never_erases_a_lease_taken_over(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import obstore

    from ndt_store._objlock import ObjectLease, _obstore_for, lease_key

    monkeypatch.setenv("NDT_STORE_S3_LOCK_TTL", "3")
    store = _open(f"{s3_env}/rel.zarr")
    zstore: Any = store.zarr_group.store
    key = lease_key(zstore, "x")
    first = ObjectLease(zstore, key, what="x", ttl=3)
    first.acquire()
    first._stop.set()
    first._thread.join()  # type: ignore[union-attr]
    time.sleep(4.5)
    second = ObjectLease(zstore, key, what="x", ttl=3)
    second.acquire()
    assert second.took_over is not None and second.took_over["pid"] == os.getpid()
    first.release()  # stale holder: its conditional release fails, nothing is changed
    assert first.lost is not None
    body = json.loads(bytes(obstore.get(_obstore_for(zstore), key).bytes()))
    assert body["state"] == "held"
    third = ObjectLease(zstore, key, what="x", ttl=3)
    with pytest.raises(ConflictError):
        third.acquire()
    second.release()
    third.acquire()
    third.release()
    assert not [t for t in threading.enumerate() if t.name.startswith("ndt-store-lease")]


def test_writers_creating_one_store_at_once_all_succeed(s3_env: str) -> None:
    url = f"{s3_env}/new.zarr"
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def create() -> None:
        barrier.wait()
        try:
            _open(url)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert _open(url, "r").experiments() == []


def test_a_store_pickled_while_writing_carries_no_lease(s3_env: str) -> None:
    import pickle

    store = _open(f"{s3_env}/pickle.zarr")
    store.create_run("e", {}, LAYERS)
    with store.writer("e"):
        copy = pickle.loads(pickle.dumps(store.zarr_group.store))
        assert copy.leases == {} and "e" in store.zarr_group.store.leases  # type: ignore[attr-defined]
