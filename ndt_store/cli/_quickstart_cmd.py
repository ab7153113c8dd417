"""``ndt-store quickstart``: train, record and analyse three small models offline."""

from __future__ import annotations

import argparse
import sys


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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from ndt_store.quickstart import run_quickstart

    result = run_quickstart(
        args.out, steps=args.steps, seed=args.seed, threads=args.threads,
        progress=not args.no_progress and sys.stderr.isatty(),
    )  # fmt: skip
    print(result.summary())
    return 0
