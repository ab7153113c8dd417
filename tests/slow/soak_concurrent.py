"""Concurrency soak: several processes write the same experiments while readers loop.

Run as a script (figures go to ``docs/guarantees.md``)::

    python tests/slow/soak_concurrent.py --writers 3 --readers 2 --seconds 60 --seed 1

or through pytest with ``-m slow``. Writers commit snapshots (whose parameter
sets differ from step to step), Phase 1 records and metadata fields to the same
experiments, each through a fresh ``Store`` object or a long-lived one (whose
cache goes stale as the others write). Every commit the API reported is
journaled (fsynced) after the call returned. Readers loop over fresh and
long-lived read-only stores, reading Phase 1, weights and the cross-experiment
view. Writers are SIGKILLed at random instants once they have started writing,
and restarted.

At the end: every journaled commit must be in the store (0 lost), no reader may
have met a ``CorruptStoreError`` or any other unexpected error (0 false
corruption), and ``verify_store`` must be clean.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

EXPERIMENTS = ("e0", "e1")
LAYERS = ["x", "y"]


# ------------------------------------------------------------------ the workers
def _rows(step: int) -> Any:
    import numpy as np
    import xarray as xr

    from ndt_store import _dims as D

    data: dict[str, Any] = {
        m: ((D.STEP, D.LAYER), np.full((1, len(LAYERS)), float(step % 1000)))
        for m in D.PHASE1_METRICS
    }
    data[D.LOSS] = (D.STEP, np.asarray([float(step % 997)]))
    return xr.Dataset(data, coords={D.STEP: [step], D.LAYER: LAYERS})


def _journal(fh: Any, record: dict[str, Any]) -> None:
    fh.write(json.dumps(record) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def writer(store_path: str, journal: str, wid: int, gen: int, seed: int) -> None:
    """Commit forever (until killed); journal each commit after the API reported it."""
    import numpy as np

    import ndt_store
    from ndt_store.errors import ConflictError

    rng = random.Random(seed)
    long_lived = ndt_store.open_store(store_path)
    Path(journal).with_suffix(".ready").write_text(str(gen))  # imports done: kill me now
    count = 0
    with open(journal, "a") as fh:
        while True:
            exp = rng.choice(EXPERIMENTS)
            store = long_lived if rng.random() < 0.5 else ndt_store.open_store(store_path)
            what = rng.choice(("snapshot", "snapshot", "phase1", "metadata"))
            count += 1
            try:
                if what == "snapshot":
                    step = wid * 10**9 + gen * 10**6 + count
                    weights = {"w": np.full(4, float(step % 9973), np.float32)}
                    if rng.random() < 0.3:  # a parameter only some steps have
                        weights[f"extra{wid}"] = np.full(2, 1.0, np.float32)
                    store.write_snapshot(exp, step, weights=weights)
                    _journal(fh, {"kind": "snapshot", "exp": exp, "step": step})
                elif what == "phase1":
                    with store.writer(exp):  # the step is taken under the lock: it increases
                        step = time.time_ns() // 1000
                        store.append_phase1(exp, _rows(step))
                    _journal(fh, {"kind": "phase1", "exp": exp, "step": step})
                else:
                    key, value = f"w{wid}", gen * 10**6 + count
                    store.update_metadata(exp, **{key: value})
                    _journal(fh, {"kind": "metadata", "exp": exp, "key": key, "value": value})
            except ConflictError:
                time.sleep(rng.uniform(0.0, 0.01))  # another writer holds the experiment


def reader(store_path: str, out: str, seed: int) -> None:
    """Read in a loop until killed; record every unexpected error."""
    import ndt_store
    from ndt_store import _dims as D
    from ndt_store.errors import CorruptStoreError, NotFoundError

    rng = random.Random(seed)
    long_lived = ndt_store.open_store(store_path, mode="r")
    reads = 0
    with open(out, "a") as fh:
        while True:
            store = long_lived if rng.random() < 0.5 else ndt_store.open_store(store_path, "r")
            if store is long_lived and rng.random() < 0.5:
                long_lived.refresh()
            exp = rng.choice(EXPERIMENTS)
            try:
                store.phase1(exp)[D.LOSS].values.sum()
                if store.snapshot_steps(exp):
                    for arr in store.weights(exp).values():
                        arr[-3:].values.sum()
                if rng.random() < 0.1:
                    store.measurements()[D.LOSS].values.sum()
                reads += 1
                if reads % 5 == 0:
                    _journal(fh, {"reads": reads})
            except NotFoundError:
                pass  # a long-lived reader asked for an experiment it has not listed yet
            except CorruptStoreError as exc:
                _journal(fh, {"error": "corrupt", "message": str(exc)})
            except Exception as exc:  # every other error is a finding too
                _journal(fh, {"error": type(exc).__name__, "message": str(exc)})


# ------------------------------------------------------------------- the driver
def soak(
    *,
    writers: int = 3,
    readers: int = 2,
    seconds: float = 60.0,
    kill_every: float = 3.0,
    seed: int = 0,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Run the soak; return the tallies."""
    import ndt_store

    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="ndt-conc-", dir=workdir))
    path = base / "s.zarr"
    store = ndt_store.open_store(path)
    for exp in EXPERIMENTS:
        store.create_run(exp, {"arch_name": "soak"}, LAYERS)
    me = str(Path(__file__).resolve())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def start(role: str, *args: Any) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, me, role, str(path), *map(str, args)]
        with open(base / f"{role}-{args[0].stem}.err", "ab") as err:  # type: ignore[union-attr]
            return subprocess.Popen(cmd, env=env, stderr=err)

    gens = [0] * writers
    procs = [start("writer", base / f"w{i}.jsonl", i, 0, rng.random()) for i in range(writers)]
    reads = [start("reader", base / f"r{i}.jsonl", rng.random()) for i in range(readers)]
    kills = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        i = rng.randrange(writers)
        ready = base / f"w{i}.ready"
        while not (ready.exists() and ready.read_text() == str(gens[i])):
            time.sleep(0.05)  # the writer is still starting (imports): not yet writing
        time.sleep(rng.uniform(0.2, 2 * kill_every))
        procs[i].send_signal(signal.SIGKILL)
        procs[i].wait()
        kills += 1
        gens[i] += 1
        procs[i] = start("writer", base / f"w{i}.jsonl", i, gens[i], rng.random())
        for j, p in enumerate(reads):  # a reader that died on its own is a finding
            if p.poll() is not None:
                err = (base / f"reader-r{j}.err").read_text()[-2000:]
                raise AssertionError(f"reader {j} exited ({p.returncode}): {err}")
    for p in [*procs, *reads]:
        p.send_signal(signal.SIGKILL)
        p.wait()
    tally = _check(path, base, writers, readers)
    for i in range(writers):  # a writer that failed (not killed) is a finding
        err = (base / f"writer-w{i}.err").read_text()
        if "Traceback" in err:
            tally["writer_errors"] = tally.get("writer_errors", 0) + err.count("Traceback")
            tally["problems"].append(f"writer {i}: {err[-1500:]}")
    tally.update(kills=kills, seconds=round(time.monotonic() - t0, 1), writers=writers)
    tally["readers"] = readers
    shutil.rmtree(base, ignore_errors=True)
    return tally


def _check(path: Path, base: Path, writers: int, readers: int) -> dict[str, Any]:
    import numpy as np

    import ndt_store

    store = ndt_store.open_store(path, mode="r")
    tally: dict[str, Any] = {"commits": 0, "lost": 0, "problems": [], "reads": 0}
    tally.update(false_corruption=0, reader_errors=0)
    steps = {e: set(store.snapshot_steps(e)) for e in EXPERIMENTS}
    records = {e: set(store.phase1(e).step.values.tolist()) for e in EXPERIMENTS}
    meta = {e: store.metadata(e) for e in EXPERIMENTS}
    weights: dict[str, dict[int, float]] = {}
    for e in EXPERIMENTS:
        if steps[e]:
            w = store.weights(e)["w"]
            weights[e] = dict(zip(w.step.values.tolist(), w.values[:, 0].tolist(), strict=True))
    last_meta: dict[tuple[str, str], int] = {}
    for i in range(writers):
        journal = base / f"w{i}.jsonl"
        for line in journal.read_text().splitlines() if journal.exists() else []:
            rec = json.loads(line)
            tally["commits"] += 1
            exp = rec["exp"]
            if rec["kind"] == "snapshot":
                ok = rec["step"] in steps[exp] and weights[exp].get(rec["step"]) == float(
                    np.float32(rec["step"] % 9973)
                )
            elif rec["kind"] == "phase1":
                ok = rec["step"] in records[exp]
            else:
                key = (exp, rec["key"])
                last_meta[key] = max(last_meta.get(key, -1), rec["value"])
                continue
            if not ok:
                tally["lost"] += 1
                tally["problems"].append(f"lost {rec}")
    for (exp, key), value in last_meta.items():
        if meta[exp].get(key, -1) < value:
            tally["lost"] += 1
            tally["problems"].append(f"lost metadata {exp}.{key}={value}: {meta[exp].get(key)}")
    tally["snapshots"] = sum(len(s) for s in steps.values())
    tally["records"] = sum(len(r) for r in records.values())
    for i in range(readers):
        out = base / f"r{i}.jsonl"
        most = 0
        for line in out.read_text().splitlines() if out.exists() else []:
            rec = json.loads(line)
            if "reads" in rec:
                most = max(most, rec["reads"])
            elif rec["error"] == "corrupt":
                tally["false_corruption"] += 1
                tally["problems"].append(f"reader: {rec['message']}")
            else:
                tally["reader_errors"] += 1
                tally["problems"].append(f"reader {rec['error']}: {rec['message']}")
        tally["reads"] += most
    report = ndt_store.verify_store(store)
    tally["verify_errors"] = sum(1 for p in report.problems if p.severity == "error")
    tally["problems"] += [str(p) for p in report.problems if p.severity == "error"]
    return tally


def report(tally: dict[str, Any]) -> str:
    """Human-readable summary of :func:`soak`'s tallies."""
    lines = [
        f"writers / readers:          {tally['writers']} / {tally['readers']}",
        f"wall time:                  {tally['seconds']} s, writer SIGKILLs: {tally['kills']}",
        f"reported commits journaled: {tally['commits']} "
        f"(stored: {tally['snapshots']} snapshots, {tally['records']} Phase 1 records)",
        f"lost commits:               {tally['lost']}",
        f"reader loops (about):       {tally['reads']}",
        f"false corruption reports:   {tally['false_corruption']}",
        f"other reader errors:        {tally['reader_errors']}",
        f"verify errors:              {tally['verify_errors']}",
        f"writer errors:              {tally.get('writer_errors', 0)}",
    ]
    lines += [f"  ! {p}" for p in tally["problems"][:30]]
    return "\n".join(lines)


@pytest.mark.slow
def test_soak_concurrent(tmp_path: Path) -> None:
    tally = soak(writers=3, readers=2, seconds=60, seed=7, workdir=tmp_path)
    assert tally["kills"] > 5 and tally["commits"] > 20, report(tally)
    assert tally["lost"] == 0, report(tally)
    assert tally["false_corruption"] == 0, report(tally)
    assert tally["reader_errors"] == 0, report(tally)
    assert tally["verify_errors"] == 0, report(tally)
    assert tally.get("writer_errors", 0) == 0, report(tally)


def main(argv: list[str] | None = None) -> int:
    """Command line: the driver, or (internally) one writer / reader process."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "writer":
        writer(argv[1], argv[2], int(argv[3]), int(argv[4]), int(float(argv[5]) * 2**31))
        return 0
    if argv and argv[0] == "reader":
        reader(argv[1], argv[2], int(float(argv[3]) * 2**31))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--kill-every", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tally = soak(
        writers=args.writers,
        readers=args.readers,
        seconds=args.seconds,
        kill_every=args.kill_every,
        seed=args.seed,
    )
    print(report(tally))
    bad = tally["lost"] + tally["false_corruption"] + tally["reader_errors"]
    bad += tally.get("writer_errors", 0)
    return 1 if bad + tally["verify_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
