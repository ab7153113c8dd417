"""Similarity between labeled arrays: cosine similarity and linear CKA.

Both reduce over named dims and keep (broadcast) every other dim, so one call
compares e.g. every layer or every step at once. Results stay lazy on dask input.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np
import xarray as xr

from ndt_store._dims import SAMPLE
from ndt_store._kernels import similarity as _k
from ndt_store._kernels.dimensionality import flatten_features
from ndt_store.errors import InputError

__all__ = ["cosine_similarity", "linear_cka"]

Dims = Hashable | Iterable[Hashable] | None
"""One dim name, several, or ``None`` (meaning: every dim)."""


def as_dims(dims: Dims, *arrays: xr.DataArray) -> tuple[Hashable, ...]:
    """Normalize a dims argument; ``None`` means every dim of ``arrays`` (first-seen order).

    Raises :class:`~ndt_store.errors.InputError` when a named dim is in none of them.
    """
    present: list[Hashable] = []
    for arr in arrays:
        present.extend(d for d in arr.dims if d not in present)
    if dims is None:
        return tuple(present)
    names = (dims,) if isinstance(dims, str) or not isinstance(dims, Iterable) else tuple(dims)
    missing = [d for d in names if d not in present]
    if missing:
        raise InputError(
            f"dims {missing!r} are not in the input (dims {tuple(present)!r})",
            field="dims",
            value=dims,
        )
    return names


def dims_after(arr: xr.DataArray, dim: Hashable) -> tuple[Hashable, ...]:
    """The dims that follow ``dim`` in ``arr``'s order (the feature dims of a stored layout)."""
    if dim not in arr.dims:
        raise InputError(
            f"dim {dim!r} is not in the input (dims {arr.dims!r})", field="dim", value=dim
        )
    return tuple(arr.dims[arr.dims.index(dim) + 1 :])


def _float_dtype(*arrays: xr.DataArray) -> np.dtype:
    return np.result_type(*(a.dtype for a in arrays), np.float32)


def cosine_similarity(a: xr.DataArray, b: xr.DataArray, *, dims: Dims = None) -> xr.DataArray:
    """Cosine similarity of ``a`` and ``b`` over ``dims``; every other dim is kept.

    ``Σab / (‖a‖ ‖b‖)``, clipped to ``[-1, 1]``; 0.0 where either norm is 0 (the
    legacy convention).

    Parameters
    ----------
    a, b
        Arrays to compare; they broadcast against each other by dim name.
    dims
        Dim(s) to reduce over; ``None`` reduces over every dim.

    Returns
    -------
    xarray.DataArray
        Named ``cosine_similarity``.

    Examples
    --------
    >>> a = xr.DataArray([[1.0, 0.0], [1.0, 1.0]], dims=("layer", "feature"))
    >>> b = xr.DataArray([[0.0, 2.0], [2.0, 2.0]], dims=("layer", "feature"))
    >>> cosine_similarity(a, b, dims="feature").round(6).values.tolist()
    [0.0, 1.0]
    """
    red = as_dims(dims, a, b)
    red_a = [d for d in red if d in a.dims]
    red_b = [d for d in red if d in b.dims]
    dot = xr.dot(a, b, dim=red)
    sq_a = xr.dot(a, a, dim=red_a)
    sq_b = xr.dot(b, b, dim=red_b)
    out = xr.apply_ufunc(
        _k.cosine_from_sums,
        dot,
        sq_a,
        sq_b,
        dask="parallelized",
        output_dtypes=[_float_dtype(a, b)],
    )
    return out.rename("cosine_similarity").assign_attrs(
        long_name="cosine similarity",
        units="1",
        reduced_dims=", ".join(map(str, red)),
        zero_norm="0.0",
    )


def _cka_kernel(x: np.ndarray, y: np.ndarray, nfx: int, nfy: int) -> np.ndarray:
    return _k.linear_cka(flatten_features(x, nfx), flatten_features(y, nfy))


def linear_cka(
    x: xr.DataArray,
    y: xr.DataArray,
    *,
    sample_dim: Hashable = SAMPLE,
    feature_dims: Dims = None,
) -> xr.DataArray:
    """Linear CKA between representations ``x`` and ``y`` of the same samples.

    Reduces over ``sample_dim`` and the feature dims; batched (broadcast) over
    every other dim, e.g. compare all layers of step ``a`` with step ``b`` in one
    call. ``x`` and ``y`` may have different feature sizes. Coordinates on the
    batch dims must match exactly (``sel``/``assign_coords`` first if needed).

    Parameters
    ----------
    x, y
        Activations with ``sample_dim`` and feature dims.
    sample_dim
        Dim of the samples (rows of the representation matrices).
    feature_dims
        Feature dim(s), the same names in both inputs; ``None`` takes, for each
        input, the dims after ``sample_dim`` (the stored ``(step, sample,
        feature...)`` layout).

    Returns
    -------
    xarray.DataArray
        Named ``linear_cka``, in ``[0, 1]``; NaN where either input has zero variance.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = xr.DataArray(rng.normal(size=(30, 4)), dims=("sample", "feature"))
    >>> float(linear_cka(x, 2.0 * x).round(6))
    1.0
    """
    if feature_dims is None:
        fx, fy = dims_after(x, sample_dim), dims_after(y, sample_dim)
    else:
        fx = fy = as_dims(feature_dims, x, y)
    for arr, fdims, which in ((x, fx, "x"), (y, fy, "y")):
        bad = [d for d in (sample_dim, *fdims) if d not in arr.dims]
        if bad or not fdims:
            raise InputError(
                f"{which} needs dims {(sample_dim, *fdims)!r} with at least one feature dim",
                field=which,
                value=arr.dims,
            )
    out = xr.apply_ufunc(
        _cka_kernel,
        x,
        y,
        input_core_dims=[[sample_dim, *fx], [sample_dim, *fy]],
        exclude_dims=set(fx) | set(fy),
        kwargs={"nfx": len(fx), "nfy": len(fy)},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"allow_rechunk": True},
    )
    return out.rename("linear_cka").assign_attrs(
        long_name="linear centered kernel alignment",
        units="1",
        reduced_dims=", ".join(map(str, (sample_dim, *dict.fromkeys((*fx, *fy))))),
    )
