"""Weight figures: convolution filter grids, per-parameter change bars and change heatmaps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ndt_store._dims import FEATURE, PARAMETER
from ndt_store.errors import InputError
from ndt_store.plot._common import (
    DEFAULT_DPI,
    PathLike,
    as_numpy,
    finish,
    labels_of,
    legend_outside,
    new_figure,
    series_colors,
    set_ticks,
    shorten_labels,
    with_context,
)

ChannelMode = Literal["auto", "rgb", "mean", "all"]


def _filters(weights: Any) -> xr.DataArray:
    """Weights as a DataArray ``(out, in, y, x)``; a 3-D ``(out, y, x)`` gets a unit ``in``."""
    if isinstance(weights, xr.DataArray):
        da = weights
    else:
        arr = as_numpy(weights)
        da = xr.DataArray(arr)
        if arr.ndim >= 1:
            da = da.rename({da.dims[0]: FEATURE})
    if da.ndim == 3:
        da = da.expand_dims(_in_dim(da), axis=1)
    if da.ndim != 4:
        raise InputError(
            "filters must be 4-D [out, in, height, width] (or 3-D [out, height, width])",
            field="weights",
            value=tuple(da.shape),
        )
    return da


def _in_dim(da: xr.DataArray) -> str:
    name = f"{da.dims[0]}_in"
    return name if name not in da.dims else f"{name}_"


def filter_grid(
    weights: Any,
    *,
    num_filters: int = 16,
    channels: ChannelMode = "auto",
    path: PathLike | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Grid of convolution filters ``[out, in, height, width]``, one panel per output filter.

    Parameters
    ----------
    weights
        DataArray or raw array, dims taken by position: output filter, input channel,
        height, width. A 3-D array is one input channel. The first dim's name and
        coordinate values title the panels.
    num_filters
        Show the first ``num_filters`` output filters.
    channels
        How input channels are shown. ``"auto"``: one channel as is; three as an RGB
        colour image; otherwise their mean. ``"rgb"`` requires three channels (each
        filter min-max scaled to [0, 1]); ``"mean"`` averages channels; ``"all"``
        draws one row of panels per filter, one panel per input channel (at most 8).
    path, dpi
        Save here (format by extension, PNG when none) and still return the figure.

    Returns
    -------
    matplotlib.figure.Figure
        Single-channel panels share one symmetric diverging colour scale.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.random.default_rng(0).normal(size=(4, 3, 5, 5))
    >>> fig = filter_grid(w)  # 3 input channels: drawn as RGB
    >>> fig.axes[0].get_title()
    'feature 0'
    """
    da = _filters(weights)
    out_dim, in_dim = da.dims[0], da.dims[1]
    n_in = da.sizes[in_dim]
    mode = channels
    if mode == "auto":
        mode = "rgb" if n_in == 3 else ("all" if n_in == 1 else "mean")
    if mode == "rgb" and n_in != 3:
        raise InputError("channels='rgb' needs 3 input channels", field="weights", value=n_in)
    if mode not in ("rgb", "mean", "all"):
        raise InputError("unknown channel mode", field="channels", value=channels)
    n = min(int(num_filters), da.sizes[out_dim])
    if n < 1:
        raise InputError("no filters to show", field="num_filters", value=num_filters)
    shown = da.isel({out_dim: slice(0, n)})
    values = np.asarray(shown.values, dtype=float)  # (n, in, h, w)
    names = labels_of(shown, out_dim)

    if mode == "all":
        n_ch = min(n_in, 8)
        values = values[:, :n_ch]
        ncols, nrows = n_ch, n
        panels: list[tuple[int, int | None]] = [(i, c) for i in range(n) for c in range(n_ch)]
        if n_ch == 1:  # a single channel: lay filters out on a square grid instead
            ncols = int(np.ceil(np.sqrt(n)))
            nrows = int(np.ceil(n / ncols))
            panels = [(i, 0) for i in range(n)]
    else:
        ncols = int(np.ceil(np.sqrt(n)))
        nrows = int(np.ceil(n / ncols))
        panels = [(i, None) for i in range(n)]

    size = 1.6
    fig, axes = new_figure((size * ncols + 1.2, size * nrows + 0.6), nrows=nrows, ncols=ncols)
    flat = axes.ravel()
    lim = float(np.nanmax(np.abs(values))) or 1.0
    im = None
    for ax, (i, c) in zip(flat, panels, strict=False):
        if mode == "rgb":
            img = np.moveaxis(values[i], 0, -1)
            lo, hi = np.nanmin(img), np.nanmax(img)
            ax.imshow((img - lo) / (hi - lo) if hi > lo else np.zeros_like(img))
        else:
            img = values[i].mean(axis=0) if mode == "mean" else values[i, c]
            im = ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        title = f"{out_dim} {names[i]}"
        if c is not None and mode == "all" and values.shape[1] > 1:
            title += f", {in_dim} {c}"
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in flat[len(panels) :]:
        ax.set_axis_off()
    how = {
        "rgb": "input channels as RGB, each filter scaled to [0, 1]",
        "mean": f"mean over {n_in} input channels",
        "all": f"{in_dim} shown separately" if n_in > 1 else "single input channel",
    }[mode]
    if mode == "all" and n_in > 8:
        how += f" (first 8 of {n_in})"
    fig.suptitle(with_context(f"Filters ({how})", da), fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=axes, label="weight", shrink=0.8)
    return finish(fig, path, dpi=dpi)


def _changes(changes: Any) -> xr.DataArray | dict[str, xr.DataArray]:
    if isinstance(changes, xr.DataArray):
        return changes
    if isinstance(changes, Mapping):
        if not changes:
            raise InputError("no parameters to plot", field="changes", value=changes)
        first = next(iter(changes.values()))
        names = [str(k) for k in changes]
        if isinstance(first, Mapping):
            quantities = list(first)
            return {
                str(q): xr.DataArray(
                    np.array([float(changes[k][q]) for k in changes]),
                    dims=(PARAMETER,),
                    coords={PARAMETER: names},
                    name=str(q),
                )
                for q in quantities
            }
        vals = np.array([float(as_numpy(v)) for v in changes.values()])
        return xr.DataArray(vals, dims=(PARAMETER,), coords={PARAMETER: names})
    da = xr.DataArray(as_numpy(changes))
    return da.rename({da.dims[0]: PARAMETER}) if da.ndim else da


def weight_change_bars(
    changes: Any,
    *,
    ylabel: str | None = None,
    path: PathLike | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Bar chart of a per-parameter weight change.

    Parameters
    ----------
    changes
        DataArray over ``parameter`` (bars labeled by its coordinate), optionally with
        one more dim drawn as grouped bars; a ``{name: value}`` dict; or a
        ``{name: {quantity: value}}`` dict (as returned per parameter by the legacy
        weight-change measure), drawn as one panel per quantity, each on its own scale.
    ylabel
        y-axis label; default the array's name.
    path, dpi
        Save here (format by extension, PNG when none) and still return the figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = weight_change_bars({"fc.weight": 0.5, "fc.bias": 0.1})
    >>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
    ['fc.weight', 'fc.bias']
    """
    data = _changes(changes)
    panels = data if isinstance(data, dict) else {data.name or "": data}
    for q, da in panels.items():
        if PARAMETER not in da.dims or da.ndim > 2:
            raise InputError(
                f"changes must have dims ({PARAMETER!r},) or ({PARAMETER!r}, <one more>)",
                field=f"changes[{q!r}]" if q else "changes",
                value=da.dims,
            )
    n_par = next(iter(panels.values())).sizes[PARAMETER]
    width = min(max(5.0, 0.3 * n_par + 2.0), 20.0)
    fig, axes = new_figure((width, 3.6 * len(panels)), nrows=len(panels), ncols=1)
    for ax, (q, da) in zip(axes[:, 0], panels.items(), strict=True):
        group = next((d for d in da.dims if d != PARAMETER), None)
        da = da.transpose(PARAMETER, ...)
        values = np.asarray(da.values, dtype=float)
        x = np.arange(da.sizes[PARAMETER])
        if group is None:
            ax.bar(x, values, color="tab:blue")
        else:
            k = da.sizes[group]
            w = 0.8 / k
            colours = series_colors(k, ordered=True)
            for j, lab in enumerate(labels_of(da, group)):
                ax.bar(
                    x - 0.4 + w * (j + 0.5), values[:, j], width=w, label=f"{group} {lab}",
                    color=colours[j],
                )  # fmt: skip
            legend_outside(ax)
        short, key = shorten_labels(labels_of(da, PARAMETER))
        set_ticks(ax, "x", short, max_ticks=60)
        if key:
            ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel(ylabel or str(da.name or q or "change"))
        ax.set_title(with_context(f"Weight change per {PARAMETER}", da), fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    return finish(fig, path, dpi=dpi)


def weight_change_heatmap(
    changes: xr.DataArray,
    *,
    log: bool | None = None,
    path: PathLike | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Heatmap of a weight change per parameter (rows) and interval (columns).

    Reads at real sizes: a row per parameter (the figure grows with them, tick
    labels thinned past 60), long names shortened with a key, one sequential
    colour scale with a colour bar instead of one colour per interval.

    Parameters
    ----------
    changes
        DataArray over ``parameter`` and one more dim (snapshot intervals or
        steps, in order); NaN cells (a parameter absent from an interval) are
        grey.
    log
        Logarithmic colour scale; default when the positive values span more
        than two decades (relative changes of zero-initialised biases dwarf
        the rest).
    path, dpi
        Save here (format by extension, PNG when none) and still return the figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.ones((2, 3)), dims=("parameter", "interval"),
    ...                   coords={"parameter": ["a.weight", "a.bias"]}, name="relative change")
    >>> [t.get_text() for t in weight_change_heatmap(da).axes[0].get_yticklabels()]
    ['a.weight', 'a.bias']
    """
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize

    if not isinstance(changes, xr.DataArray) or PARAMETER not in changes.dims or changes.ndim != 2:
        raise InputError(
            f"changes must be a DataArray over ({PARAMETER!r}, <intervals>)",
            field="changes",
            value=getattr(changes, "dims", type(changes).__name__),
        )
    other = next(d for d in changes.dims if d != PARAMETER)
    da = changes.transpose(PARAMETER, other)
    values = np.asarray(da.values, dtype=float)
    n_par, n_int = values.shape
    names, key = shorten_labels(labels_of(da, PARAMETER))
    positive = values[np.isfinite(values) & (values > 0)]
    if log is None:
        log = positive.size > 1 and positive.max() > 100 * positive.min()
    norm = (
        LogNorm(vmin=positive.min(), vmax=positive.max())
        if log and positive.size
        else Normalize(vmin=np.nanmin(values) if np.isfinite(values).any() else 0.0)
    )
    label_w = 0.075 * max(map(len, names), default=4)
    height = min(max(3.6, 0.17 * n_par + 2.0), 24.0)
    width = min(max(6.0, 0.32 * n_int + label_w + 2.5), 20.0)
    fig, axes = new_figure((width, height))
    ax = axes[0, 0]
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    mesh = ax.pcolormesh(
        np.ma.masked_invalid(values if not log else np.where(values > 0, values, np.nan)),
        cmap=cmap,
        norm=norm,
    )
    bar = fig.colorbar(mesh, ax=ax)
    bar.set_label(str(da.name or "change"), fontsize=9)
    if not log:
        bar.formatter.set_useOffset(False)  # type: ignore[attr-defined]
    ax.set_ylim(n_par, 0)  # first parameter on top
    set_ticks(ax, "y", names, max_ticks=60)
    ax.set_yticks(ax.get_yticks() + 0.5, [t.get_text() for t in ax.get_yticklabels()])
    set_ticks(ax, "x", labels_of(da, other), max_ticks=25)
    ax.set_xticks(ax.get_xticks() + 0.5, [t.get_text() for t in ax.get_xticklabels()])
    longest = max((len(t.get_text()) for t in ax.get_xticklabels()), default=0)
    for tick in ax.get_xticklabels():
        tick.set_rotation(90 if longest > 3 else 0)
    ax.tick_params(axis="y", labelsize=7 if n_par > 30 else 8)
    ax.set_xlabel(str(other) + (f"\n({key})" if key else ""), fontsize=9)
    ax.set_ylabel(PARAMETER)
    scale = " (log colour scale)" if log else ""
    title = f"{da.name or 'Weight change'} per {PARAMETER}{scale}"
    ax.set_title(with_context(title, da), fontsize=10)
    return finish(fig, path, dpi=dpi)
