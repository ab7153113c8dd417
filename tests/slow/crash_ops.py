"""Kill-at-random-instants harness shared by the crash tests and the soak script.

A *zygote* subprocess imports ndt_store once and then forks one child per
attempt; the child performs a store operation (ingest through the CLI, snapshot
writes, Phase 1 appends, table replacement) and the zygote SIGKILLs it after a
random delay. Forking from an idle zygote keeps each attempt cheap (no 1 s of
imports) and safe (the zygote never started zarr's I/O thread).

After each kill the store is checked against the values the operation *meant*
to write, computed independently here from seeds:

- ``opened``: the store opens read-only and lists its experiments;
- ``lost``: units the child reported committed (it appends a line to a progress
  file after each call returns) that are not visible;
- ``torn``: visible units whose values differ from the intended ones, whose
  arrays disagree in length, or which are visible but not fully written.

Running the module as a script starts a zygote (``python crash_ops.py serve``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

N_FILES = 4
N_RECORDS = 150
LAYERS = ("fc1", "fc2", "fc3")
SNAP_STEPS = tuple(range(0, 120, 10))
SNAP_BATCH = 4
"""Steps per ``write_snapshots`` call of the batch operation."""
RECORD_STEPS = tuple(range(0, 400, 5))
RECORD_BATCH = 4
TABLE_VERSIONS = 3


# ----------------------------------------------------------------- intended data
def phase1_obj(i: int) -> dict[str, Any]:
    """The Phase 1 JSON object of source file ``i``."""
    from ndt_store.testing import make_phase1_obj

    return make_phase1_obj(n_records=N_RECORDS, seed=i, layers=LAYERS, arch_name=f"arch{i}")


def table_df(version: int) -> Any:
    """The published-jumps-like table of ``version`` (distinct values per version)."""
    import pandas as pd

    n = 5 + version
    return pd.DataFrame(
        {
            "step": np.arange(n, dtype=np.int64) * 10 + version,
            "magnitude": np.linspace(0.5, 2.0, n) * (version + 1),
            "layer": [f"fc{j % 3}" for j in range(n)],
        }
    )


def snapshot_tensors(step: int) -> dict[str, dict[str, np.ndarray]]:
    """Weights, activations and attention the snapshot operation writes at ``step``."""
    rng = np.random.default_rng([7, step])
    attn = rng.random((32, 2, 8, 8)).astype(np.float32)
    attn /= attn.sum(-1, keepdims=True)
    return {
        "weights": {
            "fc1.weight": rng.standard_normal((192, 96)).astype(np.float32),
            "fc1.bias": rng.standard_normal(192).astype(np.float32),
            "fc2.weight": rng.standard_normal((10, 192)).astype(np.float32),
        },
        "activations": {"fc1": rng.standard_normal((32, 192)).astype(np.float32)},
        "attention": {"attn0": attn},
    }


PROBE_LABELS = np.arange(32, dtype=np.int64) % 10


def record_rows(steps: np.ndarray) -> dict[str, np.ndarray]:
    """Intended Phase 1 values of the recording operation at ``steps``."""
    s = np.asarray(steps, dtype=np.float64)[:, None, None]
    layer = np.arange(len(LAYERS), dtype=np.float64)[None, :, None]
    metric = np.arange(4, dtype=np.float64)[None, None, :]
    metrics = 1.0 + np.sin(s * 0.01 + layer) ** 2 + metric * 0.25 + layer
    st = np.asarray(steps, dtype=np.float64)
    return {
        "metrics": metrics,
        "loss": 2.0 / (1.0 + st * 0.01),
        "grad_norm": 0.1 + np.cos(st) ** 2,
        "epoch": (np.asarray(steps, dtype=np.int64) // 100) + 1,
    }


def record_dataset(steps: np.ndarray) -> Any:
    """The rows the recording operation appends, as the store's Phase 1 dataset."""
    import xarray as xr

    from ndt_store import _dims as D

    vals = record_rows(steps)
    data = {
        m: ((D.STEP, D.LAYER), vals["metrics"][:, :, k]) for k, m in enumerate(D.PHASE1_METRICS)
    }
    data[D.LOSS] = (D.STEP, vals["loss"])
    data[D.GRAD_NORM] = (D.STEP, vals["grad_norm"])
    data[D.EPOCH] = (D.STEP, vals["epoch"])
    return xr.Dataset(data, coords={D.STEP: np.asarray(steps), D.LAYER: list(LAYERS)})


def prepare_source(src: Path) -> None:
    """Write the Phase 1 JSON files (and the two small CSV tables) the ingest reads."""
    src.mkdir(parents=True, exist_ok=True)
    for i in range(N_FILES):
        (src / f"exp{i}.json").write_text(json.dumps(phase1_obj(i)))
    jumps, periods = published_tables()
    jumps.to_csv(src / "all_jumps_detailed.csv", index=False)
    periods.to_csv(src / "critical_periods_detailed.csv", index=False)


def published_tables() -> tuple[Any, Any]:
    """Small tables with the published columns (ingested beside the JSON files)."""
    import pandas as pd

    from ndt_store.ingest.tables import JUMP_COLUMNS, PERIOD_COLUMNS

    jumps = pd.DataFrame({c: [f"{c}{j}" for j in range(3)] for c in JUMP_COLUMNS})
    for c in ("step", "magnitude", "speed", "phase"):
        jumps[c] = np.arange(3) * 1.5 + 1
    periods = pd.DataFrame({c: [f"{c}{j}" for j in range(2)] for c in PERIOD_COLUMNS})
    for c in PERIOD_COLUMNS[3:]:
        periods[c] = np.arange(2) * 0.5 + 2
    return jumps, periods


# ------------------------------------------------------------------- operations
def _progress(path: str, unit: str) -> None:
    with open(path, "a") as fh:
        fh.write(unit + "\n")
        fh.flush()


def op_ingest(store: str, src: str, progress: str) -> None:
    """``ndt-store ingest phase1 SRC --store STORE`` (the real command)."""
    from ndt_store.cli import main

    rc = main(["ingest", "phase1", src, "--store", store])
    if rc == 0:
        for i in range(N_FILES):
            _progress(progress, f"exp{i}")
        _progress(progress, "tables")
    else:
        raise SystemExit(rc)


def op_snapshot(store: str, progress: str) -> None:
    """Create a run and write one snapshot per step (resuming past stored steps)."""
    import ndt_store

    s = ndt_store.open_store(store)
    s.create_run("snap", {"arch_name": "toy", "dataset": "probe"}, list(LAYERS))
    done = set(s.snapshot_steps("snap"))
    for step in SNAP_STEPS:
        if step in done:
            continue
        t = snapshot_tensors(step)
        s.write_snapshot(
            "snap",
            step,
            weights=t["weights"],
            activations=t["activations"],
            attention=t["attention"],
            labels=PROBE_LABELS,
            probe_hash="probe-v1",
            info={"loss": float(step) / 7},
        )
        _progress(progress, str(step))


def snapshot_batch(steps: list[int]) -> dict[str, Any]:
    """Keyword arguments of the ``write_snapshots`` call that writes ``steps``."""
    per_step = [snapshot_tensors(st) for st in steps]
    return {
        kind: {name: np.stack([t[kind][name] for t in per_step]) for name in per_step[0][kind]}
        for kind in ("weights", "activations", "attention")
    } | {"infos": [{"loss": float(st) / 7} for st in steps]}


def op_batch(store: str, progress: str) -> None:
    """Create a run and write its snapshots ``SNAP_BATCH`` steps per call (resuming)."""
    import ndt_store

    s = ndt_store.open_store(store)
    s.create_run("snap", {"arch_name": "toy", "dataset": "probe"}, list(LAYERS))
    done = set(s.snapshot_steps("snap"))
    todo = [step for step in SNAP_STEPS if step not in done]
    for start in range(0, len(todo), SNAP_BATCH):
        steps = todo[start : start + SNAP_BATCH]
        s.write_snapshots(
            "snap", steps, labels=PROBE_LABELS, probe_hash="probe-v1", **snapshot_batch(steps)
        )
        for step in steps:
            _progress(progress, str(step))


def op_record(store: str, progress: str) -> None:
    """Create a run and append Phase 1 rows a few steps at a time (resuming)."""
    import ndt_store

    s = ndt_store.open_store(store)
    s.create_run("rec", {"arch_name": "toy", "dataset": "rec"}, list(LAYERS))
    have = s.phase1("rec").step.values
    last = int(have[-1]) if have.size else -1
    todo = np.asarray([x for x in RECORD_STEPS if x > last], dtype=np.int64)
    for start in range(0, todo.size, RECORD_BATCH):
        chunk = todo[start : start + RECORD_BATCH]
        s.append_phase1("rec", record_dataset(chunk))
        _progress(progress, str(int(chunk[-1])))


def op_table(store: str, progress: str) -> None:
    """Write successive versions of a table (``overwrite=True``), resuming past the stored one."""
    import ndt_store

    s = ndt_store.open_store(store)
    start = 0
    if "report" in s.tables():
        got = s.table("report")
        for v in range(TABLE_VERSIONS):
            if got["step"].tolist() == table_df(v)["step"].tolist():
                start = v + 1
    for v in range(start, TABLE_VERSIONS):
        s.write_table("report", table_df(v), overwrite=True)
        _progress(progress, str(v))


OPS = {
    "ingest": op_ingest,
    "snapshot": op_snapshot,
    "batch": op_batch,
    "record": op_record,
    "table": op_table,
}


# ------------------------------------------------------------------------ checks
@dataclass
class Check:
    """Outcome of checking one store after a kill."""

    opened: bool = True
    units: int = 0
    lost: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    complete: bool = False
    error: str = ""


def _reported(progress: Path) -> list[str]:
    return progress.read_text().split() if progress.exists() else []


def _phase1_equal(ds: Any, obj: dict[str, Any]) -> str:
    from ndt_store import _dims as D

    recs = obj["measurements"]
    if [int(r["step"]) for r in recs] != [int(x) for x in ds[D.STEP].values]:
        return "steps differ"
    layers = list(recs[0]["layer_metrics"])
    if [str(x) for x in ds[D.LAYER].values] != layers:
        return "layers differ"
    for key in (D.LOSS, D.GRAD_NORM):
        if [r[key] for r in recs] != [float(x) for x in ds[key].values]:
            return f"{key} differs"
    if [r["epoch"] for r in recs] != [int(x) for x in ds[D.EPOCH].values]:
        return "epoch differs"
    for m in D.PHASE1_METRICS:
        want = [[r["layer_metrics"][la][m] for la in layers] for r in recs]
        if want != ds[m].values.tolist():
            return f"{m} differs"
    return ""


def check_ingest(store: Path, progress: Path, src: Path) -> Check:
    """Every visible experiment/table equals its source file; reported ones are visible."""
    import pandas as pd

    import ndt_store

    out = Check()
    try:
        s = ndt_store.open_store(store, mode="r")
        names = s.experiments()
    except FileNotFoundError:
        out.opened = store.exists() and any(store.iterdir())
        return _no_store(out, progress)
    except ndt_store.NotFoundError:
        return _no_store(out, progress)
    except Exception as exc:
        out.opened, out.error = False, f"{type(exc).__name__}: {exc}"
        return out
    reported = _reported(progress)
    for name in names:
        if name not in {f"exp{i}" for i in range(N_FILES)}:
            out.torn.append(f"unexpected experiment {name}")
            continue
        out.units += 1
        try:
            why = _phase1_equal(s.phase1(name), json.loads((src / f"{name}.json").read_text()))
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
        if why:
            out.torn.append(f"{name}: {why}")
    tables = s.tables()
    jumps, periods = published_tables()
    for tname in tables:
        want = {"published_jumps": jumps, "published_critical_periods": periods}.get(tname)
        if want is None:
            out.torn.append(f"unexpected table {tname}")
            continue
        out.units += 1
        got = s.table(tname)
        exp = pd.read_csv(
            src
            / (
                "all_jumps_detailed.csv"
                if tname == "published_jumps"
                else "critical_periods_detailed.csv"
            )
        )
        if list(got.columns) != list(exp.columns) or len(got) != len(exp):
            out.torn.append(f"table {tname} shape differs")
            continue
        for c in exp.columns:
            if [str(x) for x in got[c]] != [str(x) for x in exp[c]] and not np.allclose(
                pd.to_numeric(got[c], errors="coerce"), exp[c].to_numpy(float), rtol=0, atol=0
            ):
                out.torn.append(f"table {tname} column {c} differs")
    for unit in reported:
        if unit.startswith("exp") and unit not in names:
            out.lost.append(unit)
        if unit == "tables" and len(tables) < 2:
            out.lost.append("tables")
    out.complete = len(names) == N_FILES and len(tables) == 2 and not out.torn
    return out


def _no_store(out: Check, progress: Path) -> Check:
    out.lost = _reported(progress)
    return out


def _open_readonly(
    store: Path, progress: Path, out: Check, listing: str
) -> tuple[Any, Any, Check | None]:
    """Open ``store`` read-only and call its ``listing`` method (``experiments``/``tables``).

    Returns the store, the listing, and — when opening or listing failed — the
    finished :class:`Check` to return instead.
    """
    import ndt_store

    try:
        s = ndt_store.open_store(store, mode="r")
        return s, getattr(s, listing)(), None
    except ndt_store.NotFoundError:
        return None, None, _no_store(out, progress)
    except Exception as exc:
        out.opened, out.error = False, f"{type(exc).__name__}: {exc}"
        return None, None, out


def check_snapshot(store: Path, progress: Path) -> Check:
    """Every listed snapshot holds exactly the intended tensors at its step."""

    out = Check()
    s, names, failed = _open_readonly(store, progress, out, "experiments")
    if failed is not None:
        return failed
    steps = s.snapshot_steps("snap") if "snap" in names else []
    reported = [int(x) for x in _reported(progress)]
    out.lost = [str(x) for x in reported if x not in steps]
    out.units = len(steps)
    if steps:
        try:
            w = s.weights("snap")
            a = s.activations("snap")
            att = s.attention("snap")
            for kind, got in (("weights", w), ("activations", a), ("attention", att)):
                if sorted(got) != sorted(snapshot_tensors(0)[kind]):
                    out.torn.append(f"{kind}: names {sorted(got)}")
                for name, arr in got.items():
                    if [int(x) for x in arr.step.values] != steps:
                        out.torn.append(f"{kind}/{name}: steps {arr.step.values}")
                        continue
                    values = arr.values
                    for i, st in enumerate(steps):
                        if not np.array_equal(values[i], snapshot_tensors(st)[kind][name]):
                            out.torn.append(f"{kind}/{name} at step {st} differs")
            if not np.array_equal(a["fc1"].label.values, PROBE_LABELS):
                out.torn.append("labels differ")
        except Exception as exc:
            out.torn.append(f"read failed: {type(exc).__name__}: {exc}")
    out.complete = steps == list(SNAP_STEPS) and not out.torn
    return out


def check_batch(store: Path, progress: Path) -> Check:
    """As :func:`check_snapshot`, and the visible steps are whole batches, in order.

    Each call writes the next ``SNAP_BATCH`` missing steps and commits them as one
    unit, so a store killed at any instant (resumed runs included) shows a prefix of
    ``SNAP_STEPS`` made of whole batches (``len(SNAP_STEPS)`` is a multiple of it).
    """
    out = check_snapshot(store, progress)
    s, names, failed = _open_readonly(store, progress, Check(), "experiments")
    if failed is not None:  # no store yet, or one that does not open: check_snapshot said so
        return out
    entries = s.entries()["snap"]["snapshots"] if "snap" in names else []
    steps = sorted(int(e["step"]) for e in entries)
    if steps != list(SNAP_STEPS[: len(steps)]):
        out.torn.append(f"steps are not a prefix of the intended ones: {steps}")
    if len(steps) % SNAP_BATCH:
        out.torn.append(f"{len(steps)} steps is not a whole number of batches: {steps}")
    if any(e.get("loss") != float(e["step"]) / 7 for e in entries):
        out.torn.append("a recorded loss differs")
    return out


def check_record(store: Path, progress: Path) -> Check:
    """The visible rows are a prefix of the intended series, value for value."""
    from ndt_store import _dims as D

    out = Check()
    s, names, failed = _open_readonly(store, progress, out, "experiments")
    if failed is not None:
        return failed
    if "rec" not in names:
        return _no_store(out, progress)
    try:
        ds = s.phase1("rec")
    except Exception as exc:
        out.torn.append(f"read failed: {type(exc).__name__}: {exc}")
        return out
    steps = [int(x) for x in ds[D.STEP].values]
    out.units = len(steps)
    if steps != list(RECORD_STEPS[: len(steps)]):
        out.torn.append(f"steps are not a prefix of the intended series: {steps[:5]}...")
    else:
        want = record_rows(np.asarray(steps, dtype=np.int64))
        got_metrics = np.stack([ds[m].values for m in D.PHASE1_METRICS], -1)
        if not np.array_equal(got_metrics, want["metrics"]):
            out.torn.append("metrics differ")
        for key in (D.LOSS, D.GRAD_NORM, D.EPOCH):
            if not np.array_equal(ds[key].values, want[key]):
                out.torn.append(f"{key} differs")
    if len(steps) % RECORD_BATCH and len(steps) != len(RECORD_STEPS):
        out.torn.append(f"{len(steps)} rows is not a whole number of appended batches")
    last = steps[-1] if steps else -1
    out.lost = [x for x in _reported(progress) if int(x) > last]
    out.complete = steps == list(RECORD_STEPS) and not out.torn
    return out


def check_table(store: Path, progress: Path) -> Check:
    """The table is absent or exactly one of the versions, never partial; no stray tables."""

    out = Check()
    s, tables, failed = _open_readonly(store, progress, out, "tables")
    if failed is not None:
        return failed
    for t in tables:
        if t != "report":
            out.torn.append(f"stray table {t!r} visible")
    reported = [int(x) for x in _reported(progress)]
    if "report" in tables:
        out.units = 1
        got = s.table("report")
        matches = [
            v
            for v in range(TABLE_VERSIONS)
            if got.shape == table_df(v).shape
            and np.array_equal(got["step"].to_numpy(np.int64), table_df(v)["step"].to_numpy())
            and np.array_equal(got["magnitude"].to_numpy(float), table_df(v)["magnitude"])
            and [str(x) for x in got["layer"]] == list(table_df(v)["layer"])
        ]
        if not matches:
            out.torn.append("table 'report' matches no written version")
        elif reported and matches[0] < reported[-1]:
            out.lost.append(f"version {reported[-1]} (table shows {matches[0]})")
        out.complete = matches == [TABLE_VERSIONS - 1] and not out.torn
    elif reported:
        out.lost.append(f"table 'report' (version {reported[-1]} reported written)")
    return out


def check(op: str, store: Path, progress: Path, src: Path | None = None) -> Check:
    """Dispatch to the checker of ``op``."""
    if op == "ingest":
        assert src is not None
        return check_ingest(store, progress, src)
    checks = {
        "snapshot": check_snapshot,
        "batch": check_batch,
        "record": check_record,
        "table": check_table,
    }
    return checks[op](store, progress)


def op_args(op: str, store: Path, progress: Path, src: Path | None) -> list[str]:
    """Arguments of ``op`` for the zygote."""
    if op == "ingest":
        return [str(store), str(src), str(progress)]
    return [str(store), str(progress)]


# ------------------------------------------------------------------------ zygote
def serve() -> None:  # pragma: no cover - runs in the zygote process
    """Read ``{"op", "args", "delay"}`` lines; fork, run, kill after ``delay`` (None: never)."""
    import pandas  # noqa: F401
    import xarray  # noqa: F401

    import ndt_store
    import ndt_store.cli
    import ndt_store.ingest.tables  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.dup2(2, 1)  # the child's prints must not reach the protocol pipe
            code = 0
            try:
                OPS[cmd["op"]](*cmd["args"])
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        t0 = time.monotonic()
        delay = cmd.get("delay")
        killed = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if delay is not None and time.monotonic() - t0 >= delay:
                os.kill(pid, signal.SIGKILL)
                killed = True
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.002)
        print(
            json.dumps(
                {
                    "killed": killed,
                    "exit": os.waitstatus_to_exitcode(status),
                    "elapsed": time.monotonic() - t0,
                }
            ),
            flush=True,
        )


class Zygote:
    """Controller of a zygote subprocess (context manager)."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._read(120)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("zygote did not answer")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("zygote exited")
        return json.loads(line)

    def run(self, op: str, args: list[str], delay: float | None, timeout: float = 120) -> dict:
        """Run ``op`` in a fresh child, SIGKILLed after ``delay`` seconds (if still running)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "args": args, "delay": delay}) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def close(self) -> None:
        """Stop the zygote."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["serve"]:
        serve()
