"""Soak test: SIGKILL store operations at random instants, hundreds of times.

Run as a script (figures go to ``docs/guarantees.md``)::

    python tests/slow/soak_kill.py --kills 200 --seed 1

or through pytest with ``-m slow``. Each *episode* starts a fresh store, kills
the operation up to ``--per-episode`` times (each rerun resumes the interrupted
job on the same store, so resume paths get killed too), checks the store after
every kill, then reruns the operation to completion and checks that the job is
finished. It prints and returns: kills performed, stores that failed to open,
committed units lost, torn units seen, unfinished reruns; all but the first
must be zero.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent


def _load_ops() -> Any:
    spec = importlib.util.spec_from_file_location("crash_ops", _HERE / "crash_ops.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("crash_ops", module)
    spec.loader.exec_module(module)
    return module


def soak(
    kills: int = 200,
    *,
    seed: int = 0,
    ops: tuple[str, ...] = ("ingest", "snapshot", "batch", "record", "table"),
    per_episode: int = 3,
    workdir: Path | None = None,
    verbose: bool = True,
    precreate: bool = False,
) -> dict[str, Any]:
    """Kill operations ``kills`` times in all; return the tallies.

    With ``precreate`` every episode's store is created before the first kill, so
    the window in which a brand-new store is being initialised is not attacked.
    """
    C = _load_ops()
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="ndt-soak-", dir=workdir))
    src = base / "src"
    C.prepare_source(src)
    tally: dict[str, Any] = {
        "kills": 0,
        "episodes": 0,
        "failed_to_open": 0,
        "lost": 0,
        "torn": 0,
        "unfinished_after_rerun": 0,
        "finished_before_kill": 0,
        "problems": [],
        "per_op": {op: 0 for op in ops},
    }
    t_start = time.monotonic()
    with C.Zygote() as z:
        durations = {}
        for op in ops:  # calibrate: one clean run per operation
            store, prog = base / f"cal-{op}.zarr", base / f"cal-{op}.txt"
            durations[op] = z.run(op, C.op_args(op, store, prog, src), None)["elapsed"]
            result = C.check(op, store, prog, src)
            assert result.complete, (op, result)
        episode = 0
        while tally["kills"] < kills:
            op = ops[episode % len(ops)]
            episode += 1
            store, prog = base / f"e{episode}.zarr", base / f"e{episode}.txt"
            if precreate:
                _create(store)
            for _ in range(per_episode):
                if tally["kills"] >= kills:
                    break
                delay = rng.uniform(0.0, durations[op] * 1.05)
                res = z.run(op, C.op_args(op, store, prog, src), delay)
                if not res["killed"]:
                    tally["finished_before_kill"] += 1
                    break
                tally["kills"] += 1
                tally["per_op"][op] += 1
                _tally(tally, op, C.check(op, store, prog, src), f"e{episode} after kill")
            res = z.run(op, C.op_args(op, store, prog, src), None)
            final = C.check(op, store, prog, src)
            _tally(tally, op, final, f"e{episode} rerun (exit {res['exit']})")
            if not final.complete:
                tally["unfinished_after_rerun"] += 1
                tally["problems"].append(f"e{episode} {op}: rerun did not finish the job")
            tally["episodes"] += 1
            shutil.rmtree(store, ignore_errors=True)
            if verbose and episode % 20 == 0:
                print(f"  {tally['kills']} kills, {tally['episodes']} episodes ...", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    tally["seconds"] = round(time.monotonic() - t_start, 1)
    tally["calibration_s"] = {k: round(v, 3) for k, v in durations.items()}
    return tally


def _create(path: Path) -> None:
    import ndt_store

    ndt_store.open_store(path)


def _tally(tally: dict[str, Any], op: str, result: Any, where: str) -> None:
    if not result.opened:
        tally["failed_to_open"] += 1
        tally["problems"].append(f"{where} {op}: store failed to open: {result.error}")
    tally["lost"] += len(result.lost)
    tally["torn"] += len(result.torn)
    for item in result.lost:
        tally["problems"].append(f"{where} {op}: lost {item}")
    for item in result.torn:
        tally["problems"].append(f"{where} {op}: torn {item}")


def report(tally: dict[str, Any]) -> str:
    """Human-readable summary of :func:`soak`'s tallies."""
    lines = [
        f"kills performed:           {tally['kills']} ({tally['per_op']})",
        f"episodes:                  {tally['episodes']}"
        f" (finished before the kill: {tally['finished_before_kill']})",
        f"stores that failed to open: {tally['failed_to_open']}",
        f"committed units lost:      {tally['lost']}",
        f"torn units seen:           {tally['torn']}",
        f"reruns that did not finish: {tally['unfinished_after_rerun']}",
        f"wall time:                 {tally['seconds']} s (clean runs: {tally['calibration_s']})",
    ]
    lines += [f"  ! {p}" for p in tally["problems"][:30]]
    return "\n".join(lines)


@pytest.mark.slow
def test_soak_kill(tmp_path: Path) -> None:
    tally = soak(kills=200, seed=12345, workdir=tmp_path, verbose=False)
    assert tally["kills"] == 200
    assert tally["failed_to_open"] == 0, report(tally)
    assert tally["lost"] == 0, report(tally)
    assert tally["torn"] == 0, report(tally)
    assert tally["unfinished_after_rerun"] == 0, report(tally)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit status 1 when any tally that must be zero is not."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-episode", type=int, default=3)
    parser.add_argument("--ops", default="ingest,snapshot,batch,record,table")
    parser.add_argument(
        "--precreate",
        action="store_true",
        help="create each store before killing (skip the store-creation window)",
    )
    args = parser.parse_args(argv)
    tally = soak(
        args.kills,
        seed=args.seed,
        ops=tuple(args.ops.split(",")),
        per_episode=args.per_episode,
        precreate=args.precreate,
    )
    print(report(tally))
    bad = tally["failed_to_open"] + tally["lost"] + tally["torn"] + tally["unfinished_after_rerun"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
