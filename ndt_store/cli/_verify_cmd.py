"""``ndt-store verify``: check every committed unit of a store."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ndt_store.cli._common import add_store, heartbeat

PLAIN_EVERY_S = 5.0
"""Seconds between progress lines when stderr is not a terminal (logs, CI)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check every committed unit of a store (metadata, rows, chunks)",
        description="Read every committed experiment, frame and chunk and report damage. "
        "Chunks are read concurrently; progress goes to stderr (a line every "
        f"{PLAIN_EVERY_S:g} s when it is not a terminal). Exit status 1 when a problem is found.",
    )
    add_store(p)
    p.add_argument(
        "--strict",
        action="store_true",
        help="treat absent table chunks as errors; search every directory for leftovers",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=8,
        metavar="N",
        help="chunks read at once from remote stores and local chunks >= 1 MiB (8)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_verify)


class _Progress:
    """Chunks done / total and MB/s on stderr: redrawn on a terminal, else every few seconds."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.last = time.monotonic()

    def __call__(self, p: Any) -> None:
        done = p.chunks_done == p.chunks_total
        now = time.monotonic()
        if not self.tty and not done and now - self.last < PLAIN_EVERY_S:
            return
        self.last = now
        rate = p.bytes_read / 1e6 / p.seconds if p.seconds > 0 else 0.0
        line = (
            f"verify: {p.chunks_done}/{p.chunks_total} chunks, "
            f"{p.bytes_read / 1e6:.1f} MB read, {rate:.1f} MB/s"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _verify(args: argparse.Namespace) -> int:
    import ndt_store

    with heartbeat("verify") as say:
        say(f"reading every committed unit of {args.store}")
        report = ndt_store.verify_store(
            ndt_store.open_store(args.store, mode="r"),
            strict=args.strict,
            workers=args.threads,
            progress=None if args.no_progress else _Progress(sys.stderr),
        )
    print(report.format())
    return 0 if report.ok else 1
