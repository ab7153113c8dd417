"""``ndt-store jumps``, ``periods``, ``moments``, ``compare``, ``report``."""

from __future__ import annotations

import argparse
import json

from ndt_store.cli._common import add_scheduler, add_store, print_table


def _experiment(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", "-e", required=True, help="experiment name")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "jumps",
        help="list dimensionality jumps (the published table, with significance)",
        description="Jumps of stable rank per layer (z-score rule). Columns: the published "
        "ones, plus index (record index; the published 'step'), train_step (training step), "
        "p_value and significant.",
    )
    add_store(p)
    add_scheduler(p)
    p.add_argument("--experiment", "-e", action="append", help="only this experiment (repeatable)")
    p.add_argument("--threshold", type=float, default=2.0, help="z-score threshold (default 2)")
    p.add_argument(
        "--alpha", type=float, help="list only jumps significant at this family-wise level"
    )
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_jumps)

    p = sub.add_parser("periods", help="critical-period summary per experiment")
    add_store(p)
    add_scheduler(p)
    p.add_argument("--experiment", "-e", action="append", help="only this experiment (repeatable)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_periods)

    p = sub.add_parser("moments", help="critical moments around the largest jumps")
    add_store(p)
    add_scheduler(p)
    _experiment(p)
    p.add_argument("--num-jumps", type=int, default=5, help="largest jumps to use (default 5)")
    p.add_argument("--offset", type=int, default=10, help="records before/after (default 10)")
    p.add_argument("--num-periods", type=int, default=0, help="also critical-period moments")
    p.add_argument(
        "--steps",
        choices=("train", "index"),
        default="train",
        help="training steps (default) or the study's record-index convention",
    )
    p.add_argument("--alpha", type=float, help="use only jumps significant at this level")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_moments)

    p = sub.add_parser("compare", help="compare an experiment at two training steps")
    add_store(p)
    add_scheduler(p)
    _experiment(p)
    p.add_argument("--before", type=int, required=True, metavar="STEP", help="training step")
    p.add_argument("--after", type=int, required=True, metavar="STEP", help="training step")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_compare)

    p = sub.add_parser("report", help="write the before/after report of an experiment")
    add_store(p)
    add_scheduler(p)
    _experiment(p)
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory")
    p.add_argument("--num-jumps", type=int, default=3, help="largest jumps to use (default 3)")
    p.add_argument(
        "--steps",
        choices=("train", "index"),
        default="train",
        help="training steps (default) or the study's record-index convention",
    )
    p.add_argument("--html", action="store_true", help="also write a self-contained report.html")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.set_defaults(func=_report)


def _open(args: argparse.Namespace):
    import ndt_store

    return ndt_store.open_store(args.store, mode="r")


def _jumps(args: argparse.Namespace) -> int:
    from ndt_store.moments import store_jumps

    table = store_jumps(_open(args), args.experiment, threshold=args.threshold, alpha=args.alpha)
    print_table(table, args.format)
    return 0


def _periods(args: argparse.Namespace) -> int:
    from ndt_store.moments import store_periods

    print_table(store_periods(_open(args), args.experiment), args.format)
    return 0


def _moments(args: argparse.Namespace) -> int:
    import pandas as pd

    from ndt_store.moments import identify_moments

    moments = identify_moments(
        _open(args),
        args.experiment,
        num_jumps=args.num_jumps,
        offset=args.offset,
        steps=args.steps,
        alpha=args.alpha,
        num_periods=args.num_periods,
    )
    rows = [
        {
            "experiment": m.experiment_name,
            "moment_type": m.moment_type,
            "step": m.step,
            "index": m.index,
            "train_step": m.train_step,
            "layer": (m.jump_info or {}).get("layer", ""),
            "magnitude": (m.jump_info or {}).get("magnitude", float("nan")),
        }
        for m in moments
    ]
    cols = ["experiment", "moment_type", "step", "index", "train_step", "layer", "magnitude"]
    print_table(pd.DataFrame(rows, columns=cols), args.format)
    return 0


def _compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from ndt_store.compare import compare_representations
    from ndt_store.report import jsonable

    res = compare_representations(_open(args), args.before, args.after, experiment=args.experiment)
    if args.format == "json":
        print(json.dumps(jsonable(res), indent=2))
        return 0
    print(
        f"{res['experiment']}: step {res['step_before']} (index {res['index_before']}) -> "
        f"step {res['step_after']} (index {res['index_after']})"
    )
    print(f"loss {res['loss_before']} -> {res['loss_after']} (change {res['loss_change']})")
    rows = [
        {"metric": metric, "layer": layer, **values}
        for metric, layers in res["metric_changes"].items()
        for layer, values in layers.items()
    ]
    print_table(pd.DataFrame(rows), "table")
    for kind in ("weights", "activations", "attention"):
        if kind in res:
            print(f"\n{kind}:")
            print(json.dumps(jsonable(res[kind]), indent=2))
    return 0


def _report(args: argparse.Namespace) -> int:
    from ndt_store.report import write_report

    written = write_report(
        _open(args),
        args.experiment,
        args.out,
        num_jumps=args.num_jumps,
        steps=args.steps,
        figures=not args.no_figures,
        html_page=args.html,
    )
    for path in written.values():
        print(path)
    return 0
