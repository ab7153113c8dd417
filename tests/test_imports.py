"""Light start-up: what ``import ndt_store`` and the light CLI commands load.

Each case runs in a fresh interpreter and lists ``sys.modules`` afterwards, so a
module-level ``import pandas`` (or a chain of imports reaching matplotlib or
torch) added to a command module fails here, naming the command and the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ndt_store
from ndt_store.cli import COMMAND_MODULES, COMMANDS, build_parser
from ndt_store.testing import write_phase1_json

ROOT = Path(__file__).resolve().parents[1]
NUMERIC = ("numpy", "xarray", "zarr", "dask", "pandas", "matplotlib", "scipy", "torch")
NOT_FOR_LIGHT_COMMANDS = (
    "matplotlib",
    "torch",
    "distributed",
    "sklearn",
    "ndt_store.capture",
    "ndt_store.report",
    "ndt_store.plot",
    "ndt_store.moments",
    "ndt_store.compare",
    "ndt_store.quickstart",
)

_PROBE = """
import contextlib, io, json, sys
{body}
print("MODULES=" + json.dumps(sorted(sys.modules)))
"""


def _modules_after(body: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(body=body)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES="))
    return set(json.loads(line.removeprefix("MODULES=")))


def _cli(args: list[str]) -> str:
    return (
        "from ndt_store.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        status = main({args!r})\n"
        "    except SystemExit as exc:\n"
        "        status = exc.code\n"
        "assert status == 0, status\n"
    )


def _loaded(modules: set[str], heavy: tuple[str, ...]) -> list[str]:
    return sorted(h for h in heavy if h in modules or any(m.startswith(h + ".") for m in modules))


def test_import_ndt_store_loads_no_numeric_stack():
    modules = _modules_after("import ndt_store\nassert ndt_store.__version__")
    assert _loaded(modules, NUMERIC) == []


def test_every_public_name_still_resolves():
    for name in ndt_store.__all__:
        assert getattr(ndt_store, name) is not None, name
    assert set(ndt_store.__all__) <= set(dir(ndt_store))
    from ndt_store import Recorder, jump_table, open_store  # noqa: F401

    with pytest.raises(AttributeError, match="no_such_name"):
        ndt_store.no_such_name  # noqa: B018


def test_commands_table_matches_the_parser():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(COMMANDS) <= set(sub.choices)
    assert set(COMMANDS.values()) <= set(COMMAND_MODULES)


def _all_commands() -> list[str]:
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    return sorted(sub.choices)


@pytest.mark.parametrize("command", [None, *_all_commands()])
def test_help_loads_no_numeric_stack(command):
    args = ["--help"] if command is None else [command, "--help"]
    assert _loaded(_modules_after(_cli(args)), NUMERIC) == [], args


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("light")
    path = tmp / "s.zarr"
    store = ndt_store.open_store(path)
    ndt_store.ingest_phase1(store, write_phase1_json(tmp / "run.json", n_records=12))
    store.write_snapshot(
        "run", 5, weights={"w": np.ones((4, 3))}, activations={"fc1": np.ones((8, 4))}
    )
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["ls"],
        ["show", "-e", "run", "-s", "5"],
        ["verify"],
        ["jumps", "--format", "csv"],
        ["jumps", "--alpha", "0.05", "--metric", "participation_ratio"],
    ],
    ids=lambda a: " ".join(a[:3]),
)
def test_light_commands_load_only_what_they_use(small_store, args):
    modules = _modules_after(_cli([*args, "--store", str(small_store)]))
    assert _loaded(modules, NOT_FOR_LIGHT_COMMANDS) == [], args
    # they read Zarr groups and arrays directly: no labeled-array or dataframe stack
    assert _loaded(modules, ("xarray", "pandas", "dask")) == [], args


@pytest.mark.parametrize("args", [["jumps", "--format", "csv"], ["ls"]], ids=lambda a: a[0])
def test_jumps_and_ls_on_a_local_store_do_not_import_zarr(small_store, args):
    """They read a local store's files straight from disk (``_local_read``)."""
    modules = _modules_after(_cli([*args, "--store", str(small_store)]))
    assert _loaded(modules, ("zarr", "ndt_store.store", "ndt_store._frame")) == [], args
