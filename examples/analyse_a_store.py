"""Analyse a store: Phase 1 series, significant jumps, a before/after comparison, the report.

Run ``python examples/analyse_a_store.py --help``; e.g. after
``ndt-store quickstart --out qs``::

    python examples/analyse_a_store.py qs/store.zarr mlp_narrow_digits --out qs/mlp_report
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import ndt_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="store location (e.g. qs/store.zarr)")
    parser.add_argument("experiment", help="experiment name (see: ndt-store ls --store STORE)")
    parser.add_argument("--out", help="report folder (default: a new temporary folder)")
    parser.add_argument("--metric", default="stable_rank", help="Phase 1 metric (stable_rank)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (0.05)")
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp()

    try:
        store = ndt_store.open_store(args.store, mode="r")
        ds = store.phase1(args.experiment)
    except ndt_store.NdtStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(ds[args.metric].to_pandas().tail())

    series = ds[args.metric].expand_dims(experiment=[args.experiment])
    jumps = ndt_store.jump_table(series, variable=args.metric, alpha=args.alpha)
    print(f"{len(jumps)} jumps significant at alpha = {args.alpha}; largest:")
    top = jumps.sort_values("magnitude", ascending=False).head()
    print(top[["layer", "train_step", "magnitude", "noise_floor", "p_value"]])

    steps = store.snapshot_steps(args.experiment, "activations")
    if len(steps) >= 2:
        first_layer = next(iter(store.activations(args.experiment)))
        sparsity = ndt_store.activation_sparsity(store.activations(args.experiment, first_layer))
        print(f"sparsity of {first_layer} over snapshots:", sparsity.values.round(3).tolist())
        change = ndt_store.compare_representations(
            store, steps[0], steps[-1], experiment=args.experiment
        )
        rel = {k: round(v["relative_change"], 3) for k, v in change.get("weights", {}).items()}
        print("relative weight change", steps[0], "->", steps[-1], ":", rel)

    files = ndt_store.write_report(
        store, args.experiment, out, metric=args.metric, alpha=args.alpha
    )
    print("report written:", *sorted(str(p) for p in files.values()), sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
