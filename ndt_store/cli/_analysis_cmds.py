"""``ndt-store jumps``, ``periods``, ``moments``, ``compare``, ``report``."""

from __future__ import annotations

import argparse
import json
import sys

from ndt_store.cli._common import (
    add_scheduler,
    add_store,
    heartbeat,
    print_columns,
    print_table,
)


def _experiment(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", "-e", required=True, help="experiment name")


def _alpha(text: str) -> float:
    """``--alpha``: a family-wise level strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def _metric(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metric",
        default="stable_rank",
        help="Phase 1 variable whose jumps are used (default stable_rank; e.g. "
        "participation_ratio, effective_rank_90, nuclear_norm_ratio)",
    )


def _significance(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--alpha",
        type=_alpha,
        default=0.05,
        help="family-wise significance level of the jump test, in (0, 1) (default 0.05)",
    )
    p.add_argument(
        "--include-nonsignificant",
        action="store_true",
        help="also use jumps that are not significant (labelled as such)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "jumps",
        help="list dimensionality jumps (the published table, with significance)",
        description="Jumps of a Phase 1 metric per layer (z-score rule). Columns: the published "
        "ones, plus index_phase/index_phase_category (the published phase formula, record "
        "index / num_steps), index (record index; the published 'step'), train_step "
        "(training step), p_value, noise_floor and significant. 'phase' is "
        "train_step / num_steps unless --phase index.",
    )
    add_store(p)
    add_scheduler(p)
    p.add_argument("--experiment", "-e", action="append", help="only this experiment (repeatable)")
    p.add_argument("--threshold", type=float, default=2.0, help="z-score threshold (default 2)")
    p.add_argument(
        "--alpha", type=_alpha, help="list only jumps significant at this family-wise level"
    )
    _metric(p)
    p.add_argument(
        "--phase",
        choices=("train", "index"),
        default="train",
        help="phase from training steps (default) or the published record-index formula",
    )
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_jumps)

    p = sub.add_parser("periods", help="critical-period summary per experiment")
    add_store(p)
    add_scheduler(p)
    p.add_argument("--experiment", "-e", action="append", help="only this experiment (repeatable)")
    _metric(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_periods)

    p = sub.add_parser(
        "moments",
        help="critical moments around the largest significant jumps",
        description="Before/during/after moments of the largest jumps significant at --alpha "
        "(family-wise, default 0.05), with their p-value and noise floor.",
    )
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
    _significance(p)
    _metric(p)
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

    p = sub.add_parser(
        "report",
        help="write the before/after report of an experiment",
        description="Write comparison_report.md (a one-screen summary first, then details), "
        "analysis_results.json and figures. Moments come from jumps significant at --alpha.",
    )
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
    _significance(p)
    _metric(p)
    p.add_argument("--html", action="store_true", help="also write a self-contained report.html")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.set_defaults(func=_report)


def _open(args: argparse.Namespace):
    import ndt_store

    return ndt_store.open_store(args.store, mode="r")


def _jumps(args: argparse.Namespace) -> int:
    if args.scheduler is not None or args.workers is not None:  # dask: through the catalog
        from ndt_store.moments import store_jumps

        table = store_jumps(
            _open(args), args.experiment, threshold=args.threshold, alpha=args.alpha,
            metric=args.metric, phase=args.phase, via_catalog=True,
        )  # fmt: skip
        print_table(table, args.format)
        return 0
    from ndt_store._jumps import store_jump_columns
    from ndt_store._local_read import LayoutUnsupported, LocalReader

    options = {
        "threshold": args.threshold, "alpha": args.alpha, "metric": args.metric,
        "phase": args.phase,
    }  # fmt: skip
    try:  # a local store of the plain layout: read without importing Zarr
        columns = store_jump_columns(LocalReader.open(args.store), args.experiment, **options)
    except LayoutUnsupported:  # remote, another layout, or damage: Zarr reads and words it
        columns = store_jump_columns(_open(args), args.experiment, **options)
    print_columns(columns, args.format)
    return 0


def _periods(args: argparse.Namespace) -> int:
    from ndt_store.moments import store_periods

    print_table(store_periods(_open(args), args.experiment, metric=args.metric), args.format)
    return 0


def _moments(args: argparse.Namespace) -> int:
    import warnings

    import pandas as pd

    from ndt_store.measures.dynamics import DegenerateMetricWarning
    from ndt_store.moments import identify_moments

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DegenerateMetricWarning)
        moments = identify_moments(
            _open(args), args.experiment, num_jumps=args.num_jumps, offset=args.offset,
            steps=args.steps, alpha=args.alpha, num_periods=args.num_periods,
            metric=args.metric, include_nonsignificant=args.include_nonsignificant,
        )  # fmt: skip
    for w in caught:
        print(f"ndt-store: warning: {w.message}", file=sys.stderr)
    cols = [
        "experiment", "moment_type", "step", "index", "train_step", "layer", "magnitude",
        "noise_floor", "p_value", "significant",
    ]  # fmt: skip
    rows = []
    for m in moments:
        info = m.jump_info or {}
        rows.append(
            {
                "experiment": m.experiment_name,
                "moment_type": m.moment_type,
                "step": m.step,
                "index": m.index,
                "train_step": m.train_step,
                "layer": info.get("layer", ""),
                "magnitude": info.get("magnitude", float("nan")),
                "noise_floor": info.get("noise_floor", float("nan")),
                "p_value": info.get("p_value", float("nan")),
                "significant": info.get("significant", ""),
            }
        )
    if not moments and args.format == "table" and not caught:
        print(
            f"no jump significant at alpha = {args.alpha:g} in {args.experiment} "
            "(--include-nonsignificant lists them, labelled)",
            file=sys.stderr,
        )
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
    import warnings

    from ndt_store.measures.dynamics import DegenerateMetricWarning
    from ndt_store.report import write_report

    with heartbeat("report") as say, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DegenerateMetricWarning)
        written = write_report(
            _open(args), args.experiment, args.out, num_jumps=args.num_jumps, steps=args.steps,
            alpha=args.alpha, include_nonsignificant=args.include_nonsignificant,
            metric=args.metric, figures=not args.no_figures, html_page=args.html, progress=say,
        )  # fmt: skip
    for w in caught:
        print(f"ndt-store: warning: {w.message}", file=sys.stderr)
    for path in written.values():
        print(path)
    return 0
