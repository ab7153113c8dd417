"""Small multiples: one panel per experiment, rows grouped by architecture."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ndt_store._dims import ARCH_NAME, EXPERIMENT, LAYER, STABLE_RANK, STEP
from ndt_store.errors import InputError
from ndt_store.plot._common import (
    DEFAULT_DPI,
    PathLike,
    as_dataarray,
    finish,
    fmt,
    labels_of,
    new_figure,
    numeric_coord,
    require_dims,
)


def experiment_overview(
    data: xr.Dataset | xr.DataArray,
    metric: str = STABLE_RANK,
    *,
    sharey: bool = False,
    path: PathLike | None = None,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """One small line plot per experiment (a line per layer), one row per architecture.

    Parameters
    ----------
    data
        Dataset holding ``metric``, or a DataArray, over ``(experiment, step, layer)``
        (a raw 3-D array is given those dims),
        with an ``arch_name`` coordinate on ``experiment`` (rows are its sorted values;
        without it all experiments share one row). Layers that are all NaN in an
        experiment (absent from its architecture) are not drawn.
    metric
        Variable to draw (default ``stable_rank``).
    sharey
        One y scale for all panels (default: each panel scales to its own data).
    path, dpi
        Save here (format by extension, PNG when none) and still return the figure.

    Returns
    -------
    matplotlib.figure.Figure
        Line colour encodes each layer's position among the experiment's layers, in the
        order of the ``layer`` coordinate (which is network depth only if the coordinate
        is ordered by depth).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.ones((2, 3, 2)), dims=("experiment", "step", "layer"),
    ...                   coords={"experiment": ["a_mnist", "b_mnist"], "step": [0, 5, 10],
    ...                           "arch_name": ("experiment", ["a", "b"])})
    >>> [ax.get_title() for ax in experiment_overview(da).axes[:2]]
    ['a_mnist', 'b_mnist']
    """
    if isinstance(data, xr.Dataset):
        if metric not in data.data_vars:
            raise InputError(
                f"variable not in the dataset; available: {sorted(map(str, data.data_vars))}",
                field="metric",
                value=metric,
            )
        da = data[metric]
    else:
        da = as_dataarray(data, (EXPERIMENT, STEP, LAYER), what="data")
    require_dims(da, (EXPERIMENT, STEP, LAYER), what=str(da.name or metric))
    da = da.transpose(EXPERIMENT, STEP, LAYER)
    experiments = labels_of(da, EXPERIMENT)
    if ARCH_NAME in da.coords and da[ARCH_NAME].dims == (EXPERIMENT,):
        archs = [fmt(a) for a in np.asarray(da[ARCH_NAME].values)]
    else:
        archs = [""] * len(experiments)
    groups: dict[str, list[int]] = {}
    for i, arch in sorted(enumerate(archs), key=lambda t: (t[1], experiments[t[0]])):
        groups.setdefault(arch, []).append(i)
    values = np.asarray(da.values, dtype=float)  # one compute for the whole figure
    steps = numeric_coord(da, STEP)
    layers = labels_of(da, LAYER)

    nrows = len(groups)
    sizes = [len(v) for v in groups.values()]
    ncols = max(len(v) for v in groups.values())
    fig, axes = new_figure(
        (max(6.0, 2.8 * ncols + 1.4), 2.1 * nrows + 0.6), nrows=nrows, ncols=ncols, sharey=sharey
    )
    cmap = colormaps["viridis"]
    for r, (arch, members) in enumerate(groups.items()):
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(members):
                ax.set_axis_off()
                continue
            i = members[c]
            present = [j for j in range(len(layers)) if not np.all(np.isnan(values[i, :, j]))]
            for k, j in enumerate(present):
                depth = k / max(1, len(present) - 1)
                ax.plot(steps, values[i, :, j], color=cmap(depth), linewidth=0.9, label=layers[j])
            ax.set_title(experiments[i], fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
            if c == 0:
                ax.set_ylabel(
                    f"{arch}\n{da.name or metric}" if arch else str(da.name or metric), fontsize=8
                )
            if r == nrows - 1 or c >= sizes[r + 1]:  # no panel below this one
                ax.set_xlabel(STEP, fontsize=8)
    fig.colorbar(
        ScalarMappable(norm=Normalize(0, 1), cmap=cmap),
        ax=axes,
        label=f"position in {LAYER} coordinate (0 = first)",
        shrink=0.8,
    )
    fig.suptitle(f"{da.name or metric} per experiment, grouped by {ARCH_NAME}", fontsize=11)
    return finish(fig, path, dpi=dpi)
