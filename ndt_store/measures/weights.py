"""Weight-change measurements between checkpoints.

The store hands one DataArray per parameter with dims ``(step, <param dims>)``,
e.g. ``("step", "out", "in")``. :func:`weight_change` compares two arrays;
:func:`consecutive_weight_change` does every consecutive pair of checkpoints in
one vectorized call and :func:`weight_change_between` any one pair. Comparing
every step against a reference (say, initialization) is plain broadcasting:
``weight_change(w.sel(step=0, drop=True), w, dims=("out", "in"))``.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import xarray as xr

from ndt_store._dims import STEP
from ndt_store._kernels import weights as _k
from ndt_store.errors import InputError
from ndt_store.measures.similarity import Dims, as_dims, cosine_similarity

__all__ = ["consecutive_weight_change", "weight_change", "weight_change_between"]

WEIGHT_CHANGE_VARIABLES: tuple[str, ...] = (
    "l2_norm",
    "relative_change",
    "max_change",
    "mean_change",
    "cosine_similarity",
)
"""Variables of the Dataset :func:`weight_change` returns (the legacy dict's keys)."""


def weight_change(before: xr.DataArray, after: xr.DataArray, *, dims: Dims = None) -> xr.Dataset:
    """How much ``after`` differs from ``before``, reduced over ``dims``.

    With ``delta = after − before``:

    * ``l2_norm`` = ``‖delta‖``
    * ``relative_change`` = ``‖delta‖ / ‖before‖``; where ``‖before‖ == 0`` it is
      0.0 if ``delta`` is 0 too and ``inf`` otherwise (no warning)
    * ``max_change`` = ``max |delta|``, ``mean_change`` = ``mean |delta|``
    * ``cosine_similarity`` of ``before`` and ``after`` (0.0 for a zero norm)

    Parameters
    ----------
    before, after
        Weights; they broadcast by dim name (a ``before`` without ``step``
        against an ``after`` with ``step`` compares every step with it).
    dims
        Dim(s) to reduce over; ``None`` reduces over every dim.

    Returns
    -------
    xarray.Dataset
        The five variables above over the dims not reduced.

    Examples
    --------
    >>> b = xr.DataArray([3.0, 4.0], dims="in")
    >>> ch = weight_change(b, 2 * b)
    >>> float(ch["l2_norm"]), float(ch["relative_change"]), float(ch["cosine_similarity"])
    (5.0, 1.0, 1.0)
    """
    red = as_dims(dims, before, after)
    delta = after - before
    red_d = [d for d in red if d in delta.dims]
    red_b = [d for d in red if d in before.dims]
    abs_delta = abs(delta)
    l2 = np.sqrt(xr.dot(delta, delta, dim=red_d))
    before_norm = np.sqrt(xr.dot(before, before, dim=red_b))
    rel = xr.apply_ufunc(
        _k.relative_change,
        l2,
        before_norm,
        dask="parallelized",
        output_dtypes=[np.result_type(l2.dtype, before_norm.dtype)],
    )
    reduced = ", ".join(map(str, red))
    ds = xr.Dataset(
        {
            "l2_norm": l2.assign_attrs(long_name="L2 norm of the change"),
            "relative_change": rel.assign_attrs(
                long_name="L2 norm of the change over L2 norm before",
                zero_norm_before="0.0 if unchanged, else inf",
            ),
            "max_change": abs_delta.max(red_d, skipna=False).assign_attrs(
                long_name="largest absolute change"
            ),
            "mean_change": abs_delta.mean(red_d, skipna=False).assign_attrs(
                long_name="mean absolute change"
            ),
            "cosine_similarity": cosine_similarity(before, after, dims=red),
        }
    )
    return ds.assign_attrs(description="weight change", reduced_dims=reduced)


def _param_dims(w: xr.DataArray, dim: Hashable, dims: Dims) -> tuple[Hashable, ...]:
    if dim not in w.dims:
        raise InputError(f"weights have no dim {dim!r} (dims {w.dims!r})", field="dim", value=dim)
    if dims is None:
        return tuple(d for d in w.dims if d != dim)
    return as_dims(dims, w)


def consecutive_weight_change(
    w: xr.DataArray, *, dim: Hashable = STEP, dims: Dims = None
) -> xr.Dataset:
    """:func:`weight_change` of every consecutive pair of checkpoints along ``dim``.

    Vectorized: one reduction over the whole array, no loop over steps.

    Parameters
    ----------
    w
        One parameter over checkpoints, e.g. ``(step, out, in)``.
    dim
        Checkpoint dim.
    dims
        Dims to reduce over; ``None`` means every dim except ``dim``.

    Returns
    -------
    xarray.Dataset
        As :func:`weight_change`, with ``dim`` of length ``n − 1`` labeled by the
        later checkpoint of each pair and a coordinate ``<dim>_before`` holding
        the earlier one.

    Examples
    --------
    >>> w = xr.DataArray([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]], dims=("step", "in"),
    ...                  coords={"step": [0, 10, 20]})
    >>> ch = consecutive_weight_change(w)
    >>> ch["step"].values.tolist(), ch["step_before"].values.tolist()
    ([10, 20], [0, 10])
    >>> ch["l2_norm"].values.tolist()
    [1.0, 0.0]
    """
    red = _param_dims(w, dim, dims)
    after = w.isel({dim: slice(1, None)})
    before = w.isel({dim: slice(None, -1)})
    if dim in w.coords:
        before = before.assign_coords({dim: after[dim].data})
    out = weight_change(before, after, dims=red)
    if dim in w.coords:
        out = out.assign_coords({f"{dim}_before": (dim, w[dim].data[:-1])})
    return out


def weight_change_between(
    w: xr.DataArray, start: object, end: object, *, dim: Hashable = STEP, dims: Dims = None
) -> xr.Dataset:
    """:func:`weight_change` from checkpoint ``start`` to checkpoint ``end`` (labels on ``dim``).

    Returns
    -------
    xarray.Dataset
        As :func:`weight_change`, with scalar coordinates ``<dim>_before`` and
        ``<dim>_after``.

    Examples
    --------
    >>> w = xr.DataArray([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]], dims=("step", "in"),
    ...                  coords={"step": [0, 10, 20]})
    >>> float(weight_change_between(w, 0, 20)["relative_change"])
    1.0
    """
    red = _param_dims(w, dim, dims)
    before = w.sel({dim: start}, drop=True)
    after = w.sel({dim: end}, drop=True)
    return weight_change(before, after, dims=red).assign_coords(
        {f"{dim}_before": start, f"{dim}_after": end}
    )
