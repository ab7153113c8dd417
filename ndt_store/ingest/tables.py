"""Ingest the study's published tables (jump table and critical-period table)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ndt_store._dims import (
    JUMPS_TABLE,
    PERIODS_TABLE,
    PUBLISHED_JUMP_COLUMNS,
    PUBLISHED_PERIOD_COLUMNS,
)
from ndt_store.errors import InputError
from ndt_store.store import Store

JUMP_COLUMNS = PUBLISHED_JUMP_COLUMNS
PERIOD_COLUMNS = PUBLISHED_PERIOD_COLUMNS
_NUMERIC = {
    "step",
    "magnitude",
    "speed",
    "phase",
    "cluster",
    "total_critical_steps",
    "total_transitions",
    "num_coordinated_periods",
    "max_coordination",
    "mean_coordination",
    "loss_correlation",
}
LEGACY_JUMPS = (
    Path("mechanistic_interpretability") / "results" / "step1_2" / "all_jumps_detailed.csv"
)
LEGACY_PERIODS = (
    Path("mechanistic_interpretability") / "results" / "step1_3" / "critical_periods_detailed.csv"
)


def read_table_csv(path: str | os.PathLike[str], required: tuple[str, ...]) -> pd.DataFrame:
    """Read a published CSV, checking columns and numeric fields.

    Raises
    ------
    InputError
        Naming the file, the missing column, or the row and column of a bad value.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read CSV: {exc}", source=path) from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"missing columns {missing}", source=path, field=missing[0])
    for col in df.columns:
        if col not in _NUMERIC:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna() | df[col].isna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise InputError(
                "expected a number",
                source=path,
                record=f"row {row + 1}",
                field=col,
                value=df[col].iloc[row],
                has_value=True,
            )
        df[col] = values
    return df


def find_tables(source: str | os.PathLike[str]) -> dict[str, Path]:
    """Locate published tables under a directory (flat, ``phase1/`` or legacy tree)."""
    src = Path(source)
    if src.is_file():
        src = src.parent
    found: dict[str, Path] = {}
    for base in (src, src / "phase1", src.parent):
        for name, legacy, flat in (
            (JUMPS_TABLE, LEGACY_JUMPS, "all_jumps_detailed.csv"),
            (PERIODS_TABLE, LEGACY_PERIODS, "critical_periods_detailed.csv"),
        ):
            for cand in (base / legacy, base / flat):
                if name not in found and cand.is_file():
                    found[name] = cand
    return found


def ingest_tables(
    store: Store,
    *,
    jumps: str | os.PathLike[str] | None = None,
    periods: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> dict[str, str]:
    """Validate and store the published jump and/or critical-period table."""
    frames: dict[str, pd.DataFrame] = {}
    if jumps is not None:
        frames[JUMPS_TABLE] = read_table_csv(jumps, JUMP_COLUMNS)
    if periods is not None:
        frames[PERIODS_TABLE] = read_table_csv(periods, PERIOD_COLUMNS)
    return {name: store.write_table(name, df, overwrite=overwrite) for name, df in frames.items()}
