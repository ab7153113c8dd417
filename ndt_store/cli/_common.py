"""Shared argument helpers for the command modules."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def add_store(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Add ``--store`` (path or URL)."""
    parser.add_argument(
        "--store",
        required=required,
        metavar="STORE",
        help="store location: a directory (e.g. runs.zarr) or a URL such as s3://bucket/prefix",
    )


def add_scheduler(parser: argparse.ArgumentParser) -> None:
    """Add ``--scheduler ADDRESS`` and ``--workers N`` (where dask computations run)."""
    group = parser.add_argument_group("where to compute (dask)")
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a running dask scheduler (e.g. tcp://10.0.0.5:8786)",
    )
    group.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="start a local dask cluster of N worker processes for this command",
    )


def print_table(df: pd.DataFrame, fmt: str = "table") -> None:
    """Print a DataFrame as an aligned table, CSV or JSON lines."""
    import pandas as pd

    if fmt == "csv":
        df.to_csv(sys.stdout, index=False)
    elif fmt == "json":
        for rec in df.to_dict(orient="records"):
            print(json.dumps(rec, default=_jsonable))
    else:
        with pd.option_context(
            "display.max_rows", None, "display.max_columns", None, "display.width", 200
        ):
            print(df.to_string(index=False) if len(df) else "(no rows)")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
