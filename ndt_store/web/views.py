"""What each web view shows, as JSON-ready dicts and CSV tables read lazily from a store.

Each view is one function ``<view>_view(store, **params) -> dict``; the server
sends the dict as JSON and embeds it in the page, the interactive report embeds
it in one HTML file. The functions read only what the view shows: the runs view
reads each experiment's metadata entry (no arrays); the run view reads one
experiment's Phase 1 frame; the moments view reads two snapshot rows of one
experiment; the compare view reads the Phase 1 frames of the selected runs.
Names coming from a request are validated as the store validates them before
anything is read.
"""

from __future__ import annotations

import io
import itertools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ndt_store import _dims as D
from ndt_store._json import jsonable
from ndt_store._names import validate_name
from ndt_store.errors import InputError, NotFoundError
from ndt_store.store import Store

__all__ = [
    "ALIGNS",
    "RUN_COLUMNS",
    "VIEWS",
    "compare_view",
    "fingerprint",
    "moments_view",
    "plain",
    "run_view",
    "runs_view",
    "validate_experiment",
    "view_csv",
]

VIEWS: tuple[str, ...] = ("runs", "run", "moments", "compare")
"""The views, in menu order."""
RUN_COLUMNS: tuple[str, ...] = (
    "experiment",
    D.ARCH_NAME,
    D.DATASET,
    D.NUM_STEPS,
    D.MEASUREMENT_INTERVAL,
    D.FINAL_ACCURACY,
    D.ELAPSED_TIME,
    "snapshots",
    "status",
)
"""Columns the runs table always has (other scalar metadata fields are appended)."""
ALIGNS: tuple[str, ...] = ("step", "phase")
"""How the compare view aligns runs: by training step, or by phase (step / num_steps)."""
MAX_EXTRA_COLUMNS = 12
MAX_CKA_SNAPSHOTS = 40
"""The CKA matrix uses at most this many snapshots (evenly spaced)."""


# ------------------------------------------------------------------ helpers
plain = jsonable
"""``value`` as strict JSON types (numpy as Python, NaN/inf as ``None``): :func:`jsonable`."""


def _name(value: Any, kind: str) -> str:
    return validate_name(value, kind=kind)


def validate_experiment(store: Store, experiment: Any) -> str:
    """``experiment`` if it is a valid name of an experiment in ``store`` (else an error)."""
    name = _name(experiment, "experiment")
    store.metadata(name)  # NotFoundError naming the store and the known runs
    return name


_experiment = validate_experiment


def fingerprint(store: Store, experiment: str, *, phase1: bool) -> tuple[Any, ...]:
    """What a view of ``experiment`` is computed from, cheaply: a changed value means redraw.

    The run metadata and snapshot steps (one small metadata read) and, with
    ``phase1``, the number of records and the last step and loss.
    """
    meta = store.metadata(experiment)
    key: tuple[Any, ...] = (
        repr(sorted(meta.items(), key=lambda kv: kv[0])),
        tuple(store.snapshot_steps(experiment)),
    )
    if phase1:
        ds = store.phase1(experiment)
        n = ds.sizes[D.STEP]
        last = (int(ds[D.STEP].values[-1]), float(ds[D.LOSS].values[-1])) if n else None
        key += (n, last)
    return key


def _metric(metric: Any) -> str:
    metric = metric or D.STABLE_RANK
    if metric not in D.PHASE1_METRICS:
        raise InputError(
            f"unknown metric {metric!r}; choose from {list(D.PHASE1_METRICS)}", field="metric"
        )
    return str(metric)


def _step(value: Any, field: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"{field} must be an integer step, got {value!r}", field=field) from None


def status(metadata: Mapping[str, Any]) -> str:
    """Recording status of a run: ``recording`` while a Recorder writes it, else its outcome.

    Examples
    --------
    >>> status({"capture": {"recorder": "x"}}), status({})
    ('recording', 'stored')
    """
    capture = metadata.get("capture")
    if not isinstance(capture, Mapping):
        return "stored"
    return str(capture.get("status") or "recording")


# ---------------------------------------------------------------------- runs
def runs_view(store: Store) -> dict[str, Any]:
    """The runs table: one row per experiment with its scalar metadata (no arrays read)."""
    rows: list[dict[str, Any]] = []
    extra: dict[str, None] = {}
    for name in store.experiments():
        meta = store.metadata(name)
        row: dict[str, Any] = {
            "experiment": name,
            "snapshots": len(store.snapshot_steps(name)),
            "status": status(meta),
        }
        for key, value in meta.items():
            if key in RUN_COLUMNS or not isinstance(value, str | int | float | bool):
                continue
            if key not in extra and len(extra) >= MAX_EXTRA_COLUMNS:
                continue
            extra.setdefault(str(key), None)
            row[str(key)] = value
        for key in RUN_COLUMNS[1:7]:
            value = meta.get(key)
            row[key] = value if isinstance(value, str | int | float | bool) else None
        rows.append(row)
    return plain({"view": "runs", "columns": [*RUN_COLUMNS, *extra], "rows": rows})


# ----------------------------------------------------------------------- run
def _jumps(
    x: xr.DataArray, alpha: float, snapshots: Sequence[int], steps: np.ndarray
) -> list[dict[str, Any]]:
    from ndt_store.measures.dynamics import detect_jumps

    if x.sizes[D.STEP] < 3:
        return []
    res = detect_jumps(x.transpose(D.LAYER, D.STEP), alpha=alpha).compute()
    layers = [str(v) for v in x[D.LAYER].values]
    values = x.transpose(D.LAYER, D.STEP).values
    snaps = np.asarray(sorted(snapshots), dtype=np.int64)
    out = []
    for li, index in zip(*np.nonzero(res["is_jump"].values), strict=True):
        step, after_step = int(steps[index]), int(steps[min(index + 1, steps.size - 1)])
        before = snaps[snaps <= step]
        after = snaps[snaps >= after_step]
        out.append(
            {
                "layer": layers[li],
                "index": int(index),
                "step": step,
                "value": float(values[li, index]),
                "z": float(res["z"].values[li, index]),
                "magnitude": float(res["magnitude"].values[li, index]),
                "p_value": float(res["p_value"].values[li, index]),
                "significant": bool(res["significant"].values[li, index]),
                "before": int(before[-1]) if before.size else None,
                "after": int(after[0]) if after.size else None,
            }
        )
    return out


def _periods(store: Store, experiment: str) -> list[dict[str, Any]]:
    from ndt_store.moments import period_moments

    if store.phase1(experiment).sizes[D.STEP] < 3:
        return []
    moments = period_moments(store, experiment, num_periods=1000)
    keys = ("start_step", "end_step", "peak_coordination", "loss_correlation")
    return [{k: (m.jump_info or {})[k] for k in keys} for m in moments]


def run_view(
    store: Store,
    experiment: Any,
    *,
    metric: Any = None,
    alpha: float = 0.05,
    show: str = "all",
) -> dict[str, Any]:
    """One run: Phase 1 curves per layer, jumps with p-values, loss, critical periods.

    Parameters
    ----------
    store, experiment
        The run.
    metric
        One of the four Phase 1 metrics (default stable rank).
    alpha
        Family-wise level of the jump significance test.
    show
        ``"all"`` jumps (non-significant ones drawn hollow) or ``"significant"`` only.
    """
    experiment = _experiment(store, experiment)
    metric = _metric(metric)
    if show not in ("all", "significant"):
        raise InputError(f"show must be 'all' or 'significant', got {show!r}", field="show")
    ds = store.phase1(experiment)
    x = ds[metric]
    steps = np.asarray(ds[D.STEP].values, dtype=np.int64)
    snapshots = store.snapshot_steps(experiment)
    jumps = _jumps(x, alpha, snapshots, steps)
    if show == "significant":
        jumps = [j for j in jumps if j["significant"]]
    meta = store.metadata(experiment)
    return plain(
        {
            "view": "run",
            "experiment": experiment,
            "metric": metric,
            "metrics": list(D.PHASE1_METRICS),
            "alpha": alpha,
            "show": show,
            "status": status(meta),
            "steps": steps,
            "layers": [str(v) for v in ds[D.LAYER].values],
            "values": x.transpose(D.LAYER, D.STEP).values,
            "loss": ds[D.LOSS].values,
            "jumps": jumps,
            "periods": _periods(store, experiment),
            "snapshots": snapshots,
        }
    )


# ------------------------------------------------------------------- moments
def _pick_pair(steps: list[int], before: int | None, after: int | None) -> tuple[int, int]:
    for field, s in (("before", before), ("after", after)):
        if s is not None and s not in steps:
            raise NotFoundError(f"no snapshot at {field} step {s} (stored: {steps})")
    if before is None and after is None:
        return steps[0], steps[-1]
    if before is None:
        assert after is not None
        earlier = [s for s in steps if s < after]
        return (earlier[-1] if earlier else after), after
    if after is None:
        later = [s for s in steps if s > before]
        return before, (later[0] if later else before)
    return before, after


def _attention(
    store: Store, experiment: str, layers: Sequence[str], before: int, after: int
) -> dict[str, Any]:
    from ndt_store.measures.attention import head_entropy

    maps: dict[str, Any] = {}
    entropy: dict[str, Any] = {}
    for layer in layers:
        attn = store.attention(experiment, layer).sel({D.STEP: [before, after]})
        mean = attn.mean(D.SAMPLE).transpose(D.STEP, D.HEAD, D.QUERY, D.KEY).values
        ent = head_entropy(attn, keep=(D.STEP,)).transpose(D.STEP, D.HEAD).values
        maps[layer] = {"before": mean[0], "after": mean[1]}
        entropy[layer] = {"before": ent[0], "after": ent[1], "change": ent[1] - ent[0]}
    return {"maps": maps, "entropy": entropy}


_MEMO: dict[tuple[Any, ...], Any] = {}
_MEMO_SIZE = 64


def _memo(store: Store, experiment: str, what: str, *key: Any, make: Any) -> Any:
    """``make()``, kept per (store, experiment revision, what, key): the views of one
    experiment share their pair-independent parts (all moments of a report, repeated
    requests to ``ndt-store serve``) until the experiment changes."""
    revision = store.entries()[experiment].get("revision")
    k = (store.location, experiment, revision, what, *key)
    if k not in _MEMO:
        if len(_MEMO) >= _MEMO_SIZE:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[k] = make()
    return _MEMO[k]


def _weights(store: Store, experiment: str) -> dict[str, Any] | None:
    if len(store.snapshot_steps(experiment, D.WEIGHTS)) < 2:
        return None
    return _memo(store, experiment, "weights", make=lambda: _weight_changes(store, experiment))


def _weight_changes(store: Store, experiment: str) -> dict[str, Any]:
    from ndt_store.compare import read_if_small
    from ndt_store.measures.weights import consecutive_weight_change

    lazy = store.weights(experiment)
    weights = read_if_small(lazy) or dict(lazy)  # in memory when small
    names = list(weights)
    rel = [consecutive_weight_change(w)["relative_change"].values for w in weights.values()]
    steps = [int(s) for s in next(iter(weights.values()))[D.STEP].values]
    intervals = [f"{a}→{b}" for a, b in itertools.pairwise(steps)]
    return {"parameters": names, "intervals": intervals, "relative_change": np.asarray(rel)}


def _cka(store: Store, experiment: str, layer: str | None) -> dict[str, Any] | None:
    if len(store.snapshot_steps(experiment, D.ACTIVATIONS)) < 2:
        return None
    return _memo(
        store, experiment, "cka", layer, make=lambda: _cka_matrix(store, experiment, layer)
    )


def _cka_matrix(store: Store, experiment: str, layer: str | None) -> dict[str, Any]:
    from ndt_store.measures.similarity import linear_cka

    steps = store.snapshot_steps(experiment, D.ACTIVATIONS)
    acts = store.activations(experiment)
    if layer not in acts:
        layer = next(iter(acts))
    assert layer is not None
    a = acts[layer]
    keep = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), MAX_CKA_SNAPSHOTS)).round())
    a = a.isel({D.STEP: keep.astype(int)}).compute()
    x = a.rename({D.STEP: "step_a"})
    y = a.rename({D.STEP: "step_b"})
    cka = linear_cka(x, y)
    m = cka.transpose("step_a", "step_b").values
    return {
        "estimator": cka.attrs.get("estimator"),
        "layer": layer,
        "layers": list(acts),
        "steps": [int(s) for s in a[D.STEP].values],
        "matrix": m,
    }


def moments_view(
    store: Store,
    experiment: Any,
    *,
    before: Any = None,
    after: Any = None,
    layer: Any = None,
    head: Any = None,
    all_layers: bool = False,
) -> dict[str, Any]:
    """Before/after snapshots: attention per head, weight change, CKA between snapshots.

    Parameters
    ----------
    store, experiment
        The run.
    before, after
        Snapshot steps (default: the first and last stored snapshot).
    layer
        Attention layer shown (default the first); its activations give the CKA matrix.
    head
        Head shown first (the page can switch heads without a new request).
    all_layers
        Include the attention maps of every layer (the self-contained report does).
    """
    experiment = _experiment(store, experiment)
    steps = store.snapshot_steps(experiment)
    out: dict[str, Any] = {
        "view": "moments",
        "experiment": experiment,
        "snapshots": steps,
        "before": None,
        "after": None,
        "layer": None,
        "head": 0,
        "attention_layers": [],
        "attention": None,
        "weights": None,
        "cka": None,
    }
    if not steps:
        return plain(out)
    b, a = _pick_pair(steps, _step(before, "before"), _step(after, "after"))
    out.update(before=b, after=a)
    attn_steps = store.snapshot_steps(experiment, D.ATTENTION)
    if b in attn_steps and a in attn_steps:
        layers = list(store.attention(experiment))
        chosen = layers[0] if layer in (None, "") else _name(layer, "layer")
        if chosen not in layers:
            raise NotFoundError(
                f"experiment {experiment!r} has no attention for layer {chosen!r} "
                f"(stored: {', '.join(layers)})"
            )
        out.update(attention_layers=layers, layer=chosen)
        out["attention"] = _attention(store, experiment, layers if all_layers else [chosen], b, a)
        n_heads = len(out["attention"]["entropy"][chosen]["change"])
        h = _step(head, "head") or 0
        if not 0 <= h < n_heads:
            raise InputError(f"head {h} is out of range (0..{n_heads - 1})", field="head")
        out["head"] = h
    out["weights"] = _weights(store, experiment)
    out["cka"] = _cka(store, experiment, out["layer"] if layer not in (None, "") else None)
    return plain(out)


# ------------------------------------------------------------------- compare
def _series(ds: xr.Dataset, metric: str, layer: str) -> np.ndarray:
    x = ds[metric].transpose(D.STEP, D.LAYER).values
    if layer == "mean":
        with warnings.catch_warnings():  # a step where no layer has a value stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(x, axis=1) if x.size else np.zeros(x.shape[0])
    if layer in ("first", "last"):
        return x[:, 0 if layer == "first" else -1]
    layers = [str(v) for v in ds[D.LAYER].values]
    if layer not in layers:
        return np.full(x.shape[0], np.nan)
    return x[:, layers.index(layer)]


def compare_view(
    store: Store,
    experiments: Sequence[Any],
    *,
    metric: Any = None,
    layer: Any = "mean",
    align: str = "step",
) -> dict[str, Any]:
    """One metric of several runs overlaid, aligned by training step or by phase.

    Parameters
    ----------
    store
        The store.
    experiments
        The runs overlaid (validated names; only their Phase 1 frames are read).
    metric
        A Phase 1 metric.
    layer
        ``"mean"`` over layers, ``"first"``, ``"last"`` or a layer name.
    align
        ``"step"``: x is the training step; ``"phase"``: step / num_steps (0..1).
    """
    metric = _metric(metric)
    if align not in ALIGNS:
        raise InputError(f"align must be one of {list(ALIGNS)}, got {align!r}", field="align")
    layer = layer or "mean"
    if layer not in ("mean", "first", "last"):
        layer = _name(layer, "layer")
    names = [_experiment(store, e) for e in dict.fromkeys(experiments)]
    series = []
    layers: dict[str, None] = {}
    for name in names:
        ds = store.phase1(name)
        layers.update(dict.fromkeys(str(v) for v in ds[D.LAYER].values))
        steps = np.asarray(ds[D.STEP].values, dtype=np.float64)
        x = steps
        if align == "phase":
            total = store.metadata(name).get(D.NUM_STEPS)
            if not (isinstance(total, int | float) and total > 0):
                total = max(float(steps.max(initial=1.0)), 1.0)
            x = steps / float(total)
        series.append({"experiment": name, "x": x, "y": _series(ds, metric, layer)})
    return plain(
        {
            "view": "compare",
            "experiments": names,
            "all_experiments": store.experiments(),
            "metric": metric,
            "metrics": list(D.PHASE1_METRICS),
            "layer": layer,
            "layers": ["mean", "first", "last", *layers],
            "align": align,
            "series": series,
        }
    )


# ----------------------------------------------------------------------- CSV
def view_csv(payload: Mapping[str, Any]) -> str:
    """The data a view shows, as one CSV table (long format).

    Examples
    --------
    >>> view_csv({"view": "compare", "metric": "m", "series": [
    ...     {"experiment": "a", "x": [0, 1], "y": [2.0, 3.0]}]}).splitlines()[:2]
    ['experiment,x,m', 'a,0,2.0']
    """
    view = payload["view"]
    if view == "runs":
        df = pd.DataFrame(payload["rows"], columns=payload["columns"])
    elif view == "run":
        frames = []
        for layer, values in zip(payload["layers"], payload["values"], strict=True):
            frames.append(
                pd.DataFrame(
                    {
                        "step": payload["steps"],
                        "layer": layer,
                        payload["metric"]: values,
                        "loss": payload["loss"],
                    }
                )
            )
        df = pd.concat(frames) if frames else pd.DataFrame(columns=["step", "layer"])
        jumps = {(j["layer"], j["step"]): j for j in payload["jumps"]}
        df["jump_p_value"] = [
            jumps[k]["p_value"] if k in jumps else None
            for k in zip(df["layer"], df["step"], strict=True)
        ]
    elif view == "moments":
        rows: list[dict[str, Any]] = []
        attn = payload.get("attention") or {"entropy": {}}
        for layer, e in attn["entropy"].items():
            for h, (b, a) in enumerate(zip(e["before"], e["after"], strict=True)):
                rows.append(
                    {
                        "kind": "head_entropy",
                        "name": layer,
                        "index": h,
                        "step_before": payload["before"],
                        "step_after": payload["after"],
                        "before": b,
                        "after": a,
                    }
                )
        w = payload.get("weights")
        if w:
            for p, values in zip(w["parameters"], w["relative_change"], strict=True):
                for interval, v in zip(w["intervals"], values, strict=True):
                    sb, sa = interval.split("→")
                    rows.append(
                        {
                            "kind": "weight_relative_change",
                            "name": p,
                            "step_before": int(sb),
                            "step_after": int(sa),
                            "after": v,
                        }
                    )
        c = payload.get("cka")
        if c:
            for i, sb in enumerate(c["steps"]):
                for j, sa in enumerate(c["steps"]):
                    rows.append(
                        {
                            "kind": "linear_cka",
                            "name": c["layer"],
                            "step_before": sb,
                            "step_after": sa,
                            "after": c["matrix"][i][j],
                        }
                    )
        df = pd.DataFrame(
            rows, columns=["kind", "name", "index", "step_before", "step_after", "before", "after"]
        )
    elif view == "compare":
        metric = payload["metric"]
        parts = [
            pd.DataFrame({"experiment": s["experiment"], "x": s["x"], metric: s["y"]})
            for s in payload["series"]
        ]
        df = pd.concat(parts) if parts else pd.DataFrame(columns=["experiment", "x", metric])
    else:
        raise InputError(f"unknown view {view!r}; choose from {list(VIEWS)}", field="view")
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue()
