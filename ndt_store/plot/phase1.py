"""Phase 1 figures: layer × step metric heatmaps with jumps and critical periods; loss curves."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ndt_store._dims import EXPERIMENT, INDEX, LAYER, LOSS, STABLE_RANK, STEP
from ndt_store.errors import InputError
from ndt_store.plot._common import (
    DEFAULT_DPI,
    PathLike,
    as_dataarray,
    edges,
    finish,
    labels_of,
    legend_outside,
    new_figure,
    numeric_coord,
    require_dims,
    series_colors,
    set_ticks,
    with_context,
)

XrT = TypeVar("XrT", xr.DataArray, xr.Dataset)

TRAIN_STEP = "train_step"
"""Jump-table column holding a true training step (the published table's ``step`` is an index)."""


def select_experiment(data: XrT, experiment: Hashable | None, *, what: str) -> XrT:
    """Reduce an ``experiment`` dim to one experiment (by label, or the only one there is)."""
    if EXPERIMENT not in data.dims:
        return data
    if experiment is not None:
        if experiment not in data.indexes[EXPERIMENT]:
            raise InputError(
                f"experiment not found; available: {labels_of(data, EXPERIMENT)}",
                field="experiment",
                value=experiment,
            )
        return data.sel({EXPERIMENT: experiment})
    if data.sizes[EXPERIMENT] != 1:
        raise InputError(
            f"{what} holds {data.sizes[EXPERIMENT]} experiments; pass experiment=<label>",
            field="experiment",
        )
    return data.isel({EXPERIMENT: 0})


def _metric(data: Any, metric: str, what: str) -> xr.DataArray:
    if isinstance(data, xr.Dataset):
        if metric not in data.data_vars:
            raise InputError(
                f"variable not in the dataset; available: {sorted(map(str, data.data_vars))}",
                field="metric",
                value=metric,
            )
        return data[metric]
    da = as_dataarray(data, (STEP, LAYER), what=what)
    return da if da.name is not None else da.rename(metric)


def _jump_points(
    jumps: Any, da: xr.DataArray, steps: np.ndarray, layers: list[str]
) -> list[tuple[float, int]]:
    """(training step, layer row) of every jump to mark."""
    row = {name: i for i, name in enumerate(layers)}
    exp = (
        da[EXPERIMENT].values[()] if EXPERIMENT in da.coords and da[EXPERIMENT].ndim == 0 else None
    )
    pairs: list[tuple[Any, Any]] = []
    if isinstance(jumps, pd.DataFrame):
        df = jumps
        if exp is not None and EXPERIMENT in df.columns:
            df = df[df[EXPERIMENT] == exp]
        if LAYER not in df.columns:
            raise InputError(
                f"jump table needs a {LAYER!r} column", field="jumps", value=list(df.columns)
            )
        if TRAIN_STEP in df.columns:
            pairs = list(zip(df[TRAIN_STEP], df[LAYER], strict=True))
        elif INDEX in df.columns:
            idx = df[INDEX].to_numpy(dtype=int)
            if idx.size and (idx.min() < 0 or idx.max() >= steps.size):
                raise InputError(
                    f"jump index outside the {steps.size} records", field="jumps", value=idx.max()
                )
            pairs = list(zip(steps[idx], df[LAYER], strict=True))
        else:
            raise InputError(
                f"jump table needs a {TRAIN_STEP!r} (training step) or {INDEX!r} (record index) "
                f"column; the published table's {STEP!r} column is a record index: pass "
                f"jumps.rename(columns={{'step': 'index'}})",
                field="jumps",
                value=list(df.columns),
            )
    elif isinstance(jumps, xr.DataArray):
        mask = _flags_on_steps(jumps, da, steps, layers, what="jumps")
        return [(float(steps[c]), int(r)) for r, c in zip(*np.nonzero(mask), strict=True)]
    elif isinstance(jumps, Mapping):
        pairs = [(s, layer) for layer, ss in jumps.items() for s in ss]
    else:
        raise InputError(
            "jumps must be a DataFrame, a boolean DataArray (step, layer) or {layer: steps}",
            field="jumps",
            value=type(jumps).__name__,
        )
    unknown = sorted({str(layer) for _, layer in pairs} - set(row))
    if unknown:
        raise InputError(
            f"jump layers not in the heatmap (have {layers})", field="jumps", value=unknown
        )
    return [(float(s), row[str(layer)]) for s, layer in pairs]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1-D boolean array (stop exclusive)."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    d = np.diff(padded)
    return list(zip(np.nonzero(d == 1)[0], np.nonzero(d == -1)[0], strict=True))


def _flags_on_steps(
    flags: xr.DataArray, da: xr.DataArray, steps: np.ndarray, layers: list[str], *, what: str
) -> np.ndarray:
    """A (layer, step) boolean mask aligned with the heatmap from flags over step or index.

    ``index`` positions map to the heatmap's steps; NaN (no record) counts as not flagged;
    an ``experiment`` dim is reduced to the heatmap's experiment.
    """
    if EXPERIMENT in flags.dims:
        exp = da[EXPERIMENT].item() if EXPERIMENT in da.coords else None
        flags = select_experiment(flags, exp, what=what)
    if INDEX in flags.dims and STEP not in flags.dims:
        n = flags.sizes[INDEX]
        if n > steps.size:
            raise InputError(
                f"{what} has {n} records, the heatmap {steps.size}", field=what, value=n
            )
        flags = flags.rename({INDEX: STEP}).assign_coords({STEP: steps[:n]})
    require_dims(flags, (STEP, LAYER), what=what)
    flags = flags.where(flags.notnull(), False).astype(bool).transpose(LAYER, STEP)
    values = np.asarray(flags.values)
    flagged_layers = {
        lab for lab, row in zip(labels_of(flags, LAYER), values, strict=True) if row.any()
    }
    unknown = sorted(flagged_layers - set(layers))
    if unknown:
        raise InputError(
            f"{what} layers not in the heatmap (have {layers})", field=what, value=unknown
        )
    flags = flags.copy(data=values).reindex({STEP: steps, LAYER: layers}, fill_value=False)
    return np.asarray(flags.values, dtype=bool)


def metric_heatmap(
    data: xr.Dataset | xr.DataArray,
    metric: str = STABLE_RANK,
    *,
    experiment: Hashable | None = None,
    jumps: pd.DataFrame | xr.DataArray | Mapping[str, Iterable[float]] | None = None,
    critical: xr.DataArray | None = None,
    path: PathLike | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Layer × step heatmap of one Phase 1 metric, with jumps and critical periods marked.

    Parameters
    ----------
    data
        Dataset (``metric`` is taken from it) or DataArray over ``(step, layer)``, with an
        optional ``experiment`` dim (reduced with ``experiment=``). Layers that are all
        NaN (absent from this experiment) are left out.
    metric
        Variable to draw (default ``stable_rank``).
    experiment
        Experiment label, needed when ``data`` holds several.
    jumps
        Jumps to mark with crosses: a DataFrame with a ``layer`` column and either
        ``train_step`` (training step) or ``index`` (record index, mapped to the
        step coordinate by position); rows of other experiments are dropped when it
        has an ``experiment`` column. Also a boolean DataArray over ``(step, layer)``
        or ``(index, layer)`` (such as ``detect_jumps(x).is_jump``) or a
        ``{layer: [training steps]}`` dict.
    critical
        Flags over ``(step, layer)`` or ``(index, layer)`` (boolean, or 1.0/0.0/NaN as
        from ``critical_periods``; NaN counts as not critical): critical periods, drawn
        as hatched boxes. For the DataArray forms an ``experiment`` dim is reduced to
        the heatmap's experiment.
    path, dpi
        Save here (format by extension, PNG when none) and still return the figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.arange(6.0).reshape(3, 2), dims=("step", "layer"),
    ...                   coords={"step": [0, 5, 10], "layer": ["fc1", "fc2"]},
    ...                   name="stable_rank")
    >>> fig = metric_heatmap(da, jumps={"fc2": [5]})
    >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ['fc1', 'fc2']
    """
    da = select_experiment(_metric(data, metric, "data"), experiment, what="data")
    require_dims(da, (STEP, LAYER), what=str(da.name or metric))
    da = da.transpose(LAYER, STEP)
    values = np.asarray(da.values, dtype=float)
    keep = ~np.all(np.isnan(values), axis=1)
    values = values[keep]
    layers = [name for name, k in zip(labels_of(da, LAYER), keep, strict=True) if k]
    steps = numeric_coord(da, STEP)
    x_edges = edges(steps)
    y_edges = np.arange(len(layers) + 1) - 0.5

    fig, axes = new_figure((9.0, max(3.0, 0.35 * len(layers) + 1.6)))
    ax = axes[0, 0]
    mesh = ax.pcolormesh(x_edges, y_edges, values, cmap="viridis", shading="flat")
    bar = fig.colorbar(mesh, ax=ax, label=str(da.name or metric))
    bar.formatter.set_useOffset(False)  # type: ignore[attr-defined]  # no "1e-12+1" offsets
    set_ticks(ax, "y", layers)
    ax.set_ylim(len(layers) - 0.5, -0.5)  # first layer on top
    ax.set_xlabel(f"training {STEP}")
    ax.set_ylabel(LAYER)
    handles: list[Any] = []

    if critical is not None:
        mask = _flags_on_steps(critical, da, steps, layers, what="critical")
        for r in range(len(layers)):
            spans = [(x_edges[s], x_edges[e] - x_edges[s]) for s, e in _runs(mask[r])]
            if spans:
                ax.broken_barh(
                    spans,
                    (r - 0.45, 0.9),
                    facecolors="none",
                    edgecolors="white",
                    hatch="////",
                    linewidth=0.0,
                )
        handles.append(
            Patch(facecolor="grey", edgecolor="white", hatch="////", label="critical period")
        )
    if jumps is not None:
        groups: list[tuple[Any, str, str, str, int, str]]
        if isinstance(jumps, pd.DataFrame) and "significant" in jumps.columns:
            sig = jumps["significant"].astype(bool).to_numpy()
            groups = [  # hollow magenta circles vs filled red crosses: shape and colour differ
                (jumps[~sig], "o", "none", "magenta", 30, "not significant"),
                (jumps[sig], "X", "red", "white", 60, "significant jump"),
            ]
        else:
            groups = [(jumps, "X", "red", "white", 50, "jump")]
        for table, marker, face, edge, size, label in groups:
            pts = _jump_points(table, da, steps, layers)
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.scatter(
                    xs, ys, marker=marker, s=size, facecolors=face, edgecolors=edge,
                    linewidths=1.2, zorder=3,
                )  # fmt: skip
            handles.append(
                Line2D(
                    [],
                    [],
                    marker=marker,
                    markerfacecolor=face,
                    markeredgecolor=edge,
                    color=edge if face == "none" else face,
                    linestyle="none",
                    label=f"{label} ({len(pts)})",
                )
            )
    if handles:
        legend_outside(ax, handles=handles)
    title = f"{da.name or metric} by {LAYER} and {STEP}"
    ax.set_title(with_context(title, da), fontsize=10)
    return finish(fig, path, dpi=dpi)


def _moments(moments: Sequence[Any]) -> list[tuple[float, str]]:
    out = []
    for m in moments:
        if isinstance(m, Mapping):
            out.append((float(m[STEP]), str(m.get("moment_type", "moment"))))
        elif hasattr(m, STEP):
            out.append((float(getattr(m, STEP)), str(getattr(m, "moment_type", "moment"))))
        else:
            out.append((float(m), "moment"))
    return out


def loss_curve(
    loss: Any,
    *,
    moments: Sequence[Any] | None = None,
    logy: bool = False,
    experiment: Hashable | None = None,
    path: PathLike | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Training loss over steps, with critical moments marked as vertical lines.

    Parameters
    ----------
    loss
        DataArray over ``step`` (optionally one more dim, drawn as one line per label),
        a Dataset with a ``loss`` variable, or a raw 1-D array. An ``experiment`` dim
        of size one is dropped; larger ones are drawn as lines unless ``experiment=``.
    moments
        Training steps, or objects with ``.step`` and ``.moment_type`` (or mappings
        with those keys); one colour and legend entry per moment type.
    logy
        Logarithmic y axis.
    experiment
        Select one experiment of an ``experiment`` dim.
    path, dpi
        Save here (format by extension, PNG when none) and still return the figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> l = xr.DataArray([2.3, 1.0, 0.5], dims="step", coords={"step": [0, 5, 10]})
    >>> fig = loss_curve(l, moments=[5])
    >>> fig.axes[0].get_xlabel()
    'training step'
    """
    if isinstance(loss, xr.Dataset):
        loss = _metric(loss, LOSS, "loss")
    da = as_dataarray(loss, (STEP,), what="loss")
    if EXPERIMENT in da.dims and (experiment is not None or da.sizes[EXPERIMENT] == 1):
        da = select_experiment(da, experiment, what="loss")
    if STEP not in da.dims or da.ndim > 2:
        raise InputError(
            f"loss must have dims ({STEP!r},) or ({STEP!r}, <one more>)",
            field="loss",
            value=da.dims,
        )
    hue = next((d for d in da.dims if d != STEP), None)
    da = da.transpose(STEP, ...)
    x = numeric_coord(da, STEP)
    values = np.asarray(da.values, dtype=float)

    fig, axes = new_figure((8.0, 4.2))
    ax = axes[0, 0]
    marked = _moments(moments or ())
    kinds = list(dict.fromkeys(kind for _, kind in marked))
    n_lines = 0 if hue is None else da.sizes[hue]
    palette = series_colors(n_lines + len(kinds), ordered=False)  # one colour per series
    if hue is None:
        ax.plot(x, values, color="black", linewidth=1.2, label=str(da.name or LOSS))
    else:
        for i, lab in enumerate(labels_of(da, hue)):
            ax.plot(x, values[:, i], linewidth=1.2, label=f"{hue} {lab}", color=palette[i])
    colours = dict(zip(kinds, palette[n_lines:], strict=True))
    seen: set[str] = set()
    for s, kind in marked:
        label = kind if kind not in seen else None
        seen.add(kind)
        ax.axvline(s, color=colours[kind], linestyle="--", alpha=0.7, label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(f"training {STEP}")
    ax.set_ylabel(str(da.name or LOSS))
    ax.set_title(with_context("Training loss", da))
    ax.grid(True, alpha=0.3)
    legend_outside(ax)
    return finish(fig, path, dpi=dpi)
