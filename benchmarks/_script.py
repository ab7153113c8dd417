"""The command line of a benchmark script that only has ``run(quick)``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any


def main(
    run: Callable[[bool], list[dict[str, Any]]], doc: str | None, argv: Sequence[str] | None = None
) -> None:
    """Parse ``--full`` (default: the quick sizes), run, print one row per line.

    ``--help`` prints the script's docstring and runs nothing.
    """
    parser = argparse.ArgumentParser(
        description=(doc or "").strip(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--full", action="store_true", help="the full sizes of benchmarks/run.py (default: quick)"
    )
    args = parser.parse_args(argv)
    for row in run(not args.full):
        print(row)
