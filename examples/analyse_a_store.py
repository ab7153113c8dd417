"""Analyse a store: Phase 1 series, jumps, a before/after comparison and the report.

Run:  python examples/analyse_a_store.py STORE EXPERIMENT [OUT_DIR]
e.g. after ``ndt-store quickstart --out qs``:
      python examples/analyse_a_store.py qs/store.zarr mlp_narrow_digits qs/mlp_report
"""

from __future__ import annotations

import sys
import tempfile

import ndt_store
from ndt_store import _dims as D
from ndt_store.compare import compare_representations
from ndt_store.measures.activations import activation_sparsity
from ndt_store.measures.dynamics import jump_table
from ndt_store.report import write_report

store_path, experiment = sys.argv[1], sys.argv[2]
out = sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp()

store = ndt_store.open_store(store_path, mode="r")
ds = store.phase1(experiment)
print(ds[D.STABLE_RANK].to_pandas().tail())

jumps = jump_table(ds[D.STABLE_RANK].expand_dims({D.EXPERIMENT: [experiment]}))
print(f"{len(jumps)} jumps; largest:")
print(jumps.sort_values("magnitude", ascending=False).head()[["layer", "train_step", "z"]])

steps = store.snapshot_steps(experiment, D.ACTIVATIONS)
first, last = steps[0], steps[-1]
sparsity = activation_sparsity(store.activations(experiment, ds[D.LAYER].values[0]))
print("sparsity of the first layer over snapshots:", sparsity.values.round(3).tolist())
change = compare_representations(store, first, last, experiment=experiment)
print("weight change", first, "->", last, ":",
      {k: round(v["relative_change"], 3) for k, v in change["weights"].items()})  # fmt: skip

files = write_report(store, experiment, out)
print("report written:", *sorted(str(p) for p in files.values()), sep="\n  ")
