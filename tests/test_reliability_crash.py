"""Crash safety: operations killed at random instants, and at every write boundary.

Two complementary attacks:

1. **SIGKILL at random instants** (``test_sigkill_*``): a forked child runs the
   real operation (``ndt-store ingest phase1`` of several files, a loop of
   ``write_snapshot``, a loop of ``write_snapshots`` batches, a loop of
   ``append_phase1``) and is SIGKILLed after a random delay; the store must
   open, every committed unit must equal what was intended, nothing partial may
   be visible, and rerunning finishes the job.
2. **Crash at every write boundary** (``test_crash_point_*``): on a local store
   every file write is a tmp-file + rename, so a kill is equivalent to stopping
   between two file operations. The operation is run once to count its file
   operations (renames, tree removals), then once per boundary with the k-th
   operation raising; after each simulated crash the same invariants are checked
   and the operation is rerun to completion. This enumerates the kill instants
   exhaustively and deterministically.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pytest

import ndt_store
from ndt_store import _dims as D
from ndt_store.testing import make_phase1_obj, write_phase1_json

_SLOW = Path(__file__).resolve().parent / "slow"


def _load(name: str) -> Any:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _SLOW / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


C = _load("crash_ops")
KILLS_PER_OP = 5


# --------------------------------------------------------------------------- 1
@pytest.fixture(scope="module")
def zygote() -> Iterator[Any]:
    with C.Zygote() as z:
        yield z


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    C.prepare_source(src)
    return src


@pytest.mark.parametrize("op", ["ingest", "snapshot", "batch", "record"])
def test_sigkill_at_random_instants(op: str, zygote: Any, source: Path, tmp_path: Path) -> None:
    rng = random.Random(hash(op) % 1000)
    cal_store, cal_prog = tmp_path / "cal.zarr", tmp_path / "cal.txt"
    clean = zygote.run(op, C.op_args(op, cal_store, cal_prog, source), None)
    assert clean["exit"] == 0 and not clean["killed"]
    assert C.check(op, cal_store, cal_prog, source).complete
    kills = 0
    episode = 0
    while kills < KILLS_PER_OP:
        episode += 1
        store, prog = tmp_path / f"e{episode}.zarr", tmp_path / f"e{episode}.txt"
        for _ in range(2):  # kill, then kill the resumed run too
            if kills == KILLS_PER_OP:
                break
            delay = rng.uniform(0.0, clean["elapsed"])
            res = zygote.run(op, C.op_args(op, store, prog, source), delay)
            if not res["killed"]:
                break
            kills += 1
            after = C.check(op, store, prog, source)
            assert after.opened, after.error
            assert after.lost == [], f"committed units lost after a kill at {delay:.3f}s"
            assert after.torn == [], f"partial/wrong units visible after a kill at {delay:.3f}s"
        rerun = zygote.run(op, C.op_args(op, store, prog, source), None)
        assert rerun["exit"] == 0, "rerunning the interrupted operation failed"
        final = C.check(op, store, prog, source)
        assert final.complete and not final.torn and not final.lost, final
        shutil.rmtree(store)
    assert kills == KILLS_PER_OP


# --------------------------------------------------------------------------- 2
class SimulatedCrash(Exception):
    """Raised at the chosen file operation to stop the writer there."""


class _Injector:
    """Counts file operations (renames and tree removals); raises at number ``at``."""

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.count = 0
        self.lock = threading.Lock()

    def tick(self) -> bool:
        with self.lock:
            self.count += 1
            return self.at is not None and self.count == self.at


@contextmanager
def crash_at(at: int | None) -> Iterator[_Injector]:
    """Make the ``at``-th file operation crash (``None``: only count them).

    A crash on a rename leaves the destination untouched (as a kill before the
    rename would); a crash on a tree removal first removes half of the files,
    bottom-up, as a kill in the middle of ``shutil.rmtree`` would.
    """
    inj = _Injector(at)
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if inj.tick():
            raise SimulatedCrash(f"crash before rename to {dst}")
        real_replace(src, dst, *args, **kwargs)

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        if inj.tick():
            files = [Path(r) / f for r, _, fs in os.walk(path, topdown=False) for f in fs]
            for f in files[: len(files) // 2]:
                f.unlink()
            raise SimulatedCrash(f"crash in the middle of removing {path}")
        real_rmtree(path, *args, **kwargs)

    with mock.patch.object(os, "replace", replace), mock.patch.object(shutil, "rmtree", rmtree):
        yield inj


def _every_crash_point(
    setup: Callable[[Path], None],
    operation: Callable[[Path], None],
    check_partial: Callable[[Path], None],
    check_done: Callable[[Path], None],
    tmp_path: Path,
    *,
    max_points: int = 12,
) -> int:
    """Run ``operation`` crashing at each file operation; check after crash and after rerun."""
    base = tmp_path / "base.zarr"
    setup(base)
    probe = tmp_path / "probe.zarr"
    shutil.copytree(base, probe)
    with crash_at(None) as inj:
        operation(probe)
    total = inj.count
    check_done(probe)
    assert total > 0
    points = list(range(1, total + 1))
    if len(points) > max_points:  # evenly spread, always including both ends
        points = sorted(set(np.linspace(1, total, max_points).round().astype(int).tolist()))
    for k in points:
        path = tmp_path / f"k{k}.zarr"
        shutil.copytree(base, path)
        with crash_at(k), pytest.raises(SimulatedCrash):
            operation(path)
        try:
            check_partial(path)
        except AssertionError as exc:
            raise AssertionError(f"after a crash at file operation {k}/{total}: {exc}") from exc
        operation(path)
        try:
            check_done(path)
        except AssertionError as exc:
            raise AssertionError(f"rerun after a crash at {k}/{total}: {exc}") from exc
        shutil.rmtree(path)
    return total


def _phase1_matches(store: ndt_store.Store, name: str, obj: dict[str, Any]) -> None:
    why = C._phase1_equal(store.phase1(name), obj)
    assert why == "", f"{name}: {why}"


def test_crash_point_ingest_several_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    objs = {f"run{i}": make_phase1_obj(n_records=30, seed=i, layers=("a", "b")) for i in range(3)}
    for name, obj in objs.items():
        write_phase1_json(src / f"{name}.json", n_records=30, seed=int(name[-1]), layers=("a", "b"))
        assert obj == make_phase1_obj(n_records=30, seed=int(name[-1]), layers=("a", "b"))

    def setup(path: Path) -> None:
        ndt_store.open_store(path)

    def op(path: Path) -> None:
        ndt_store.ingest_phase1(ndt_store.open_store(path), src)

    def partial(path: Path) -> None:
        s = ndt_store.open_store(path, mode="r")
        assert set(s.experiments()) <= set(objs)
        for name in s.experiments():
            _phase1_matches(s, name, objs[name])

    def done(path: Path) -> None:
        s = ndt_store.open_store(path, mode="r")
        assert s.experiments() == sorted(objs)
        for name in objs:
            _phase1_matches(s, name, objs[name])

    assert _every_crash_point(setup, op, partial, done, tmp_path, max_points=16) >= 3 * 6


def test_crash_point_replace_experiment(tmp_path: Path) -> None:
    """``overwrite=True``: readers see the old content or the new one, never a mix or nothing."""
    old = make_phase1_obj(n_records=25, seed=1, layers=("a", "b"))
    new = make_phase1_obj(n_records=40, seed=2, layers=("a", "b", "c"))
    src_old, src_new = tmp_path / "old" / "x.json", tmp_path / "new" / "x.json"
    write_phase1_json(src_old, n_records=25, seed=1, layers=("a", "b"))
    write_phase1_json(src_new, n_records=40, seed=2, layers=("a", "b", "c"))

    def setup(path: Path) -> None:
        ndt_store.ingest_phase1(ndt_store.open_store(path), src_old)

    def op(path: Path) -> None:
        ndt_store.ingest_phase1(ndt_store.open_store(path), src_new, overwrite=True)

    def partial(path: Path) -> None:
        s = ndt_store.open_store(path, mode="r")
        assert s.experiments() == ["x"], "the experiment vanished while being replaced"
        n = s.phase1("x").sizes[D.STEP]
        _phase1_matches(s, "x", old if n == 25 else new)

    def done(path: Path) -> None:
        _phase1_matches(ndt_store.open_store(path, mode="r"), "x", new)

    _every_crash_point(setup, op, partial, done, tmp_path)


def _snap_setup(path: Path) -> None:
    s = ndt_store.open_store(path)
    s.create_run("snap", {"arch_name": "t", "dataset": "d"}, list(C.LAYERS))
    t = C.snapshot_tensors(0)
    s.write_snapshot(
        "snap",
        0,
        weights=t["weights"],
        activations=t["activations"],
        attention=t["attention"],
        labels=C.PROBE_LABELS,
        probe_hash="p",
    )


def _snap_op(path: Path) -> None:
    s = ndt_store.open_store(path)
    if 10 in s.snapshot_steps("snap"):
        return
    t = C.snapshot_tensors(10)
    s.write_snapshot(
        "snap",
        10,
        weights=t["weights"],
        activations=t["activations"],
        attention=t["attention"],
        labels=C.PROBE_LABELS,
        probe_hash="p",
    )


def _assert_snapshot_values(s: ndt_store.Store, steps: list[int]) -> None:
    """Every stored tensor of ``snap`` at ``steps`` equals the one written there."""
    for kind, reader in (
        ("weights", s.weights),
        ("activations", s.activations),
        ("attention", s.attention),
    ):
        got = reader("snap")
        assert sorted(got) == sorted(C.snapshot_tensors(0)[kind])
        for name, arr in got.items():
            assert arr.step.values.tolist() == steps
            for i, st in enumerate(steps):
                np.testing.assert_array_equal(arr.values[i], C.snapshot_tensors(st)[kind][name])


def _snap_check(path: Path, *, complete: bool) -> None:
    s = ndt_store.open_store(path, mode="r")
    steps = s.snapshot_steps("snap")
    assert steps in ([0], [0, 10]) and (not complete or steps == [0, 10]), steps
    _assert_snapshot_values(s, steps)


def test_crash_point_write_snapshot(tmp_path: Path) -> None:
    _every_crash_point(
        _snap_setup,
        _snap_op,
        lambda p: _snap_check(p, complete=False),
        lambda p: _snap_check(p, complete=True),
        tmp_path,
    )


BATCH_STEPS = [10, 20, 30]


def _batch_op(path: Path) -> None:
    s = ndt_store.open_store(path)
    if 10 in s.snapshot_steps("snap"):
        return
    s.write_snapshots(
        "snap", BATCH_STEPS, labels=C.PROBE_LABELS, probe_hash="p", **C.snapshot_batch(BATCH_STEPS)
    )


def _batch_check(path: Path, *, complete: bool) -> None:
    """Step 0 and either all the batch's steps or none of them, each value as written."""
    s = ndt_store.open_store(path, mode="r")
    steps = s.snapshot_steps("snap")
    assert steps in ([0], [0, *BATCH_STEPS]) and (not complete or steps != [0]), steps
    _assert_snapshot_values(s, steps)
    losses = {e["step"]: e.get("loss") for e in s.entries()["snap"]["snapshots"]}
    assert all(losses[st] == st / 7 for st in BATCH_STEPS if st in steps), losses


def test_crash_point_write_snapshots_batch(tmp_path: Path) -> None:
    """An interrupted ``write_snapshots`` leaves all of its steps or none of them."""
    total = _every_crash_point(
        _snap_setup,
        _batch_op,
        lambda p: _batch_check(p, complete=False),
        lambda p: _batch_check(p, complete=True),
        tmp_path,
        max_points=40,
    )
    assert total >= 3 * 5  # a chunk per step for each of the 5 tensors, at least


def _rec_setup(path: Path) -> None:
    s = ndt_store.open_store(path)
    s.create_run("rec", {"arch_name": "t", "dataset": "d"}, list(C.LAYERS))
    s.append_phase1("rec", C.record_dataset(np.asarray(C.RECORD_STEPS[:4])))


def _rec_op(path: Path) -> None:
    s = ndt_store.open_store(path)
    if s.phase1("rec").sizes[D.STEP] == 8:
        return
    s.append_phase1("rec", C.record_dataset(np.asarray(C.RECORD_STEPS[4:8])))


def _rec_check(path: Path, *, complete: bool) -> None:
    ds = ndt_store.open_store(path, mode="r").phase1("rec")
    n = ds.sizes[D.STEP]
    assert n in (4, 8) and (not complete or n == 8), n
    want = C.record_rows(np.asarray(C.RECORD_STEPS[:n]))
    np.testing.assert_array_equal(ds[D.STEP].values, C.RECORD_STEPS[:n])
    np.testing.assert_array_equal(
        np.stack([ds[m].values for m in D.PHASE1_METRICS], -1), want["metrics"]
    )
    np.testing.assert_array_equal(ds[D.LOSS].values, want["loss"])
    np.testing.assert_array_equal(ds[D.EPOCH].values, want["epoch"])


def test_crash_point_append_phase1(tmp_path: Path) -> None:
    _every_crash_point(
        _rec_setup,
        _rec_op,
        lambda p: _rec_check(p, complete=False),
        lambda p: _rec_check(p, complete=True),
        tmp_path,
    )


def test_crash_point_delete_experiment(tmp_path: Path) -> None:
    keep = make_phase1_obj(n_records=20, seed=5, layers=("a",))

    def setup(path: Path) -> None:
        s = ndt_store.open_store(path)
        write_phase1_json(tmp_path / "src" / "keep.json", n_records=20, seed=5, layers=("a",))
        write_phase1_json(tmp_path / "src" / "gone.json", n_records=20, seed=6, layers=("a",))
        ndt_store.ingest_phase1(s, tmp_path / "src")

    def op(path: Path) -> None:
        s = ndt_store.open_store(path)
        if "gone" in s.experiments():
            s.delete_experiment("gone")

    def partial(path: Path) -> None:
        s = ndt_store.open_store(path, mode="r")
        assert "keep" in s.experiments()
        _phase1_matches(s, "keep", keep)
        if "gone" in s.experiments():  # still fully there, or not listed at all
            _phase1_matches(s, "gone", make_phase1_obj(n_records=20, seed=6, layers=("a",)))

    def done(path: Path) -> None:
        s = ndt_store.open_store(path, mode="r")
        assert s.experiments() == ["keep"]
        _phase1_matches(s, "keep", keep)

    _every_crash_point(setup, op, partial, done, tmp_path)


def test_crash_point_catalog_rebuild(tmp_path: Path) -> None:
    """A crash while the cross-experiment cache is rebuilt never breaks ``measurements()``."""
    objs = {f"m{i}": make_phase1_obj(n_records=15, seed=i, layers=("a", "b")) for i in range(3)}

    def setup(path: Path) -> None:
        for i in range(3):
            write_phase1_json(
                tmp_path / "src" / f"m{i}.json", n_records=15, seed=i, layers=("a", "b")
            )
        s = ndt_store.open_store(path)
        ndt_store.ingest_phase1(s, tmp_path / "src" / "m0.json")  # builds the cache
        for i in (1, 2):  # written without a rebuild: the cache is now stale
            exp = ndt_store.read_phase1_json(tmp_path / "src" / f"m{i}.json")
            s.write_experiment(exp.name, exp.dataset, exp.metadata)

    def op(path: Path) -> None:
        ndt_store.open_store(path).measurements().load()

    def check(path: Path) -> None:
        ds = ndt_store.open_store(path).measurements().load()
        assert ds[D.EXPERIMENT].values.tolist() == sorted(objs)
        for e, name in enumerate(sorted(objs)):
            recs = objs[name]["measurements"]
            want = [[r["layer_metrics"][la][D.STABLE_RANK] for la in ("a", "b")] for r in recs]
            assert ds[D.STABLE_RANK].values[e].tolist() == want

    _every_crash_point(setup, op, lambda p: None, check, tmp_path)


def test_crash_point_replace_table(tmp_path: Path) -> None:
    def setup(path: Path) -> None:
        ndt_store.open_store(path).write_table("report", C.table_df(0))

    def op(path: Path) -> None:
        ndt_store.open_store(path).write_table("report", C.table_df(1), overwrite=True)

    def check(path: Path, versions: tuple[int, ...]) -> None:
        s = ndt_store.open_store(path, mode="r")
        assert s.tables() == ["report"], s.tables()
        got = s.table("report")
        assert any(got["step"].tolist() == C.table_df(v)["step"].tolist() for v in versions)

    _every_crash_point(setup, op, lambda p: check(p, (0, 1)), lambda p: check(p, (1,)), tmp_path)


def test_crash_point_new_table(tmp_path: Path) -> None:
    """A brand-new table appears whole or not at all; no stray names are listed."""
    df = pd.DataFrame({"step": [1, 2, 3], "name": ["a", "b", "c"]})

    def op(path: Path) -> None:
        ndt_store.open_store(path).write_table("fresh", df)

    def check(path: Path, *, complete: bool) -> None:
        s = ndt_store.open_store(path, mode="r")
        assert s.tables() in ((["fresh"],) if complete else ([], ["fresh"])), s.tables()
        if s.tables():
            got = s.table("fresh")
            assert got["step"].tolist() == [1, 2, 3] and list(got["name"]) == ["a", "b", "c"]

    _every_crash_point(
        lambda p: ndt_store.open_store(p),
        op,
        lambda p: check(p, complete=False),
        lambda p: check(p, complete=True),
        tmp_path,
    )


def test_crash_point_create_store(tmp_path: Path) -> None:
    def op(path: Path) -> None:
        s = ndt_store.open_store(path)
        if "e" not in s.experiments():
            s.create_run("e", {"arch_name": "a"}, ["x"])

    def partial(path: Path) -> None:
        if (path / "zarr.json").exists():
            assert ndt_store.open_store(path, mode="r").experiments() in ([], ["e"])

    def done(path: Path) -> None:
        s = ndt_store.open_store(path, mode="r")
        assert s.experiments() == ["e"] and s.metadata("e") == {"arch_name": "a"}

    _every_crash_point(lambda p: p.mkdir(), op, partial, done, tmp_path)


@pytest.mark.torch
def test_crash_point_ingest_checkpoints(tmp_path: Path) -> None:
    """Checkpoint import: each step appears whole or not at all; a rerun finishes the job."""
    torch = pytest.importorskip("torch")
    from ndt_store.ingest.checkpoints import ingest_checkpoints

    src = tmp_path / "ckpt"
    src.mkdir()
    want = {}
    for step in (100, 200, 300):
        g = torch.Generator().manual_seed(step)
        state = {"fc1.weight": torch.randn(16, 8, generator=g), "fc1.bias": torch.randn(16)}
        torch.save(
            {"model_state_dict": state, "step": step, "loss": step / 1000},
            src / f"checkpoint_step_{step}.pt",
        )
        want[step] = {k: v.numpy() for k, v in state.items()}

    def op(path: Path) -> None:
        ingest_checkpoints(ndt_store.open_store(path), src, experiment="run")

    def check(path: Path, *, complete: bool) -> None:
        s = ndt_store.open_store(path, mode="r")
        if "run" not in s.experiments():
            assert not complete
            return
        steps = s.snapshot_steps("run")
        assert set(steps) <= set(want) and (not complete or steps == sorted(want)), steps
        if steps:
            w = s.weights("run")
            assert sorted(w) == ["fc1.bias", "fc1.weight"]
            for name, arr in w.items():
                for i, st_ in enumerate(steps):
                    np.testing.assert_array_equal(arr.values[i], want[st_][name])

    _every_crash_point(
        lambda p: ndt_store.open_store(p),
        op,
        lambda p: check(p, complete=False),
        lambda p: check(p, complete=True),
        tmp_path,
    )
