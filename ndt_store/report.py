"""Before/after report of one run: ``analysis_results.json``, ``comparison_report.md``, figures.

:func:`build_report` finds the run's critical moments around jumps that are
significant at a family-wise level (:func:`ndt_store.moments.identify_moments`,
``alpha=0.05`` by default), groups the jumps of one record into one moment,
compares each moment's before→during and during→after records
(:func:`ndt_store.compare.compare_representations`, each pair once) and
consecutive weight snapshots, and collects a summary. :func:`report_sections`
turns those data into titled markdown sections, the summary first;
:func:`write_report` writes:

* ``analysis_results.json`` — every measurement, plain JSON types (NaN as null);
* ``comparison_report.md`` — a one-screen summary (the run, the metric, the
  significant moments with step, layers and p-value, the largest changes of
  weights, activations and attention, each linking to its detail section),
  then the details, each moment once;
* figures, when their data exist: ``<run>_<metric>_heatmap.png`` (jumps marked,
  significant ones apart), ``<run>_loss_moments.png``, ``<run>_weight_change.png``
  (parameter × interval heatmap), ``<run>_attention_pattern.png``,
  ``<run>_entropy_evolution.png``, ``<run>_filter_viz.png``;
* optionally ``report.html``, self-contained (images inlined as base64).

A metric that does not move (its range within its noise floor) is reported as
degenerate, with the metrics that do vary, and never analysed. Everything is
first written to a temporary directory beside ``out_dir`` and then renamed into
place file by file (figures first, the JSON last), so a crash never leaves a
half-written file under its final name.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import itertools
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ndt_store._dims import (
    ACTIVATIONS,
    ATTENTION,
    HEAD,
    LOSS,
    PARAMETER,
    STABLE_RANK,
    STEP,
    WEIGHTS,
)
from ndt_store._json import jsonable
from ndt_store.compare import compare_representations, load_snapshots, tensor_changes_many
from ndt_store.errors import InputError
from ndt_store.measures.attention import attention_specialization
from ndt_store.measures.dynamics import (
    DegenerateMetricWarning,
    check_alpha,
    metric_variation,
    varying_metrics,
    warn_if_degenerate,
)
from ndt_store.measures.significance import DEFAULT_ALPHA, DEFAULT_SURROGATES
from ndt_store.moments import (
    CriticalMoment,
    StepMode,
    flag_significance,
    identify_moments,
    store_jumps,
)
from ndt_store.plot import (
    attention_pattern,
    entropy_evolution,
    filter_grid,
    loss_curve,
    metric_heatmap,
    weight_change_heatmap,
)
from ndt_store.store import Store

__all__ = [
    "REPORT_FILES",
    "ReportSection",
    "build_report",
    "jsonable",
    "report_markdown",
    "report_sections",
    "write_report",
]

REPORT_FILES: tuple[str, ...] = ("analysis_results.json", "comparison_report.md")
"""Files every report contains (``report.html`` too when asked)."""
TOP_LAYERS = 5
"""Rows listed per table of a comparison (largest changes first)."""
TOP_SUMMARY = 3
"""Rows listed per table of the summary."""


# ------------------------------------------------------------------- analysis
@dataclasses.dataclass
class ReportSection:
    """One titled part of the report: ``anchor`` is its link target (``#anchor``)."""

    title: str
    anchor: str
    lines: list[str]
    level: int = 2


def _events(moments: Sequence[CriticalMoment], num: int) -> list[dict[str, Any]]:
    """Jump moments grouped by their "during" record: one event per record, ``num`` at most."""
    jumps = [m for m in moments if m.moment_type != "critical_period"]
    events: dict[int, dict[str, Any]] = {}
    for k in range(0, len(jumps) - 2, 3):
        before, during, after = jumps[k : k + 3]
        key = int(during.index if during.index is not None else during.step)
        if key not in events:
            if len(events) >= num:
                continue
            events[key] = {
                "id": f"moment-{len(events) + 1}",
                "index": during.index,
                "step": during.step,
                "train_step": during.train_step,
                "moments": [before, during, after],
                "jumps": [],
            }
        events[key]["jumps"].append(jsonable(during.jump_info or {}))
    out = list(events.values())
    for e in out:
        pvals = [j["p_value"] for j in e["jumps"] if j.get("p_value") is not None]
        e["p_value"] = min(pvals) if pvals else None
        e["significant"] = any(bool(j.get("significant")) for j in e["jumps"])
        e["layers"] = [str(j.get("layer", "?")) for j in e["jumps"]]
    return out


def _pair_id(b: int, a: int) -> str:
    return f"records-{b}-{a}"


def _summary_changes(comparisons: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Largest weight / activation / attention changes over every compared pair."""
    weights, cka, entropy = [], [], []
    for c in comparisons:
        where = {"pair": c["title"], "link": c["id"]}
        for name, v in c.get(WEIGHTS, {}).items():
            weights.append({"parameter": name, **where, **v})
        for name, v in c.get(ACTIVATIONS, {}).items():
            if v.get("linear_cka") is not None:
                cka.append({"layer": name, "linear_cka": v["linear_cka"], **where})
        for name, v in c.get(ATTENTION, {}).items():
            for head, h in v.get("head_entropy", {}).items():
                if h.get("change") is not None:
                    entropy.append({"layer": name, "head": head, **h, **where})

    def top(
        rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], float], *by: str
    ) -> list[dict[str, Any]]:
        """The ``TOP_SUMMARY`` best rows, one per ``by`` label (its best pair)."""
        out, seen = [], set()
        for row in sorted(rows, key=key):
            label = tuple(row[b] for b in by)
            if label not in seen:
                seen.add(label)
                out.append(row)
        return out[:TOP_SUMMARY]

    return {
        "weights_absolute": top(weights, lambda r: -(r.get("l2_norm") or 0.0), "parameter"),
        "weights_relative": top(weights, lambda r: -(r.get("relative_change") or 0.0), "parameter"),
        "activation_cka": top(cka, lambda r: r["linear_cka"], "layer"),
        "attention_entropy": top(entropy, lambda r: -abs(r["change"]), "layer", "head"),
    }


def build_report(
    store: Store,
    experiment: str,
    *,
    num_jumps: int = 3,
    offset: int = 10,
    steps: StepMode = "train",
    alpha: float | None = DEFAULT_ALPHA,
    include_nonsignificant: bool = False,
    metric: str = STABLE_RANK,
    num_periods: int = 0,
) -> dict[str, Any]:
    """Everything the report shows, as data (see :func:`report_sections` for the text).

    Parameters
    ----------
    store, experiment
        The run.
    num_jumps
        Moments (distinct jump records) to compare, significant ones first.
    offset, steps, num_periods
        Moment selection, see :func:`ndt_store.moments.identify_moments`.
    alpha
        Family-wise level of the jump test (default 0.05); ``None`` uses every
        z-score jump untested (the study's selection).
    include_nonsignificant
        Also compare jumps that are not significant (labelled as such).
    metric
        The Phase 1 variable whose jumps make the moments.

    Returns
    -------
    dict
        ``experiment``, ``metadata``, ``metric``, ``alpha``, ``degenerate``
        (the warning, or ``None``), ``varying_metrics``, ``jump_counts``,
        ``moments``, ``events`` (one per jump record: its jumps, p-value and
        comparisons), ``comparisons`` (each before/after pair once, with
        ``steps_used``), ``snapshot_comparisons``, ``summary`` and
        ``notice`` (the first-lines message when nothing significant is shown).
    """
    return _build_report(
        store, experiment, num_jumps=num_jumps, offset=offset, steps=steps, alpha=alpha,
        include_nonsignificant=include_nonsignificant, metric=metric, num_periods=num_periods,
    )[0]  # fmt: skip


def _build_report(
    store: Store,
    experiment: str,
    *,
    num_jumps: int,
    offset: int,
    steps: StepMode,
    alpha: float | None,
    include_nonsignificant: bool,
    metric: str,
    num_periods: int,
) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """:func:`build_report`, and the tested jump table it used (for the figures)."""
    if alpha is not None:
        alpha = check_alpha(alpha)
    meta = store.metadata(experiment)
    ds = store.phase1(experiment)
    has_phase1 = bool(ds.sizes.get(STEP, 0))
    if has_phase1 and metric not in ds:
        warn_if_degenerate(ds, metric)  # InputError naming the stored metrics
    results: dict[str, Any] = {
        "experiment": experiment,
        "metadata": meta,
        "metric": metric,
        "alpha": alpha,
        "include_nonsignificant": include_nonsignificant,
        "significance_test": (
            None
            if alpha is None
            else f"family-wise p-value from {DEFAULT_SURROGATES} phase-randomized surrogates "
            "per layer; |change| above the layer's noise floor"
        ),
        "steps": steps,
        "offset": offset,
        "degenerate": None,
        "varying_metrics": varying_metrics(ds) if has_phase1 else [],
        "jump_counts": {},
        "notice": None,
    }
    table = None
    if has_phase1:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DegenerateMetricWarning)
            degenerate, message = warn_if_degenerate(ds, metric, where=experiment)
        if degenerate:
            results["degenerate"] = message
            warnings.warn(message or "", DegenerateMetricWarning, stacklevel=2)
        del caught
        if alpha is not None and not degenerate:
            table = flag_significance(store_jumps(store, [experiment], metric=metric), alpha)
            var = metric_variation(ds[metric])
            flat = {
                str(k) for k, v in zip(var["layer"].values, var.degenerate.values, strict=True) if v
            }
            table["degenerate"] = table["layer"].astype(str).isin(flat).to_numpy()
            table["significant"] = table["significant"] & ~table["degenerate"]
            sig = table[table["significant"]]
            results["jump_counts"] = {
                "z_score_jumps": len(table),
                "significant": len(sig),
                "significant_records": int(sig["index"].nunique()),
                "smallest_p_value": float(table["p_value"].min()) if len(table) else None,
                "degenerate_layers": sorted(flat),
            }
    moments: list[CriticalMoment] = []
    if has_phase1 and results["degenerate"] is None:
        moments = identify_moments(
            store, experiment, num_jumps=max(num_jumps, 0) * 10, offset=offset, steps=steps,
            alpha=alpha, num_periods=num_periods, metric=metric, jumps=table,
            include_nonsignificant=include_nonsignificant,
        )  # fmt: skip
    events = _events(moments, num_jumps)
    kept = [m for e in events for m in e["moments"]]
    kept += [m for m in moments if m.moment_type == "critical_period"]
    seen: set[tuple[str, Any]] = set()
    results["moments"] = []
    for m in kept:
        if (m.moment_type, m.index) not in seen:
            seen.add((m.moment_type, m.index))
            results["moments"].append(m)
    comparisons: dict[tuple[int, int], dict[str, Any]] = {}
    snaps = store.snapshot_steps(experiment, WEIGHTS)
    # every pair below is compared from one in-memory read of the tensors (if small),
    # all pairs' tensor changes in one vectorized pass
    loaded = load_snapshots(store, experiment) if store.snapshot_steps(experiment) else None
    many: dict[tuple[int, int], dict[str, Any]] = {}
    if loaded is not None:
        pairs = [(int(x.step), int(y.step)) for e in events for x, y in _event_pairs(e)]
        pairs += [(int(a), int(b)) for a, b in itertools.pairwise(snaps)]
        many = tensor_changes_many(store, experiment, pairs, loaded)
    for e in events:
        e["comparisons"] = []
        for x, y in _event_pairs(e):
            key = (int(x.step), int(y.step))
            if key not in comparisons:
                c = compare_representations(store, x, y, loaded=loaded, precomputed=many.get(key))
                c["id"] = _pair_id(*key)
                c["pair"] = f"{x.moment_type}_to_{y.moment_type}"
                c["title"] = f"step {key[0]} → {key[1]}"
                c["jump"] = jsonable(x.jump_info)
                comparisons[key] = c
            e["comparisons"].append(comparisons[key]["id"])
        e["moments"] = [m.moment_type for m in e["moments"]]
    results["events"] = events
    results["comparisons"] = list(comparisons.values())
    results["snapshot_comparisons"] = []
    for k, (a, b) in enumerate(itertools.pairwise(snaps)):
        c = compare_representations(
            store, a, b, experiment=experiment, phase1="exact", loaded=loaded,
            precomputed=many.get((int(a), int(b))),
        )  # fmt: skip
        c["id"] = f"interval-{k + 1}"
        c["title"] = f"snapshots {a} → {b}"
        results["snapshot_comparisons"].append(c)
    results["summary"] = _summary_changes(results["comparisons"] + results["snapshot_comparisons"])
    results["notice"] = _notice(results)
    results["figures"] = {}
    return results, table


def _notice(results: dict[str, Any]) -> str | None:
    """The first-lines message when no significant moment is shown, saying why."""
    if results["degenerate"]:
        return f"No moments: {results['degenerate']}."
    if results["alpha"] is None:
        return (
            "Jumps are the study's z-score selection, untested: none is known to be "
            "significant (pass alpha= / --alpha to test them)."
        )
    counts = results["jump_counts"]
    if not results["events"] and not counts:
        return "No Phase 1 records: no jumps to test."
    if counts and counts.get("significant", 0) == 0:
        n = counts.get("z_score_jumps", 0)
        if n == 0:
            return f"No significant jump: {results['metric']} has no z-score jump in this run."
        p = counts.get("smallest_p_value")
        jumps = (
            f"the {n} z-score jumps of {results['metric']} all have"
            if n > 1
            else (f"the one z-score jump of {results['metric']} has")
        )
        return (
            f"No significant jump: {jumps} a family-wise p-value above "
            f"α = {results['alpha']:g} (smallest {_fmt(p)}) or a change within the layer's "
            "noise floor, so none is shown as critical"
            + (" (non-significant ones are listed, labelled)." if results["events"] else ".")
        )
    return None


# -------------------------------------------------------------------- figures
def _tested_out(m: CriticalMoment) -> bool:
    """A moment of a jump that was tested and is not significant."""
    info = m.jump_info or {}
    return info.get("p_value") is not None and not info.get("significant", True)


def _train_moments(moments: Sequence[CriticalMoment]) -> list[dict[str, Any]]:
    return [
        {
            STEP: m.train_step,
            "moment_type": m.moment_type + (" (not significant)" if _tested_out(m) else ""),
        }
        for m in moments
        if m.train_step is not None
    ]


def _event_pairs(event: Mapping[str, Any]) -> list[tuple[CriticalMoment, CriticalMoment]]:
    """An event's compared pairs: before → during, during → after."""
    before, during, after = event["moments"]
    return [(before, during), (during, after)]


def _figures(
    store: Store, results: dict[str, Any], tmp: Path, jumps: pd.DataFrame | None = None
) -> dict[str, str]:
    """Write the figures whose data exist; ``{title: file name}``.

    ``jumps`` is the tested jump table the results were built from (computed
    here when not given).
    """
    experiment, metric = results["experiment"], results["metric"]
    moments = results["moments"]
    out: dict[str, str] = {}

    def save(title: str, suffix: str, draw: Any) -> None:
        name = f"{experiment}_{suffix}.png"
        draw(tmp / name)
        out[title] = name

    ds = store.phase1(experiment)
    if ds.sizes.get(STEP, 0):
        if results["degenerate"] is None:
            if jumps is not None and results["alpha"] is not None:
                jumps = jumps.drop(columns="degenerate", errors="ignore")
            else:
                jumps = store_jumps(store, [experiment], metric=metric)
                if results["alpha"] is not None:
                    jumps = flag_significance(jumps, results["alpha"])
                    flat = results["jump_counts"].get("degenerate_layers", [])
                    jumps["significant"] &= ~jumps["layer"].astype(str).isin(flat)
                else:
                    jumps = jumps.drop(columns="significant")
            save(
                f"{metric} by layer and step (jumps marked)",
                f"{metric}_heatmap",
                lambda p: metric_heatmap(ds, metric, jumps=jumps, path=p),
            )
        save(
            "Training loss with critical moments",
            "loss_moments",
            lambda p: loss_curve(ds[LOSS], moments=_train_moments(moments), path=p),
        )
    snapshot_pairs = results["snapshot_comparisons"]
    if snapshot_pairs and any(WEIGHTS in c for c in snapshot_pairs):
        pairs = [c for c in snapshot_pairs if WEIGHTS in c]
        names = list(dict.fromkeys(n for c in pairs for n in c[WEIGHTS]))
        values = np.array(
            [[(c[WEIGHTS].get(n) or {}).get("relative_change") for c in pairs] for n in names],
            dtype=np.float64,
        )
        rel = xr.DataArray(
            values,
            dims=(PARAMETER, "interval"),
            coords={
                PARAMETER: names,
                "interval": [f"{c['requested_before']}→{c['requested_after']}" for c in pairs],
            },
            name="relative weight change",
        )
        save(
            "Relative weight change per parameter and snapshot interval",
            "weight_change",
            lambda p: weight_change_heatmap(rel, path=p),
        )
        weights = store.weights(experiment)
        conv = next((w for w in weights.values() if w.ndim == 5), None)
        if conv is not None:
            save(
                "Convolution filters (last snapshot)",
                "filter_viz",
                lambda p: filter_grid(conv.isel({STEP: -1}).compute(), path=p),
            )
    if store.snapshot_steps(experiment, ATTENTION):
        layer, attn = next(iter(store.attention(experiment).items()))
        save(
            f"Attention pattern of {layer} (last snapshot, head 0)",
            "attention_pattern",
            lambda p: attention_pattern(attn.isel({STEP: -1}).compute(), head=0, path=p),
        )
        head_entropy = attention_specialization(attn)["head_entropy"].transpose(STEP, HEAD)
        jump_steps = [
            m.train_step
            for m in moments
            if m.moment_type == "during_jump" and m.train_step is not None and not _tested_out(m)
        ]
        save(
            f"Attention entropy of {layer} per head",
            "entropy_evolution",
            lambda p: entropy_evolution(head_entropy.compute(), jump_steps=jump_steps, path=p),
        )
    return out


# ------------------------------------------------------------------- markdown
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _p(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _significance_word(jump: Mapping[str, Any]) -> str:
    if jump.get("p_value") is None:
        return "not tested"
    if jump.get("degenerate"):
        return "no (metric flat in this layer)"
    return "**yes**" if jump.get("significant") else "no (not significant)"


def _run_line(results: dict[str, Any]) -> str:
    meta = results["metadata"]
    described = ", ".join(
        f"{k} {meta[k]}" for k in ("arch_name", "dataset", "num_steps") if k in meta
    )
    alpha = results["alpha"]
    test = (
        f"jumps significant at family-wise α = {alpha:g}"
        + (
            " (non-significant ones included, labelled)"
            if results["include_nonsignificant"]
            else ""
        )
        if alpha is not None
        else "jumps: every z-score jump, untested (the study's selection)"
    )
    return f"Run `{results['experiment']}` ({described}) · metric `{results['metric']}` · {test}."


def _summary_section(results: dict[str, Any]) -> ReportSection:
    lines: list[str] = []
    if results["events"]:
        lines += [
            "| moment | step (record) | layers | p-value | significant | details |",
            "|---|---|---|---|---|---|",
        ]
        for e in results["events"]:
            layers = ", ".join(f"`{name}`" for name in e["layers"][:4])
            layers += f" +{len(e['layers']) - 4}" if len(e["layers"]) > 4 else ""
            sig = "yes" if e["significant"] else ("n/a" if e["p_value"] is None else "**no**")
            lines.append(
                f"| {e['id'].replace('moment-', '#')} | {e['step']} ({e['index']}) | {layers} "
                f"| {_p(e['p_value'])} | {sig} | [details](#{e['id']}) |"
            )
        lines.append("")
    summary = results["summary"]
    w_abs, w_rel = summary["weights_absolute"], summary["weights_relative"]
    if w_abs:
        lines += [
            "Largest weight changes (‖Δ‖, ‖Δ‖/‖W₀‖, initial norm ‖W₀‖):",
            "",
            "| rank by | parameter | ‖Δ‖ | ‖Δ‖/‖W₀‖ | ‖W₀‖ | between | details |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, rows in (("absolute", w_abs), ("relative", w_rel)):
            lines += [
                f"| {label} | `{r['parameter']}` | {_fmt(r.get('l2_norm'))} "
                f"| {_fmt(r.get('relative_change'))} | {_fmt(r.get('norm_before'))} "
                f"| {r['pair']} | [→](#{r['link']}) |"
                for r in rows
            ]
        lines.append("")
    if summary["activation_cka"]:
        items = "; ".join(
            f"`{r['layer']}` {_fmt(r['linear_cka'], 3)} ({r['pair']}, [→](#{r['link']}))"
            for r in summary["activation_cka"]
        )
        lines += [f"Lowest activation CKA (most changed): {items}.", ""]
    if summary["attention_entropy"]:
        items = "; ".join(
            f"`{r['layer']}` head {r['head']} {_fmt(r['before'], 3)} → {_fmt(r['after'], 3)} "
            f"({r['pair']}, [→](#{r['link']}))"
            for r in summary["attention_entropy"]
        )
        lines += [f"Largest attention-entropy changes per head (nats): {items}.", ""]
    if not lines:
        lines = ["Nothing to compare: no moments and no stored snapshots.", ""]
    return ReportSection("Summary", "summary", lines)


_QUANTITY = {
    "phase1": "Phase 1 records",
    WEIGHTS: "weight snapshots",
    ACTIVATIONS: "activation snapshots",
    ATTENTION: "attention snapshots",
}


def _steps_used(c: dict[str, Any]) -> list[str]:
    parts = []
    for key, u in c.get("steps_used", {}).items():
        kind = _QUANTITY.get(key, key)
        if u["before"] is None:
            near = u.get("nearest")
            where = f" (nearest: {near[0]} and {near[1]})" if near else ""
            parts.append(f"{kind}: none at these steps{where}, not compared")
        else:
            dist = (
                "exactly as asked"
                if not (u["distance_before"] or u["distance_after"])
                else f"{u['distance_before']} and {u['distance_after']} steps from the asked ones"
            )
            parts.append(f"{kind}: steps {u['before']} → {u['after']} ({dist})")
    return [f"- Compared at: {'; '.join(parts)}."] if parts else []


def _comparison_lines(c: dict[str, Any], metric: str) -> list[str]:
    lines = [
        f"- Asked: step {c['requested_before']} → {c['requested_after']}.",
        *_steps_used(c),
    ]
    if c.get("loss_before") is not None:
        lines.append(
            f"- Loss: {_fmt(c['loss_before'])} → {_fmt(c['loss_after'])} "
            f"(change {_fmt(c['loss_change'])})"
        )
    lines.append("")
    changes = c.get("metric_changes", {}).get(metric, {})
    if changes:
        ranked = sorted(changes.items(), key=lambda kv: -abs(kv[1]["change"] or 0.0))
        lines += [
            f"`{metric}`, layers that changed most (of {len(changes)}):",
            "",
            "| layer | before | after | change | relative change |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {layer} | {_fmt(v['before'])} | {_fmt(v['after'])} | {_fmt(v['change'])} "
            f"| {_fmt(v['relative_change'])} |"
            for layer, v in ranked[:TOP_LAYERS]
        ]
        lines.append("")
    if WEIGHTS in c:
        top = sorted(c[WEIGHTS].items(), key=lambda kv: -(kv[1]["l2_norm"] or 0.0))
        lines += [
            f"Weights, largest ‖Δ‖ (of {len(top)} parameters):",
            "",
            "| parameter | ‖Δ‖ | ‖Δ‖/‖W₀‖ | ‖W₀‖ | cosine similarity |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {_fmt(v['l2_norm'])} | {_fmt(v['relative_change'])} "
            f"| {_fmt(v.get('norm_before'))} | {_fmt(v['cosine_similarity'])} |"
            for name, v in top[:TOP_LAYERS]
        ]
        lines.append("")
    if ACTIVATIONS in c:
        lines += ["| layer | sparsity change | linear CKA |", "|---|---|---|"]
        lines += [
            f"| {name} | {_fmt(v['sparsity']['change'])} | {_fmt(v['linear_cka'])} |"
            for name, v in c[ACTIVATIONS].items()
        ]
        lines.append("")
    if ATTENTION in c:
        lines += [
            "| layer | head | entropy before | entropy after | change |",
            "|---|---|---|---|---|",
        ]
        for name, v in c[ATTENTION].items():
            lines += [
                f"| {name} | {head} | {_fmt(h['before'])} | {_fmt(h['after'])} "
                f"| {_fmt(h['change'])} |"
                for head, h in v["head_entropy"].items()
            ]
        lines.append("")
    return lines


def _event_section(e: dict[str, Any], by_id: dict[str, Any], done: set[str], metric: str) -> list:
    title = f"Moment {e['id'].split('-')[1]}: step {e['step']} (record {e['index']})"
    lines = [
        f"`{metric}` jumps at this record:",
        "",
        "| layer | magnitude | noise floor | p-value | significant | direction | phase |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {j.get('layer', '?')} | {_fmt(j.get('magnitude'))} | {_fmt(j.get('noise_floor'), 3)} "
        f"| {_p(j.get('p_value'))} | {_significance_word(j)} | {j.get('direction', '')} "
        f"| {j.get('phase_category', '')} |"
        for j in e["jumps"]
    ]
    lines.append("")
    section = [ReportSection(title, e["id"], lines, level=3)]
    names = ("before → during", "during → after")
    for name, cid in zip(names, e["comparisons"], strict=True):
        c = by_id[cid]
        if cid in done:
            section[0].lines += [f"{name}: the same records as [{c['title']}](#{cid}) above.", ""]
            continue
        done.add(cid)
        section.append(
            ReportSection(f"{name}: {c['title']}", cid, _comparison_lines(c, metric), level=4)
        )
    return section


def report_sections(results: dict[str, Any]) -> list[ReportSection]:
    """The report as titled sections, the summary first (``results`` from :func:`build_report`).

    The first section's lines open with the run, the metric, the significance
    rule and, when nothing significant is shown, why.
    """
    head = [_run_line(results), ""]
    if results["degenerate"]:
        head += [f"> **Warning:** {results['degenerate']}.", ""]
    elif results["notice"]:
        head += [f"> **{results['notice']}**", ""]
    sections = [ReportSection(f"Before/after report: {results['experiment']}", "top", head, 1)]
    sections.append(_summary_section(results))
    metric = results["metric"]
    by_id = {c["id"]: c for c in results["comparisons"]}
    done: set[str] = set()
    if results["events"]:
        sections.append(ReportSection("Moments", "moments", []))
        for e in results["events"]:
            sections += _event_section(e, by_id, done, metric)
    periods = [m for m in results["moments"] if m.moment_type == "critical_period"]
    if periods:
        lines = ["| peak step | record | coordination | loss correlation |", "|---|---|---|---|"]
        lines += [
            f"| {m.step} | {m.index} | {_fmt((m.jump_info or {}).get('peak_coordination'))} "
            f"| {_fmt((m.jump_info or {}).get('loss_correlation'))} |"
            for m in periods
        ]
        sections.append(ReportSection("Critical periods", "critical-periods", [*lines, ""]))
    if results["snapshot_comparisons"]:
        sections.append(ReportSection("Snapshot intervals", "snapshot-intervals", []))
        for c in results["snapshot_comparisons"]:
            title = f"Interval {c['id'].split('-')[1]}: {c['title']}"
            sections.append(ReportSection(title, c["id"], _comparison_lines(c, metric), level=3))
    if results["figures"]:
        lines = []
        for title, name in results["figures"].items():
            lines += [f"**{title}**", "", f"![{title}]({name})", ""]
        sections.append(ReportSection("Figures", "figures", lines))
    return sections


def report_markdown(results: dict[str, Any]) -> str:
    """The markdown report: :func:`report_sections` with link anchors.

    The summary is wrapped in ``<!-- summary -->`` / ``<!-- /summary -->``
    comments so that a report of several runs can put every summary first.
    """
    lines: list[str] = []
    for k, sec in enumerate(report_sections(results)):
        if k == 1:
            lines.append("<!-- summary -->")
        if k:
            lines += [f'<a id="{sec.anchor}"></a>', ""]
        lines += [f"{'#' * sec.level} {sec.title}", "", *sec.lines]
        if k == 1:
            lines.append("<!-- /summary -->")
            lines.append("")
    return "\n".join(lines)


_IMG = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")
_ANCHOR = re.compile(r'<a id="([^"]+)"></a>')
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\((#[^)]+)\)")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    """Links to anchors, bold and code of the (escaped) markdown subset, as HTML."""
    text = _LINK.sub(lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', text)
    text = _BOLD.sub(r"<b>\1</b>", text)
    return _CODE.sub(r"<code>\1</code>", text)


def _html(markdown: str, folder: Path) -> str:
    """A self-contained HTML page for the (small) markdown subset written above."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if not table:
            return
        rows = [r for r in table if not all(set(c) <= {"-"} for c in r)]
        head, rest = rows[0], rows[1:]
        body.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>")
        body.extend("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rest)
        body.append("</table>")
        table.clear()

    for raw in markdown.splitlines():
        line = _inline(html.escape(raw, quote=False))
        anchor = _ANCHOR.fullmatch(raw.strip())
        if anchor:
            flush()
            body.append(f'<a id="{html.escape(anchor.group(1))}"></a>')
            continue
        if raw.startswith("<!--"):
            continue
        if raw.startswith("|"):
            table.append([_inline(html.escape(c.strip())) for c in raw.strip("|").split("|")])
            continue
        flush()
        img = _IMG.fullmatch(raw.strip())
        if img:
            data = base64.b64encode((folder / img.group(2)).read_bytes()).decode("ascii")
            body.append(
                f'<img alt="{html.escape(img.group(1))}" src="data:image/png;base64,{data}">'
            )
        elif raw.startswith("#"):
            level = len(raw) - len(raw.lstrip("#"))
            body.append(f"<h{level}>{line[level:].strip()}</h{level}>")
        elif raw.startswith("- "):
            body.append(f"<li>{line[2:]}</li>")
        elif raw.startswith("> "):
            body.append(f"<blockquote>{line[5:]}</blockquote>")
        elif raw.strip():
            body.append(f"<p>{line}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
        "img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Report</title>'
        f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


# ---------------------------------------------------------------------- main
def _check_out_dir(out: Path) -> None:
    """``out`` must be a directory or not exist yet (one-line error otherwise)."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "output folder" if folder == out else "a parent of the output folder"
                raise InputError(f"{what} {str(folder)!r} is a file, not a folder", field="out")
            return


def write_report(
    store: Store,
    experiment: str,
    out_dir: str | os.PathLike[str],
    *,
    num_jumps: int = 3,
    offset: int = 10,
    steps: StepMode = "train",
    alpha: float | None = DEFAULT_ALPHA,
    include_nonsignificant: bool = False,
    metric: str = STABLE_RANK,
    num_periods: int = 0,
    figures: bool = True,
    html_page: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Write the before/after report of ``experiment`` into ``out_dir`` (crash-safe).

    Parameters
    ----------
    store
        The store.
    experiment
        The run.
    out_dir
        Output directory (created; files of an earlier report are replaced).
        Nothing is written when an argument is wrong.
    num_jumps, offset, steps, alpha, include_nonsignificant, metric, num_periods
        See :func:`build_report` (jumps significant at ``alpha=0.05`` by default).
    figures
        Draw the figures whose data exist.
    html_page
        Also write a self-contained ``report.html``.
    progress
        Called with a short description of each stage.

    Returns
    -------
    dict
        ``{file name: path}`` of every file written.

    Examples
    --------
    >>> import tempfile, ndt_store
    >>> from ndt_store.testing import write_phase1_json
    >>> d = tempfile.mkdtemp()
    >>> store = ndt_store.open_store(d + "/s.zarr")
    >>> path = write_phase1_json(d + "/run.json", n_records=60, jumps=[("fc2", 30, 5.0)])
    >>> _ = ndt_store.ingest_phase1(store, path)
    >>> sorted(write_report(store, "run", d + "/report", num_jumps=1, figures=False))
    ['analysis_results.json', 'comparison_report.md']
    """
    out = Path(out_dir)
    _check_out_dir(out)
    say = progress or (lambda _: None)
    say(f"analysing {experiment}")
    results, table = _build_report(
        store, experiment, num_jumps=num_jumps, offset=offset, steps=steps, alpha=alpha,
        include_nonsignificant=include_nonsignificant, metric=metric, num_periods=num_periods,
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if figures:
            say(f"drawing the figures of {experiment}")
            results["figures"] = _figures(store, results, tmp, jumps=table)
        markdown = report_markdown(results)
        (tmp / "comparison_report.md").write_text(markdown, encoding="utf-8")
        if html_page:  # interactive with the [web] extra, else the static page
            from ndt_store.web.report_page import report_page

            page = report_page(store, results, _html(markdown, tmp))
            (tmp / "report.html").write_text(page, encoding="utf-8")
        (tmp / "analysis_results.json").write_text(
            json.dumps(jsonable(results), indent=2, allow_nan=False), encoding="utf-8"
        )
        order = [*results["figures"].values(), "comparison_report.md"]
        order += ["report.html"] if html_page else []
        order.append("analysis_results.json")
        out.mkdir(parents=True, exist_ok=True)
        written = {}
        for name in order:
            os.replace(tmp / name, out / name)
            written[name] = out / name
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
