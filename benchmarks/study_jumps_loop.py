"""The study's jump table from its JSON files, the study's way (baseline of bench_user_commands).

Plain ``json`` + numpy, one series at a time, exactly the published algorithm
(``/work/shared/data/README.md``): per experiment file ``json.load``; per layer
the ``stable_rank`` series, velocity = first difference, ``z = |v - mean| / std``
(population std), a jump wherever ``z > 2``; ``magnitude``, ``speed`` (window
``s = max(0, i-2)``, ``e = min(len(x), i+3)``), ``direction``, ``phase = i /
num_steps`` and ``phase_category``. The rows are written as CSV to stdout.
The study had no significance test: this loop computes no p-values.

Usage: ``python benchmarks/study_jumps_loop.py JSON_DIR > jumps.csv``
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

COLUMNS = ["step", "magnitude", "speed", "direction", "phase", "layer", "experiment",
           "arch_name", "dataset", "phase_category"]  # fmt: skip


def main(folder: str) -> None:
    out = csv.writer(sys.stdout)
    out.writerow(COLUMNS)
    for path in sorted(Path(folder).glob("*.json")):
        with open(path) as fh:
            run = json.load(fh)
        meas = run["measurements"]
        for layer in meas[0]["layer_metrics"]:
            x = np.array([m["layer_metrics"][layer]["stable_rank"] for m in meas])
            v = np.diff(x)
            z = np.abs(v - v.mean()) / v.std()
            for i in np.flatnonzero(z > 2.0):
                s, e = max(0, i - 2), min(len(x), i + 3)
                phase = i / run["num_steps"]
                category = "early" if phase < 0.33 else "mid" if phase < 0.67 else "late"
                out.writerow(
                    [int(i), abs(v[i]), abs(x[e - 1] - x[s]) / (e - s),
                     "increase" if v[i] > 0 else "decrease", phase, layer, path.stem,
                     run["arch_name"], run["dataset_name"], category]
                )  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):  # no argparse: a timed baseline
        print("usage: python benchmarks/study_jumps_loop.py JSON_DIR > jumps.csv\n\n" + __doc__)
        sys.exit(0 if sys.argv[1:] in (["-h"], ["--help"]) else 2)
    main(sys.argv[1])
