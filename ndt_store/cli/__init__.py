"""The ``ndt-store`` command line: argument parsing, progress and formatting only.

Each command group lives in its own module exposing ``register(subparsers)``;
commands call the public Python API and never analyse anything themselves.
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
    "ndt_store.cli._serve_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every command module that is installed)."""
    parser = argparse.ArgumentParser(
        prog="ndt-store",
        description="Labeled Zarr storage and analysis of neural-network training dynamics.",
    )
    from ndt_store import __version__

    parser.add_argument("--version", action="version", version=f"ndt-store {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
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
    parser = build_parser()
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
