"""Activation figures: feature × sample heatmaps and feature × class selectivity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ndt_store._dims import CLASS, FEATURE, LABEL, SAMPLE
from ndt_store.errors import InputError
from ndt_store.plot._common import (
    DEFAULT_DPI,
    PathLike,
    as_dataarray,
    finish,
    fmt,
    labels_of,
    new_figure,
    require_dims,
    set_ticks,
    with_context,
)


def activation_heatmap(
    act: Any,
    *,
    labels: Sequence[Any] | None = None,
    path: PathLike | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Heatmap of activations: features (rows) × samples (columns).

    Parameters
    ----------
    act
        DataArray with dims ``(sample, feature)``, or a raw ``[samples, features]`` array.
    labels
        Per-sample tick labels. Default: the ``label`` coordinate on ``sample`` (the
        probe batch's class labels) when present, else the ``sample`` coordinate.
    path, dpi
        Save here (format by extension, PNG when none) and still return the figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> a = xr.DataArray(np.eye(3), dims=("sample", "feature"),
    ...                  coords={"label": ("sample", [7, 2, 1])})
    >>> [t.get_text() for t in activation_heatmap(a).axes[0].get_xticklabels()]
    ['7', '2', '1']
    """
    da = as_dataarray(act, (SAMPLE, FEATURE), what="act")
    require_dims(da, (SAMPLE, FEATURE), what="act")
    da = da.transpose(FEATURE, SAMPLE)
    if labels is not None:
        xlabels = [fmt(v) for v in labels]
        if len(xlabels) != da.sizes[SAMPLE]:
            raise InputError(
                f"got {len(xlabels)} labels for {da.sizes[SAMPLE]} samples",
                field="labels",
                value=list(labels),
            )
        xname = LABEL
    elif LABEL in da.coords and da[LABEL].dims == (SAMPLE,):
        xlabels = [fmt(v) for v in np.asarray(da[LABEL].values)]
        xname = LABEL
    else:
        xlabels = labels_of(da, SAMPLE)
        xname = SAMPLE
    values = np.asarray(da.values, dtype=float)

    fig, axes = new_figure((8.0, 5.0))
    ax = axes[0, 0]
    im = ax.imshow(values, cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=f"activation ({da.name})" if da.name else "activation")
    set_ticks(ax, "x", xlabels, max_ticks=40)
    set_ticks(ax, "y", labels_of(da, FEATURE))
    ax.set_xlabel(SAMPLE if xname == SAMPLE else f"{SAMPLE} ({LABEL})")
    ax.set_ylabel(FEATURE)
    ax.set_title(with_context("Activation patterns", da))
    return finish(fig, path, dpi=dpi)


def class_selectivity_heatmap(
    selectivity: Any,
    *,
    sort_features: bool = False,
    path: PathLike | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Heatmap of class selectivity: features (rows) × classes (columns).

    Parameters
    ----------
    selectivity
        DataArray with dims ``(feature, class)`` (e.g. mean activation per class), or a
        raw ``[features, classes]`` array.
    sort_features
        Order rows by each feature's preferred class (the argmax), then by the size of
        that preference, so class-selective blocks line up on the diagonal.
    path, dpi
        Save here (format by extension, PNG when none) and still return the figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> s = xr.DataArray(np.eye(3), dims=("feature", "class"),
    ...                  coords={"class": ["cat", "dog", "eel"]})
    >>> [t.get_text() for t in class_selectivity_heatmap(s).axes[0].get_xticklabels()]
    ['cat', 'dog', 'eel']
    """
    da = as_dataarray(selectivity, (FEATURE, CLASS), what="selectivity")
    require_dims(da, (FEATURE, CLASS), what="selectivity")
    da = da.transpose(FEATURE, CLASS)
    values = np.asarray(da.values, dtype=float)
    ylabels = labels_of(da, FEATURE)
    if sort_features:
        best = np.nanargmax(values, axis=1)
        order = np.lexsort((-np.nanmax(values, axis=1), best))
        values = values[order]
        ylabels = [ylabels[i] for i in order]

    fig, axes = new_figure((max(4.5, 0.45 * da.sizes[CLASS] + 2.5), 5.5))
    ax = axes[0, 0]
    im = ax.imshow(values, cmap="magma", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=str(da.name or "selectivity"))
    set_ticks(ax, "x", labels_of(da, CLASS))
    set_ticks(ax, "y", ylabels)
    ax.set_xlabel(CLASS)
    ax.set_ylabel(FEATURE + (" (sorted by preferred class)" if sort_features else ""))
    ax.set_title(with_context("Class selectivity", da))
    return finish(fig, path, dpi=dpi)
