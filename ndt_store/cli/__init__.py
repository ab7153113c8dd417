"""The ``ndt-store`` command line: argument parsing, progress and formatting only.

Each command group lives in its own module exposing ``register(subparsers)``;
commands call the public Python API and never analyse anything themselves.

Start-up stays light: a command module imports only ``argparse`` and the
standard library at its top, and imports numpy, xarray, pandas, ... inside the
function that runs the command, so ``ndt-store --help`` and every
``COMMAND --help`` print without loading the numeric stack
(``tests/test_imports.py`` guards this). ``COMMANDS`` names the module of each
command, so running one command imports that command's module only. To add a
command: add its module to ``COMMAND_MODULES`` and its name to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ndt_store.errors import NdtStoreError

COMMAND_MODULES: tuple[str, ...] = (
    "ndt_store.cli._store_cmds",
    "ndt_store.cli._analysis_cmds",
    "ndt_store.cli._tensor_cmds",
    "ndt_store.cli._quickstart_cmd",
    "ndt_store.cli._synth_cmd",
    "ndt_store.cli._verify_cmd",
    "ndt_store.cli._estimate_cmd",
    "ndt_store.cli._serve_cmd",
)


COMMANDS: dict[str, str] = {
    "ingest": "ndt_store.cli._store_cmds",
    "ls": "ndt_store.cli._store_cmds",
    "show": "ndt_store.cli._store_cmds",
    "export": "ndt_store.cli._store_cmds",
    "rm": "ndt_store.cli._store_cmds",
    "jumps": "ndt_store.cli._analysis_cmds",
    "periods": "ndt_store.cli._analysis_cmds",
    "moments": "ndt_store.cli._analysis_cmds",
    "compare": "ndt_store.cli._analysis_cmds",
    "report": "ndt_store.cli._analysis_cmds",
    "quickstart": "ndt_store.cli._quickstart_cmd",
    "synth": "ndt_store.cli._synth_cmd",
    "verify": "ndt_store.cli._verify_cmd",
    "estimate": "ndt_store.cli._estimate_cmd",
    "serve": "ndt_store.cli._serve_cmd",
}
"""Command name -> the module that registers it (a command not listed is found in
``COMMAND_MODULES`` by building the full parser)."""


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named on the command line (its first argument that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(modules: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``modules`` (default: every command module that is installed)."""
    parser = argparse.ArgumentParser(
        prog="ndt-store",
        description="Labeled Zarr storage and analysis of neural-network training dynamics.",
    )
    from ndt_store import __version__

    parser.add_argument("--version", action="version", version=f"ndt-store {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES if modules is None else modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ndt-store`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    module = COMMANDS.get(_command_of(argv) or "")
    parser = build_parser(None if module is None else [module])
    args = parser.parse_args(argv)
    try:
        scheduler, workers = getattr(args, "scheduler", None), getattr(args, "workers", None)
        if scheduler is None and workers is None:
            return int(args.func(args) or 0)
        from ndt_store.cluster import use_scheduler

        with use_scheduler(scheduler, workers):
            return int(args.func(args) or 0)
    except NdtStoreError as exc:
        print(f"ndt-store: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ndt-store: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
