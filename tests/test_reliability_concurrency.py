"""Concurrency: many writers, conflicting writers, readers during writes.

Writers run in separate processes (``spawn``), as real recorders would. What is
proved:

- processes recording *different* experiments into one store at once lose
  nothing (every value of every experiment is read back exactly);
- a second writer of the *same* experiment gets :class:`ConflictError` while the
  first holds it and leaves the store byte-for-byte unchanged; two processes
  racing to append to one experiment never corrupt it (the stored series is
  exactly the union of the appends that reported success);
- a reader polling while a writer appends always sees a consistent snapshot:
  arrays agree in length, the row count never decreases, every row read equals
  the row written.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import ndt_store
from ndt_store import _dims as D
from ndt_store.errors import ConflictError, InputError
from ndt_store.testing import tree_snapshot, write_phase1_json

LAYERS = ["l0", "l1", "l2"]
CTX = mp.get_context("spawn")


def rows(steps: Any, seed: int) -> xr.Dataset:
    """Intended Phase 1 rows of writer ``seed`` at ``steps`` (exact binary fractions)."""
    s = np.asarray(steps, dtype=np.float64)
    layer = np.arange(len(LAYERS), dtype=np.float64)
    data = {
        m: ((D.STEP, D.LAYER), s[:, None] * 0.25 + layer[None, :] + k * 8 + seed * 1000)
        for k, m in enumerate(D.PHASE1_METRICS)
    }
    data[D.LOSS] = (D.STEP, s * 0.5 + seed)
    data[D.GRAD_NORM] = (D.STEP, s * 0.125 + seed)
    data[D.EPOCH] = (D.STEP, np.asarray(steps, dtype=np.int64) // 10 + seed)
    return xr.Dataset(data, coords={D.STEP: np.asarray(steps, dtype=np.int64), D.LAYER: LAYERS})


def assert_rows(ds: xr.Dataset, steps: Any, seed: int) -> None:
    want = rows(steps, seed)
    np.testing.assert_array_equal(ds[D.STEP].values, want[D.STEP].values)
    for v in (*D.PHASE1_METRICS, D.LOSS, D.GRAD_NORM, D.EPOCH):
        np.testing.assert_array_equal(ds[v].values, want[v].values, err_msg=v)


# ------------------------------------------------------------- worker processes
def record_worker(path: str, name: str, seed: int, n: int, start: Any) -> None:
    start.wait(60)
    s = ndt_store.open_store(path)
    s.create_run(name, {"arch_name": name}, LAYERS)
    for step in range(n):
        s.append_phase1(name, rows([step], seed))
        if step % 10 == 0:
            s.write_snapshot(name, step, weights={"w": np.full((4, 3), seed + step, np.float32)})


def holder_worker(path: str, name: str, locked: Any, release: Any) -> None:
    s = ndt_store.open_store(path)
    with s.writer(name):
        locked.set()
        release.wait(60)


def racing_worker(path: str, name: str, seed: int, steps: list[int], start: Any, out: Any) -> None:
    s = ndt_store.open_store(path)
    start.wait(60)
    done, conflicts = [], 0
    for step in steps:
        try:
            s.append_phase1(name, rows([step], seed))
            done.append(step)
        except ConflictError:
            conflicts += 1
        except InputError:  # the other writer got a later step in first
            pass
    out.put((seed, done, conflicts))


def slow_writer(path: str, name: str, n: int, started: Any) -> None:
    s = ndt_store.open_store(path)
    s.create_run(name, {}, LAYERS)
    started.set()
    for step in range(n):
        s.append_phase1(name, rows([step], 0))
        s.write_snapshot(
            name,
            step,
            weights={"w": np.full((64, 32), step, np.float32)},
            activations={"l0": np.full((8, 16), -step, np.float32)},
        )
        time.sleep(0.005)


def _join(*procs: Any) -> None:
    for p in procs:
        p.join(120)
        assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"


# -------------------------------------------------------------------------- tests
def test_parallel_recorders_of_different_experiments_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "s.zarr")
    ndt_store.open_store(path)
    start = CTX.Event()
    n = 20
    procs = [
        CTX.Process(target=record_worker, args=(path, f"run{i}", i, n, start), name=f"w{i}")
        for i in range(3)
    ]
    for p in procs:
        p.start()
    start.set()
    _join(*procs)
    s = ndt_store.open_store(path, mode="r")
    assert s.experiments() == ["run0", "run1", "run2"]
    for i in range(3):
        assert_rows(s.phase1(f"run{i}"), list(range(n)), i)
        assert s.metadata(f"run{i}") == {"arch_name": f"run{i}"}
        w = s.weights(f"run{i}")["w"]
        assert w.step.values.tolist() == list(range(0, n, 10))
        np.testing.assert_array_equal(w.values[:, 0, 0], [i + st for st in range(0, n, 10)])
    ds = ndt_store.open_store(path).measurements()
    np.testing.assert_array_equal(
        ds[D.LOSS].values, np.stack([rows(range(n), i)[D.LOSS] for i in range(3)])
    )


def test_second_writer_of_same_experiment_gets_conflict(tmp_path: Path) -> None:
    path = str(tmp_path / "s.zarr")
    s = ndt_store.open_store(path)
    s.create_run("e", {}, LAYERS)
    s.append_phase1("e", rows([0], 0))
    locked, release = CTX.Event(), CTX.Event()
    holder = CTX.Process(target=holder_worker, args=(path, "e", locked, release), name="holder")
    holder.start()
    try:
        assert locked.wait(60)
        before = tree_snapshot(path)
        attempts = [
            lambda: s.append_phase1("e", rows([1], 0)),
            lambda: s.write_snapshot("e", 1, weights={"w": np.ones(3)}),
            lambda: s.update_metadata("e", x=1),
            lambda: s.delete_experiment("e"),
            lambda: s.write_experiment("e", rows([5], 1), {}, overwrite=True),
        ]
        for attempt in attempts:
            with pytest.raises(ConflictError, match=r"experiment 'e' is being written by .*pid"):
                attempt()
        assert tree_snapshot(path) == before
        other = ndt_store.open_store(path)
        other.create_run("f", {}, LAYERS)  # another experiment is not blocked
        assert other.append_phase1("f", rows([0], 2)) == 1
    finally:
        release.set()
        _join(holder)
    assert s.append_phase1("e", rows([1], 0)) == 2  # the lock died with its holder
    assert_rows(ndt_store.open_store(path, mode="r").phase1("e"), [0, 1], 0)


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    path = str(tmp_path / "s.zarr")
    s = ndt_store.open_store(path)
    s.create_run("e", {}, LAYERS)
    locked, release = CTX.Event(), CTX.Event()
    holder = CTX.Process(target=holder_worker, args=(path, "e", locked, release))
    holder.start()
    assert locked.wait(60)
    with pytest.raises(ConflictError):
        s.append_phase1("e", rows([0], 0))
    holder.kill()
    holder.join(30)
    assert s.append_phase1("e", rows([0], 0)) == 1


def test_racing_appenders_never_corrupt(tmp_path: Path) -> None:
    path = str(tmp_path / "s.zarr")
    s = ndt_store.open_store(path)
    s.create_run("e", {}, LAYERS)
    start, out = CTX.Event(), CTX.Queue()
    steps = {0: list(range(0, 60, 2)), 1: list(range(1, 60, 2))}
    procs = [
        CTX.Process(target=racing_worker, args=(path, "e", k, steps[k], start, out)) for k in (0, 1)
    ]
    for p in procs:
        p.start()
    start.set()
    results = {}
    for _ in procs:
        seed, done, conflicts = out.get(timeout=120)
        results[seed] = (done, conflicts)
    _join(*procs)
    ds = ndt_store.open_store(path, mode="r").phase1("e")
    stored = ds[D.STEP].values.tolist()
    succeeded = sorted(results[0][0] + results[1][0])
    assert stored == succeeded, "stored rows differ from the appends that reported success"
    assert stored == sorted(set(stored))
    for seed in (0, 1):  # each row holds exactly the values of the writer that appended it
        mine = [st for st in stored if st in set(results[seed][0])]
        assert_rows(ds.sel({D.STEP: mine}), mine, seed)


def test_reader_polling_during_appends_sees_consistent_snapshots(tmp_path: Path) -> None:
    path = str(tmp_path / "s.zarr")
    ndt_store.open_store(path)
    started = CTX.Event()
    n = 30
    writer = CTX.Process(target=slow_writer, args=(path, "e", n, started))
    writer.start()
    assert started.wait(60)
    reader = ndt_store.open_store(path, mode="r")
    counts, snap_counts, polls = [], [], 0
    while writer.is_alive() or polls < 3:
        reader.refresh()
        if "e" not in reader.experiments():
            continue
        ds = reader.phase1("e")
        k = ds.sizes[D.STEP]
        for v in (*D.PHASE1_METRICS, D.LOSS, D.GRAD_NORM, D.EPOCH):
            assert ds[v].shape[0] == k, f"{v} has {ds[v].shape[0]} rows, step has {k}"
        assert_rows(ds, list(range(k)), 0)
        steps = reader.snapshot_steps("e")
        assert steps == list(range(len(steps)))
        if steps:
            w = reader.weights("e")["w"].values
            a = reader.activations("e", "l0").values
            np.testing.assert_array_equal(w[:, 0, 0], steps)
            np.testing.assert_array_equal(a[:, 0, 0], [-x for x in steps])
        counts.append(k)
        snap_counts.append(len(steps))
        polls += 1
    _join(writer)
    assert counts == sorted(counts), "row count went backwards"
    assert snap_counts == sorted(snap_counts)
    assert counts[-1] == n and snap_counts[-1] == n
    assert len(set(counts)) >= 3, f"the reader saw too few intermediate states: {set(counts)}"


def test_lazy_measurements_survive_a_concurrent_rebuild(tmp_path: Path) -> None:
    for i in range(2):
        write_phase1_json(tmp_path / f"src{i}" / f"e{i}.json", n_records=10, seed=i, layers=["a"])
    path = tmp_path / "s.zarr"
    reader = ndt_store.open_store(path)
    ndt_store.ingest_phase1(reader, tmp_path / "src0")
    lazy = reader.measurements()
    want = reader.phase1("e0")[D.STABLE_RANK].values
    ndt_store.ingest_phase1(ndt_store.open_store(path), tmp_path / "src1")  # another writer
    np.testing.assert_array_equal(lazy[D.STABLE_RANK].values[0], want)


def test_lazy_measurements_survive_two_concurrent_rebuilds(tmp_path: Path) -> None:
    for i in range(3):
        write_phase1_json(tmp_path / f"src{i}" / f"e{i}.json", n_records=10, seed=i, layers=["a"])
    path = tmp_path / "s.zarr"
    reader = ndt_store.open_store(path)
    ndt_store.ingest_phase1(reader, tmp_path / "src0")
    lazy = reader.measurements()
    want = reader.phase1("e0")[D.STABLE_RANK].values
    for i in (1, 2):  # two other writers, each rebuilding the view
        ndt_store.ingest_phase1(ndt_store.open_store(path), tmp_path / f"src{i}")
    np.testing.assert_array_equal(lazy[D.STABLE_RANK].values[0], want)
