"""Before/after report of one run: ``analysis_results.json``, ``comparison_report.md``, figures.

:func:`write_report` finds the run's critical moments
(:func:`ndt_store.moments.identify_moments`), compares each jump's
before→during and during→after moments
(:func:`ndt_store.compare.compare_representations`), compares consecutive
weight snapshots when the store holds two or more, and writes:

* ``analysis_results.json`` — every measurement, plain JSON types (NaN as null);
* ``comparison_report.md`` — a readable summary per moment pair, figures embedded;
* figures, when their data exist: ``<run>_stable_rank_heatmap.png`` (jumps
  marked), ``<run>_loss_moments.png``, ``<run>_weight_change.png``,
  ``<run>_attention_pattern.png``, ``<run>_entropy_evolution.png``,
  ``<run>_filter_viz.png``;
* optionally ``report.html``, self-contained (images inlined as base64).

Everything is first written to a temporary directory beside ``out_dir`` and
then renamed into place file by file (figures first, the JSON last), so a crash
never leaves a half-written file under its final name.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ndt_store._dims import ATTENTION, HEAD, LOSS, PARAMETER, STABLE_RANK, STEP, WEIGHTS
from ndt_store.compare import compare_representations
from ndt_store.measures.attention import attention_specialization
from ndt_store.moments import CriticalMoment, StepMode, identify_moments, store_jumps
from ndt_store.plot import (
    attention_pattern,
    entropy_evolution,
    filter_grid,
    loss_curve,
    metric_heatmap,
    weight_change_bars,
)
from ndt_store.store import Store

__all__ = ["REPORT_FILES", "jsonable", "write_report"]

REPORT_FILES: tuple[str, ...] = ("analysis_results.json", "comparison_report.md")
"""Files every report contains (``report.html`` too when asked)."""
TOP_LAYERS = 5
"""Layers listed per comparison (largest absolute relative change of stable rank)."""


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, dataclasses and paths as JSON types; NaN/inf as None.

    Examples
    --------
    >>> jsonable({"a": np.float64(1.5), "b": [np.nan, np.int64(2)]})
    {'a': 1.5, 'b': [None, 2]}
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


# ------------------------------------------------------------------- analysis
def _pairs(moments: Sequence[CriticalMoment]) -> list[tuple[CriticalMoment, CriticalMoment]]:
    jumps = [m for m in moments if m.moment_type != "critical_period"]
    out = []
    for k in range(0, len(jumps) - 2, 3):
        before, during, after = jumps[k : k + 3]
        out += [(before, during), (during, after)]
    return out


def _snapshot_comparisons(store: Store, experiment: str) -> list[dict[str, Any]]:
    steps = store.snapshot_steps(experiment, WEIGHTS)
    return [
        compare_representations(store, a, b, experiment=experiment)
        for a, b in itertools.pairwise(steps)
    ]


# -------------------------------------------------------------------- figures
def _train_moments(moments: Sequence[CriticalMoment]) -> list[dict[str, Any]]:
    return [
        {STEP: m.train_step, "moment_type": m.moment_type}
        for m in moments
        if m.train_step is not None
    ]


def _figures(
    store: Store,
    experiment: str,
    moments: Sequence[CriticalMoment],
    snapshot_pairs: Sequence[dict[str, Any]],
    tmp: Path,
) -> dict[str, str]:
    """Write the figures whose data exist; ``{title: file name}``."""
    out: dict[str, str] = {}

    def save(title: str, suffix: str, draw: Any) -> None:
        name = f"{experiment}_{suffix}.png"
        draw(tmp / name)
        out[title] = name

    ds = store.phase1(experiment)
    if ds.sizes[STEP]:
        jumps = store_jumps(store, [experiment])
        save(
            "Stable rank by layer and step (jumps marked)",
            "stable_rank_heatmap",
            lambda p: metric_heatmap(ds, STABLE_RANK, jumps=jumps, path=p),
        )
        save(
            "Training loss with critical moments",
            "loss_moments",
            lambda p: loss_curve(ds[LOSS], moments=_train_moments(moments), path=p),
        )
    if snapshot_pairs:
        rel = xr.concat(
            [
                xr.DataArray(
                    [v["relative_change"] for v in c[WEIGHTS].values()],
                    dims=PARAMETER,
                    coords={PARAMETER: list(c[WEIGHTS])},
                ).expand_dims({STEP: [f"{c['requested_before']}→{c['requested_after']}"]})
                for c in snapshot_pairs
            ],
            dim=STEP,
        ).rename("relative weight change")
        save(
            "Relative weight change between snapshots",
            "weight_change",
            lambda p: weight_change_bars(rel.transpose(PARAMETER, STEP), path=p),
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
            if m.moment_type == "during_jump" and m.train_step is not None
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
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _jump_context(moment: CriticalMoment) -> str:
    info = moment.jump_info or {}
    parts = [f"layer `{info.get('layer', '?')}`"]
    for key in ("magnitude", "direction", "phase_category"):
        if key in info:
            parts.append(f"{key} {_fmt(info[key])}")
    idx = info.get("index", info.get(STEP))
    parts.append(f"record index {idx}")
    return ", ".join(parts)


def _comparison_md(title: str, c: dict[str, Any], context: str | None) -> list[str]:
    lines = [f"### {title}", ""]
    if context:
        lines += [f"Jump: {context}.", ""]
    lines += [
        f"- Records compared: step {c['step_before']} (index {c['index_before']}) → "
        f"step {c['step_after']} (index {c['index_after']}); requested "
        f"{c['requested_before']} → {c['requested_after']}",
        f"- Loss: {_fmt(c['loss_before'])} → {_fmt(c['loss_after'])} "
        f"(change {_fmt(c['loss_change'])})",
        "",
    ]
    changes = c["layer_changes"]
    ranked = sorted(
        changes.items(),
        key=lambda kv: -abs(kv[1]["relative_change"] or 0.0),
    )[:TOP_LAYERS]
    lines += [
        f"Layers whose stable rank changed most (of {len(changes)}):",
        "",
        "| layer | before | after | change | relative change |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {layer} | {_fmt(v['before'])} | {_fmt(v['after'])} | {_fmt(v['change'])} "
        f"| {_fmt(v['relative_change'])} |"
        for layer, v in ranked
    ]
    lines.append("")
    if WEIGHTS in c:
        top = sorted(c[WEIGHTS].items(), key=lambda kv: -(kv[1]["relative_change"] or 0.0))
        lines += [
            "| parameter | L2 change | relative change | cosine similarity |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {_fmt(v['l2_norm'])} | {_fmt(v['relative_change'])} "
            f"| {_fmt(v['cosine_similarity'])} |"
            for name, v in top[:TOP_LAYERS]
        ]
        lines.append("")
    if "activations" in c:
        lines += ["| layer | sparsity change | linear CKA |", "|---|---|---|"]
        lines += [
            f"| {name} | {_fmt(v['sparsity']['change'])} | {_fmt(v['linear_cka'])} |"
            for name, v in c["activations"].items()
        ]
        lines.append("")
    if ATTENTION in c:
        lines += ["| layer | mean entropy change | specialization change |", "|---|---|---|"]
        lines += [
            f"| {name} | {_fmt(v['mean_entropy']['change'])} "
            f"| {_fmt(v['specialization_index']['change'])} |"
            for name, v in c[ATTENTION].items()
        ]
        lines.append("")
    return lines


def _markdown(results: dict[str, Any], moments: Sequence[CriticalMoment]) -> str:
    exp = results["experiment"]
    meta = results["metadata"]
    lines = [f"# Before/after comparison report: {exp}", ""]
    described = ", ".join(
        f"{k} {meta[k]}" for k in ("arch_name", "dataset", "num_steps") if k in meta
    )
    if described:
        lines += [described, ""]
    lines += [
        f"Moment steps: {results['steps']} "
        "(`train`: training steps; `index`: the study's record-index convention).",
        "",
        "## Critical moments",
        "",
        "| type | step | record index | training step |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m.moment_type} | {m.step} | {m.index} | {_fmt(m.train_step)} |" for m in moments]
    lines += ["", "## Comparisons", ""]
    if not results["comparisons"]:
        lines += ["No jumps found: nothing to compare.", ""]
    for c in results["comparisons"]:
        lines += _comparison_md(c["pair"], c, c.get("jump_context"))
    if results["snapshot_comparisons"]:
        lines += ["## Stored snapshots", ""]
        for c in results["snapshot_comparisons"]:
            title = f"Snapshot {c['requested_before']} → {c['requested_after']}"
            lines += _comparison_md(title, c, None)
    if results["figures"]:
        lines += ["## Figures", ""]
        for title, name in results["figures"].items():
            lines += [f"### {title}", "", f"![{title}]({name})", ""]
    return "\n".join(lines)


_IMG = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


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
        line = html.escape(raw, quote=False)
        if raw.startswith("|"):
            table.append([html.escape(c.strip()) for c in raw.strip("|").split("|")])
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
def write_report(
    store: Store,
    experiment: str,
    out_dir: str | os.PathLike[str],
    *,
    num_jumps: int = 3,
    offset: int = 10,
    steps: StepMode = "train",
    alpha: float | None = None,
    num_periods: int = 0,
    figures: bool = True,
    html_page: bool = False,
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
    num_jumps, offset, steps, alpha, num_periods
        Moment selection, see :func:`ndt_store.moments.identify_moments`.
    figures
        Draw the figures whose data exist.
    html_page
        Also write a self-contained ``report.html``.

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
    moments = identify_moments(
        store,
        experiment,
        num_jumps=num_jumps,
        offset=offset,
        steps=steps,
        alpha=alpha,
        num_periods=num_periods,
    )
    comparisons = []
    for before, after in _pairs(moments):
        c = compare_representations(store, before, after)
        c["pair"] = f"{before.moment_type}_to_{after.moment_type}"
        c["jump"] = jsonable(before.jump_info)
        c["jump_context"] = _jump_context(before)
        comparisons.append(c)
    snapshot_pairs = _snapshot_comparisons(store, experiment)
    results: dict[str, Any] = {
        "experiment": experiment,
        "metadata": store.metadata(experiment),
        "steps": steps,
        "offset": offset,
        "moments": moments,
        "comparisons": comparisons,
        "snapshot_comparisons": snapshot_pairs,
        "figures": {},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if figures:
            results["figures"] = _figures(store, experiment, moments, snapshot_pairs, tmp)
        markdown = _markdown(results, moments)
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
