"""Shared argument helpers for the command modules."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
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


def print_rows(rows: list[dict[str, Any]], fmt: str = "table") -> None:
    """Print dict rows like :func:`print_table`, without importing pandas.

    ``None`` prints as an empty CSV cell, ``null`` in JSON and ``-`` in the table;
    table columns are right-aligned under their names, floats with 6 significant digits.
    """
    if fmt == "json":
        for row in rows:
            print(json.dumps(row, default=_jsonable))
        return
    if fmt == "csv":
        import csv

        if rows:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return
    if not rows:
        print("(no rows)")
        return
    names = list(rows[0])
    cells = [[_cell(r[n]) for n in names] for r in rows]
    widths = [max(len(n), *(len(c[i]) for c in cells)) for i, n in enumerate(names)]
    print(" ".join(n.rjust(w) for n, w in zip(names, widths, strict=True)))
    for c in cells:
        print(" ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))


def print_columns(columns: Mapping[str, Any], fmt: str = "table") -> None:
    """Print numpy columns (name → array) like :func:`print_table` prints a DataFrame.

    CSV and JSON lines are written exactly as pandas writes them (NaN: an empty
    CSV cell, ``NaN`` in JSON); the table is :func:`print_rows`' (no pandas).
    """
    names = list(columns)
    values = [_plain_list(columns[n]) for n in names]
    if fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(names)
        blank = [_nan_to_none(v) for v in values]
        writer.writerows(zip(*blank, strict=True))
        return
    rows = [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]
    if fmt != "json":
        rows = [{k: None if _is_nan(v) else v for k, v in r.items()} for r in rows]
    print_rows(rows, fmt)


def _plain_list(values: Any) -> list[Any]:
    """Python scalars of a column (``tolist`` converts numpy scalars in C)."""
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def _nan_to_none(values: list[Any]) -> list[Any]:
    return [None if _is_nan(v) else v for v in values]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


HEARTBEAT_SECONDS = 5.0
"""Seconds between progress lines when standard error is not a terminal."""
HEARTBEAT_DELAY = 2.0
"""Seconds before the first progress line: quick commands (and quick errors) print none."""


def is_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default standard error) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class heartbeat:
    """Progress of a command that can take more than a few seconds.

    Nothing is shown for the first :data:`HEARTBEAT_DELAY` seconds. Then, on a
    terminal one status line is rewritten in place (stage and elapsed time);
    otherwise (output piped or logged) a plain line is printed when a stage
    starts and every :data:`HEARTBEAT_SECONDS`, never thousands of carriage
    returns. The context value is a function taking the current stage.
    ``bar=True``: the command draws its own progress bar on a terminal, so
    the heartbeat is silent there.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> with heartbeat("report", stream=out, interval=60, delay=0) as say:
    ...     say("analysing run")
    >>> out.getvalue().splitlines()[0]
    'report: analysing run'
    """

    def __init__(
        self,
        name: str,
        *,
        stream: Any = None,
        interval: float | None = None,
        bar: bool = False,
        delay: float | None = None,
    ) -> None:
        import threading

        self.delay = HEARTBEAT_DELAY if delay is None else delay
        interval = HEARTBEAT_SECONDS if interval is None else interval
        self.name = name
        self.stream = sys.stderr if stream is None else stream
        self.interval = interval
        self.tty = is_terminal(self.stream)
        self.silent = bar and self.tty
        self.stage = "starting"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = 0.0

    def _line(self, note: str = "") -> None:
        import time

        elapsed = time.monotonic() - self._start
        if self.silent or elapsed < self.delay:
            return
        text = f"{self.name}: {self.stage}{note}"
        with self._lock:
            if self.tty:
                self.stream.write(f"\r\033[K{text} ({elapsed:.0f} s)")
            else:
                self.stream.write(f"{text}" + (f" ({elapsed:.0f} s)" if note else "") + "\n")
            self.stream.flush()

    def _run(self) -> None:
        if self.delay > 0:
            if self._stop.wait(self.delay):
                return
            self._line()
        while not self._stop.wait(1.0 if self.tty else self.interval):
            self._line(" ..." if not self.tty else "")

    def __call__(self, stage: str) -> None:
        self.stage = stage
        self._line()

    def __enter__(self) -> heartbeat:
        import time

        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import time

        self._stop.set()
        self._thread.join()
        if self.tty and not self.silent and time.monotonic() - self._start >= self.delay:
            with self._lock:
                self.stream.write("\r\033[K")
                self.stream.flush()


class removed_if_failed:
    """Remove a local store this command created if the command then fails.

    A command such as ``ingest phase1 README.md --store new.zarr`` must not
    leave an empty ``new.zarr`` behind when the input is refused. Stores that
    existed before, and remote ones, are never touched.
    """

    def __init__(self, location: str) -> None:
        from pathlib import Path

        self.path = None if "://" in str(location) else Path(location)
        self.existed = self.path is None or self.path.exists()

    def __enter__(self) -> removed_if_failed:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None and not self.existed and self.path is not None:
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)
