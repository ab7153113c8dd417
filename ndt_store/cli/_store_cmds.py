"""``ndt-store ingest phase1|tables``, ``ls``, ``show``, ``export``, ``rm``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ndt_store.cli._common import (
    add_store,
    heartbeat,
    is_terminal,
    print_rows,
    removed_if_failed,
)

LS_COLUMNS = ("experiment", "arch", "dataset", "records", "steps", "layers", "snapshots")


def register(sub: argparse._SubParsersAction) -> None:
    ingest = sub.add_parser("ingest", help="import data into a store")
    isub = ingest.add_subparsers(dest="what", metavar="WHAT")
    isub.required = True

    p = isub.add_parser(
        "phase1",
        help="import Phase 1 JSON (a file, a directory or a legacy experiments tree)",
        description="Import the study's per-experiment Phase 1 JSON files, and the published "
        "jump / critical-period tables when found beside them.",
    )
    p.add_argument("source", metavar="SRC", help="JSON file, directory of files, or legacy tree")
    add_store(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace experiments that exist with different content",
    )
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="store NaN/Infinity values as missing instead of refusing the file",
    )
    p.add_argument(
        "--no-tables",
        action="store_true",
        help="do not import all_jumps_detailed.csv / critical_periods_detailed.csv",
    )
    p.set_defaults(func=_ingest_phase1)

    p = isub.add_parser("tables", help="import the published jump / critical-period CSV tables")
    add_store(p)
    p.add_argument("--jumps", metavar="CSV", help="all_jumps_detailed.csv")
    p.add_argument("--periods", metavar="CSV", help="critical_periods_detailed.csv")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_ingest_tables)

    p = isub.add_parser(
        "checkpoints",
        help="import model checkpoints (.pt, .safetensors, Trainer folders) as weight snapshots",
        description="Store PyTorch .pt/.pth checkpoints (opened with weights_only=True only) "
        "and safetensors files as weight snapshots of an experiment, one per training step. "
        "Folders are searched recursively: checkpoint-N/ (Trainer), step_N/ and stepN/, "
        "sharded safetensors; trainer_state.json's log history becomes Phase 1 loss / "
        "grad-norm records and config.json run metadata.",
    )
    p.add_argument("source", metavar="DIR", help="checkpoint file or a folder tree of them")
    add_store(p)
    p.add_argument("--experiment", "-e", required=True, help="experiment (created if absent)")
    p.add_argument("--overwrite", action="store_true", help="replace weights stored at a step")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list the steps, tensors and bytes that would be imported; write nothing",
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        metavar="N",
        help="refuse a checkpoint declaring more tensor bytes than N (default: half the RAM)",
    )
    p.add_argument(
        "--no-history", action="store_true", help="do not import trainer_state.json's loss history"
    )
    p.set_defaults(func=_ingest_checkpoints)

    p = sub.add_parser("ls", help="list experiments (arch, dataset, steps, layers)")
    add_store(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_ls)

    p = sub.add_parser("show", help="show one experiment's Phase 1 record nearest a step")
    add_store(p)
    p.add_argument("--experiment", "-e", required=True)
    p.add_argument("--step", "-s", type=int, required=True, help="training step (nearest record)")
    p.add_argument("--layer", "-l", help="only this layer")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_show)

    p = sub.add_parser("export", help="write an experiment back out as the study's JSON")
    add_store(p)
    p.add_argument("--experiment", "-e", required=True)
    p.add_argument("--out", "-o", help="output file (default: standard output)")
    p.set_defaults(func=_export)

    p = sub.add_parser("rm", help="delete an experiment and everything stored for it")
    add_store(p)
    p.add_argument("--experiment", "-e", required=True)
    p.set_defaults(func=_rm)


def _ingest_phase1(args: argparse.Namespace) -> int:
    import ndt_store

    with removed_if_failed(args.store), heartbeat("ingest", bar=True) as say:
        store = ndt_store.open_store(args.store, mode="a")
        say(f"reading {args.source}")
        result = ndt_store.ingest_phase1(
            store,
            args.source,
            overwrite=args.overwrite,
            allow_nonfinite=args.allow_nonfinite,
            progress=is_terminal(),
        )
    for name, status in result.items():
        print(f"{status:9s} {name}")
    if not args.no_tables:
        from ndt_store.ingest.tables import find_tables, ingest_tables

        found = find_tables(args.source)
        if found:
            from ndt_store.ingest.tables import JUMPS_TABLE, PERIODS_TABLE

            out = ingest_tables(
                store,
                jumps=found.get(JUMPS_TABLE),
                periods=found.get(PERIODS_TABLE),
                overwrite=args.overwrite,
            )
            for name, status in out.items():
                print(f"{status:9s} table {name}")
    return 0


def _ingest_checkpoints(args: argparse.Namespace) -> int:
    import ndt_store
    from ndt_store.ingest.checkpoints import ingest_checkpoints, scan_checkpoints

    if args.dry_run:
        print(scan_checkpoints(args.source, max_bytes=args.max_bytes).describe())
        return 0
    with removed_if_failed(args.store), heartbeat("ingest", bar=True) as say:
        store = ndt_store.open_store(args.store, mode="a")
        say(f"reading checkpoints in {args.source}")
        result = ingest_checkpoints(
            store,
            args.source,
            experiment=args.experiment,
            overwrite=args.overwrite,
            progress=is_terminal(),
            max_bytes=args.max_bytes,
            history=not args.no_history,
        )
    for step, status in result.items():
        print(f"{status:9s} {args.experiment} step {step}")
    return 0


def _ingest_tables(args: argparse.Namespace) -> int:
    import ndt_store
    from ndt_store.errors import InputError
    from ndt_store.ingest.tables import ingest_tables

    if not args.jumps and not args.periods:
        raise InputError("give --jumps CSV and/or --periods CSV")
    with removed_if_failed(args.store):
        store = ndt_store.open_store(args.store, mode="a")
        written = ingest_tables(
            store, jumps=args.jumps, periods=args.periods, overwrite=args.overwrite
        )
    for name, status in written.items():
        print(f"{status:9s} table {name}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    import ndt_store
    from ndt_store._local_read import LayoutUnsupported, LocalReader

    try:  # a local store of the plain layout: read without importing Zarr
        rows = _ls_rows(LocalReader.open(args.store))
    except LayoutUnsupported:  # remote, another layout, or damage: Zarr reads and words it
        rows = _ls_rows(ndt_store.open_store(args.store, mode="r"))
    print_rows(rows, args.format)
    return 0


def _ls_rows(store: Any) -> list[dict[str, Any]]:
    """One ``ls`` row per committed experiment of a ``Store`` or ``LocalReader``."""
    rows = []
    for name in store.experiments():
        info = store.summary(name)
        first, last = info.pop("first_step"), info.pop("last_step")
        info["steps"] = "-" if first is None else f"{first}..{last}"
        rows.append({k: info[k] for k in LS_COLUMNS})
    return rows


def _show(args: argparse.Namespace) -> int:
    import ndt_store
    from ndt_store.errors import NotFoundError

    store = ndt_store.open_store(args.store, mode="r")
    rec = store.record(args.experiment, args.step)
    metrics = rec["layer_metrics"]
    if args.layer is not None:
        if args.layer not in metrics:
            raise NotFoundError(
                f"experiment {args.experiment!r} has no layer {args.layer!r} "
                f"(layers: {', '.join(metrics)})"
            )
        metrics = {args.layer: metrics[args.layer]}
    if args.format == "json":
        rec = {**rec, "layer_metrics": metrics}
        print(json.dumps(rec))
        return 0
    print(
        f"experiment {args.experiment}  step {rec['step']} (asked {args.step})  "
        f"epoch {rec['epoch']}  loss {rec['loss']:.6g}  grad_norm {rec['grad_norm']:.6g}"
    )
    print_rows([{"layer": k, **v} for k, v in metrics.items()], args.format)
    return 0


def _export(args: argparse.Namespace) -> int:
    import ndt_store

    store = ndt_store.open_store(args.store, mode="r")
    obj = ndt_store.export_phase1_json(store, args.experiment)
    text = json.dumps(obj, indent=2)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def _rm(args: argparse.Namespace) -> int:
    import ndt_store

    store = ndt_store.open_store(args.store, mode="r+")
    store.delete_experiment(args.experiment)
    print(f"deleted {args.experiment}")
    return 0
