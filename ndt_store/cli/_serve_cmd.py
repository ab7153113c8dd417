"""``ndt-store serve``: browse a store in a web browser (needs the ``[web]`` extra)."""

from __future__ import annotations

import argparse

from ndt_store.cli._common import add_store


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="browse a store in a web browser (runs, one run, moments, compare)",
        description="Serve a read-only web app over a store: a table of runs, one run's "
        "Phase 1 curves with their jumps, the moments between snapshots (attention per head, "
        "weight change, CKA) and runs overlaid. Pages refresh while a Recorder writes. "
        "Needs the [web] extra: pip install 'ndt-store[web]'.",
    )
    add_store(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; any other "
        "address lets anyone who reaches it read the store, and prints a warning)",
    )
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument(
        "--poll",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often open pages look for new records (default 2; 0 never)",
    )
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ndt_store.web.server import serve  # plotly is needed only here

    serve(args.store, args.host, args.port, poll_ms=int(args.poll * 1000))
    return 0
