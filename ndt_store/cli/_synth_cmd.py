"""``ndt-store synth``: write a synthetic store of any size (for tests and benchmarks)."""

from __future__ import annotations

import argparse
import time

from ndt_store.cli._common import add_store, heartbeat, is_terminal


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic store (Phase 1 series, attention, activations, weights)",
        description="Generate realistic synthetic training dynamics: smooth Phase 1 curves with "
        "planted jumps, softmax attention, activations with a decaying spectrum and drifting "
        "weights. The planted jumps are recorded in each experiment's metadata ('synth').",
    )
    add_store(p)
    p.add_argument("--experiments", type=int, default=3, metavar="E", help="experiments (3)")
    p.add_argument(
        "--steps", type=int, default=20, metavar="S", help="snapshot steps per experiment (20)"
    )
    p.add_argument("--layers", type=int, default=3, metavar="L", help="tensor layers (3)")
    p.add_argument("--heads", type=int, default=4, metavar="H", help="attention heads (4)")
    p.add_argument("--seq", type=int, default=16, metavar="Q", help="sequence length (16)")
    p.add_argument("--samples", type=int, default=8, metavar="N", help="probe-batch size (8)")
    p.add_argument(
        "--features",
        type=int,
        default=32,
        metavar="F",
        help="activation width; weights are F x F (32)",
    )
    p.add_argument(
        "--records", type=int, default=400, metavar="R", help="Phase 1 records per experiment (400)"
    )
    p.add_argument(
        "--kinds",
        default="phase1,attention,activations,weights",
        help="comma-separated subset of phase1,attention,activations,weights",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--causal", action="store_true", help="causal (lower-triangular) attention")
    p.add_argument(
        "--threads", type=int, default=4, metavar="N", help="experiments written at once (4)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from ndt_store.synth import synth_nbytes, synth_store

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    sizes = dict(
        experiments=args.experiments,
        steps=args.steps,
        layers=args.layers,
        heads=args.heads,
        seq=args.seq,
        samples=args.samples,
        features=args.features,
        records=args.records,
    )
    start = time.perf_counter()
    bar = not args.no_progress and is_terminal()  # a bar on a terminal, lines in logs
    with heartbeat("synth", bar=True) if not args.no_progress else _quiet() as say:
        say(f"writing {args.experiments} experiments")
        store = synth_store(
            args.store,
            **sizes,
            kinds=kinds,
            seed=args.seed,
            causal=args.causal,
            progress=bar,
            workers=args.threads,
        )
    elapsed = time.perf_counter() - start
    nbytes = synth_nbytes(**sizes, kinds=kinds)
    print(
        f"wrote {args.experiments} experiments ({nbytes / 1e6:.1f} MB of tensors) to "
        f"{store.location} in {elapsed:.1f} s"
    )
    return 0


class _quiet:
    """No progress at all (``--no-progress``)."""

    def __enter__(self) -> _quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, stage: str) -> None:
        return None
