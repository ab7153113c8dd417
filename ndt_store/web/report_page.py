"""The interactive, self-contained ``report.html`` of one run (``ndt-store report --html``).

One file with plotly.js, the page script and the data inlined: it opens from
disk with no server and no network. It shows the run view for each Phase 1
metric (zoom, hover with p-values, metric picker), the moments view for a few
snapshot pairs (the first and last snapshot, and the pairs around the most
significant jumps; layer and head pickers), the report's tables, and below them
the written report (tables and figures) as :func:`ndt_store.report.write_report`
renders it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from ndt_store import _dims as D
from ndt_store.errors import MissingDependencyError
from ndt_store.store import Store
from ndt_store.web.views import moments_view, plain, run_view

__all__ = ["MAX_PAIRS", "report_page"]

log = logging.getLogger(__name__)

MAX_PAIRS = 6
"""Snapshot pairs embedded in the report's moments view."""
ALL_LAYERS_BUDGET = 200_000
"""Embed every layer's attention maps when one pair's maps hold at most this many values."""


def _pairs(run: Mapping[str, Any], snapshots: list[int]) -> list[tuple[int, int]]:
    pairs: list[tuple[int, int]] = []
    if len(snapshots) >= 2:
        pairs.append((snapshots[0], snapshots[-1]))
    jumps = sorted(run["jumps"], key=lambda j: (not j["significant"], -(j["magnitude"] or 0)))
    for j in jumps:
        pair = (j["before"], j["after"])
        if None not in pair and pair[0] != pair[1] and pair not in pairs:
            pairs.append(pair)
        if len(pairs) >= MAX_PAIRS:
            break
    return pairs


def _moment_table(results: Mapping[str, Any]) -> dict[str, Any]:
    rows = []
    for m in results.get("moments", []):
        get = m.get if isinstance(m, Mapping) else lambda k, m=m: getattr(m, k, None)
        rows.append(
            {
                "type": get("moment_type"),
                "step": get("step"),
                "record index": get("index"),
                "training step": get("train_step"),
            }
        )
    return {
        "title": "Critical moments",
        "columns": ["type", "step", "record index", "training step"],
        "rows": rows,
    }


def _attention_values(store: Store, experiment: str) -> int:
    if not store.snapshot_steps(experiment, D.ATTENTION):
        return 0
    return sum(
        math.prod(v.shape[2:]) for v in store.attention(experiment).values()
    )  # (head, query, key) per layer


def report_data(store: Store, results: Mapping[str, Any]) -> dict[str, Any]:
    """The data the interactive report draws (``{"config", "payload"}``)."""
    experiment = results["experiment"]
    runs = {m: run_view(store, experiment, metric=m) for m in D.PHASE1_METRICS}
    snapshots = store.snapshot_steps(experiment)
    all_layers = _attention_values(store, experiment) * 2 <= ALL_LAYERS_BUDGET
    moments = [
        moments_view(store, experiment, before=b, after=a, all_layers=all_layers)
        for b, a in _pairs(runs[D.STABLE_RANK], snapshots)
    ]
    return {
        "config": {"mode": "report"},
        "payload": {
            "view": "report",
            "experiment": experiment,
            "metadata": plain(
                {k: v for k, v in store.metadata(experiment).items() if k in D.METADATA_FIELDS}
            ),
            "runs": runs,
            "metric": D.STABLE_RANK,
            "moments": moments,
            "tables": [plain(_moment_table(results))],
        },
    }


def report_page(store: Store, results: Mapping[str, Any], written_html: str = "") -> str:
    """The self-contained interactive HTML report of ``results["experiment"]``.

    Parameters
    ----------
    store
        The store the report was computed from.
    results
        What :func:`ndt_store.report.write_report` computed (``experiment``, ``moments``...).
    written_html
        The written report as a (self-contained) HTML page; its body is appended.

    Returns
    -------
    str
        The page. Without the ``[web]`` extra (plotly), ``written_html`` itself
        (the static report) is returned and a warning logged.
    """
    from ndt_store.web.page import render_page

    body = written_html
    if "<body>" in body:
        body = body.split("<body>", 1)[1].rsplit("</body>", 1)[0]
    try:
        return render_page(
            f"ndt-store report · {results['experiment']}",
            report_data(store, results),
            inline=True,
            extra_html=body,
        )
    except MissingDependencyError as exc:
        if not written_html:
            raise
        log.warning("writing the static report.html: %s", exc)
        return written_html
