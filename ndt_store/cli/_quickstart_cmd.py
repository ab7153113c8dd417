"""``ndt-store quickstart``: train, record and analyse three small models offline."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ndt_store.cli._analysis_cmds import _alpha
from ndt_store.cli._common import heartbeat, is_terminal


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="train three small models on the bundled digits, record and analyse them",
        description="On a fresh machine, with no downloads: train a transformer, a CNN and a "
        "narrow MLP on scikit-learn's 8x8 digits, record them into OUT/store.zarr and write "
        "the before/after report (analysis_results.json, comparison_report.md, figures) "
        "into OUT/report/.",
    )
    p.add_argument(
        "--out",
        "-o",
        default="ndt_quickstart",
        metavar="DIR",
        help="output directory (default: ./ndt_quickstart)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=600,
        metavar="N",
        help="training steps per model (default: 600)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 1)")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="train every model again even if OUT/store.zarr holds complete runs "
        "(by default complete runs with the same --steps and --seed are reused, and said so)",
    )
    p.add_argument(
        "--alpha",
        type=_alpha,
        default=0.05,
        help="family-wise significance level of the jumps in the report (default 0.05)",
    )
    p.add_argument("--metric", default="stable_rank", help="Phase 1 metric of the report")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or lines")
    p.set_defaults(func=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from ndt_store.quickstart import run_quickstart

    quiet = args.no_progress
    with heartbeat("quickstart", bar=True) if not quiet else _Silent() as say:
        result = run_quickstart(
            args.out, steps=args.steps, seed=args.seed, threads=args.threads,
            progress=not quiet and is_terminal(), fresh=args.fresh, alpha=args.alpha,
            metric=args.metric, on_stage=None if quiet else _stage(say),
        )  # fmt: skip
    print(result.summary())
    return 0


def _stage(say: Callable[[str], None]) -> Callable[[str], None]:
    """Stage lines: printed on a terminal (beside the bars), heartbeat lines otherwise.

    Whether a stored run is reused (or why it is trained again) is always printed at once.
    """
    if is_terminal():
        return lambda line: print(line, file=sys.stderr, flush=True)

    def stage(line: str) -> None:
        if line.startswith("reusing ") or " again: " in line:
            print(f"quickstart: {line}", file=sys.stderr, flush=True)
        say(line)

    return stage


class _Silent:
    def __enter__(self) -> Callable[[str], None]:
        return lambda _: None

    def __exit__(self, *exc: object) -> None:
        return None
