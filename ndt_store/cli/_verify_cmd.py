"""``ndt-store verify``: check every committed unit of a store."""

from __future__ import annotations

import argparse

from ndt_store.cli._common import add_store, heartbeat


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check every committed unit of a store (metadata, rows, chunks)",
        description="Read every committed experiment, frame and chunk and report damage. "
        "Exit status 1 when a problem is found.",
    )
    add_store(p)
    p.add_argument("--strict", action="store_true", help="treat absent chunks as errors")
    p.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    import ndt_store

    with heartbeat("verify") as say:
        say(f"reading every committed unit of {args.store}")
        report = ndt_store.verify_store(
            ndt_store.open_store(args.store, mode="r"), strict=args.strict
        )
    print(report.format())
    return 0 if report.ok else 1
