"""Attention figures: one head's query × key pattern, before/after head grids, entropy curves."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from ndt_store._dims import HEAD, KEY, QUERY, SAMPLE, STEP
from ndt_store.errors import InputError
from ndt_store.plot._common import (
    DEFAULT_DPI,
    PathLike,
    as_dataarray,
    finish,
    fmt,
    labels_of,
    legend_outside,
    new_figure,
    numeric_coord,
    require_dims,
    series_colors,
    set_ticks,
    with_context,
)

ATTENTION_DIMS = (SAMPLE, HEAD, QUERY, KEY)
"""Dims given to a raw attention array ``[batch, heads, seq, seq]``."""


def _attention(attn: Any, what: str) -> xr.DataArray:
    """Label a raw attention array, check dims, and average over the probe batch."""
    da = as_dataarray(attn, ATTENTION_DIMS, what=what)
    require_dims(da, (HEAD, QUERY, KEY), optional=(SAMPLE,), what=what)
    if SAMPLE in da.dims:
        da = da.mean(SAMPLE, keep_attrs=True)
    return da.transpose(HEAD, QUERY, KEY)


def _select_head(da: xr.DataArray, head: Hashable, what: str) -> xr.DataArray:
    if HEAD in da.coords:
        if head not in da.indexes[HEAD]:
            raise InputError(
                f"head not found; available heads are {labels_of(da, HEAD)}",
                field=what,
                value=head,
            )
        return da.sel({HEAD: head})
    if not isinstance(head, int | np.integer) or not 0 <= int(head) < da.sizes[HEAD]:
        raise InputError(f"head must be an integer below {da.sizes[HEAD]}", field=what, value=head)
    return da.isel({HEAD: int(head)}).assign_coords({HEAD: int(head)})


def _token_labels(da: xr.DataArray, dim: Hashable, tokens: Sequence[str] | None) -> list[str]:
    if tokens is None:
        return labels_of(da, dim)
    tokens = [str(t) for t in tokens]
    if len(tokens) != da.sizes[dim]:
        raise InputError(
            f"got {len(tokens)} tokens for a sequence of length {da.sizes[dim]}",
            field="tokens",
            value=tokens,
        )
    return tokens


def attention_pattern(
    attn: Any,
    *,
    head: Hashable = 0,
    tokens: Sequence[str] | None = None,
    path: PathLike | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Heatmap of one head's attention (query rows × key columns), averaged over samples.

    Parameters
    ----------
    attn
        DataArray with dims ``(head, query, key)`` and optionally ``sample`` (averaged
        for display), or a raw ``[batch, heads, seq, seq]`` array.
    head
        Label of the head (its position when ``head`` has no coordinate).
    tokens
        Tick labels for the sequence positions; default: the ``query``/``key``
        coordinate values.
    path
        Save here (format by extension, PNG when none) and still return the figure.
    dpi
        Resolution of a saved raster image.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> a = np.full((2, 3, 4, 4), 0.25)
    >>> fig = attention_pattern(a, head=1, tokens=["a", "b", "c", "d"])
    >>> fig.axes[0].get_title()
    'Attention pattern, head 1'
    """
    da = _select_head(_attention(attn, "attn"), head, "head")
    ylabels = _token_labels(da, QUERY, tokens)
    xlabels = _token_labels(da, KEY, tokens)
    values = np.asarray(da.values)

    fig, axes = new_figure((6.4, 5.2))
    ax = axes[0, 0]
    im = ax.imshow(values, cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="attention weight")
    set_ticks(ax, "x", xlabels)
    set_ticks(ax, "y", ylabels)
    ax.set_xlabel(f"{KEY} token")
    ax.set_ylabel(f"{QUERY} token")
    da_ctx = da.drop_vars(HEAD)
    ax.set_title(with_context(f"Attention pattern, {HEAD} {fmt(da[HEAD].values[()])}", da_ctx))
    return finish(fig, path, dpi=dpi)


def attention_heads_comparison(
    before: Any,
    after: Any,
    *,
    heads: Sequence[Hashable] | int | None = None,
    path: PathLike | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Two-row grid of head patterns, before (top) and after (bottom), on one colour scale.

    Parameters
    ----------
    before, after
        Attention as for :func:`attention_pattern` (``sample`` is averaged). A scalar
        ``step`` coordinate, if present, labels the row.
    heads
        Head labels to show, or an int ``n`` for the first ``n`` heads; default all.
    path, dpi
        As for :func:`attention_pattern`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> a = np.full((1, 2, 3, 3), 1 / 3)
    >>> len(attention_heads_comparison(a, a).axes)  # 2 × 2 panels + colour bar
    5
    """
    b = _attention(before, "before")
    a = _attention(after, "after")
    if b.sizes[QUERY] != a.sizes[QUERY] or b.sizes[KEY] != a.sizes[KEY]:
        raise InputError(
            "before and after must have the same query/key lengths",
            field="after",
            value=(dict(b.sizes), dict(a.sizes)),
        )
    if heads is None:
        chosen: list[Hashable] = (
            list(b[HEAD].values) if HEAD in b.coords else list(range(b.sizes[HEAD]))
        )
    elif isinstance(heads, int | np.integer):
        all_heads = list(b[HEAD].values) if HEAD in b.coords else list(range(b.sizes[HEAD]))
        chosen = all_heads[: int(heads)]
    else:
        chosen = list(heads)
    if not chosen:
        raise InputError("no heads to show", field="heads", value=heads)
    rows = []
    for name, da in (("before", b), ("after", a)):
        sel = [_select_head(da, h, "heads") for h in chosen]
        stacked = xr.concat(sel, dim=HEAD, coords="minimal", compat="override")
        rows.append((name, da, np.asarray(stacked.values)))  # one compute per input
    vmin = min(float(np.nanmin(r[2])) for r in rows)
    vmax = max(float(np.nanmax(r[2])) for r in rows)

    n = len(chosen)
    fig, axes = new_figure((2.6 * n + 1.0, 5.4), nrows=2, ncols=n)
    im: AxesImage | None = None
    for r, (name, da, stack) in enumerate(rows):
        ctx = da.drop_vars([c for c in da.coords if c == HEAD or da[c].ndim > 0])
        for c, h in enumerate(chosen):
            ax = axes[r, c]
            im = ax.imshow(stack[c], cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{HEAD} {fmt(h)}, {name}", fontsize=10)
            if c == 0:
                ax.set_ylabel(with_context(name, ctx))
    assert im is not None  # at least one head was drawn
    fig.colorbar(im, ax=axes, label="attention weight (shared scale)", shrink=0.8)
    return finish(fig, path, dpi=dpi)


def entropy_evolution(
    entropy: Any,
    *,
    jump_steps: Sequence[float] | None = None,
    path: PathLike | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Attention entropy over training: one line per head (or per label of the second dim).

    Parameters
    ----------
    entropy
        DataArray over ``step`` (x axis, its coordinate gives the training steps),
        optionally with one more dim (usually ``head``) drawn as separate lines; or a
        raw 1-D array over steps.
    jump_steps
        Training steps to mark with dashed vertical lines (one legend entry).
    path, dpi
        As for :func:`attention_pattern`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> e = xr.DataArray(np.ones((3, 2)), dims=("step", "head"),
    ...                  coords={"step": [0, 5, 10], "head": [0, 1]})
    >>> [t.get_text() for t in entropy_evolution(e).axes[0].get_legend().get_texts()]
    ['head 0', 'head 1']
    """
    da = as_dataarray(entropy, (STEP,), what="entropy")
    if STEP not in da.dims or da.ndim > 2:
        raise InputError(
            f"entropy must have dims ({STEP!r},) or ({STEP!r}, <one more>)",
            field="entropy",
            value=da.dims,
        )
    hue = next((d for d in da.dims if d != STEP), None)
    da = da.transpose(STEP, ...) if hue is None else da.transpose(STEP, hue)
    x = numeric_coord(da, STEP)
    values = np.asarray(da.values)

    fig, axes = new_figure((7.0, 4.2))
    ax = axes[0, 0]
    n_lines = 1 if hue is None else da.sizes[hue]
    palette = series_colors(n_lines + 1, ordered=False)  # the last colour marks jumps
    if hue is None:
        ax.plot(x, values, linewidth=2, label=da.name or "attention entropy", color=palette[0])
    else:
        for i, lab in enumerate(labels_of(da, hue)):
            ax.plot(x, values[:, i], linewidth=1.5, label=f"{hue} {lab}", color=palette[i])
    for i, s in enumerate(jump_steps or ()):
        ax.axvline(
            float(s), color=palette[-1], linestyle="--", alpha=0.6,
            label="jump" if i == 0 else None,
        )  # fmt: skip
    ax.set_xlabel(f"training {STEP}")
    ax.set_ylabel(str(da.attrs.get("units", "entropy")))
    ax.set_title(with_context("Attention entropy evolution", da))
    ax.grid(True, alpha=0.3)
    legend_outside(ax)
    return finish(fig, path, dpi=dpi)
