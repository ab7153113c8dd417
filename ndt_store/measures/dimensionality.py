"""The study's four Phase 1 dimensionality metrics, computed from activations.

Each metric is a function of the singular values of the ``sample × feature``
activation matrix (uncentered, as in the study); one batched SVD serves every
leading dim (step, layer, ...) at once. Definitions: see
:mod:`ndt_store._kernels.dimensionality` and ``docs/measurements.md``.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import xarray as xr

from ndt_store._dims import (
    EFFECTIVE_RANK_90,
    NUCLEAR_NORM_RATIO,
    PARTICIPATION_RATIO,
    PHASE1_METRICS,
    SAMPLE,
    STABLE_RANK,
)
from ndt_store._kernels import dimensionality as _k
from ndt_store.errors import InputError
from ndt_store.measures.similarity import Dims, as_dims, dims_after

__all__ = [
    "dimensionality_metrics",
    "effective_rank_90",
    "nuclear_norm_ratio",
    "participation_ratio",
    "stable_rank",
]

_LONG_NAMES = {
    STABLE_RANK: "stable rank ||A||_F^2 / ||A||_2^2",
    PARTICIPATION_RATIO: "participation ratio (sum s)^2 / sum s^2 of singular values",
    EFFECTIVE_RANK_90: "components for 90% of the squared singular values",
    NUCLEAR_NORM_RATIO: "nuclear norm over spectral norm",
}


def _metric_kernel(
    x: np.ndarray, n_feature_axes: int, name: str, eps: float, as_published: bool
) -> np.ndarray:
    s = _k.singular_values(_k.flatten_features(x, n_feature_axes))
    if name == EFFECTIVE_RANK_90:
        return _k.effective_rank(s, 0.9, eps)
    if name == STABLE_RANK:
        return _k.stable_rank(s, eps, as_published)
    fn = {
        PARTICIPATION_RATIO: _k.participation_ratio,
        NUCLEAR_NORM_RATIO: _k.nuclear_norm_ratio,
    }[name]
    return fn(s, eps)


def _core_dims(act: xr.DataArray, sample_dim: Hashable, feature_dims: Dims) -> tuple[Hashable, ...]:
    fdims = dims_after(act, sample_dim) if feature_dims is None else as_dims(feature_dims, act)
    if sample_dim not in act.dims or not fdims or sample_dim in fdims:
        raise InputError(
            f"activations need dim {sample_dim!r} and at least one feature dim after it",
            field="dims",
            value=act.dims,
        )
    return fdims


def _attrs(
    name: str, sample_dim: Hashable, fdims: tuple[Hashable, ...], eps: float, published: bool
) -> dict:
    attrs = {
        "long_name": _LONG_NAMES[name],
        "units": "1",
        "reduced_dims": ", ".join(map(str, (sample_dim, *fdims))),
        "eps": eps,
        "definition": "ndt Phase 1 (DimensionalityEstimator), uncentered activations",
    }
    if name == STABLE_RANK:
        attrs["as_published"] = str(published)
    return attrs


def _one(
    name: str,
    act: xr.DataArray,
    sample_dim: Hashable,
    feature_dims: Dims,
    eps: float,
    as_published: bool = False,
) -> xr.DataArray:
    fdims = _core_dims(act, sample_dim, feature_dims)
    out = xr.apply_ufunc(
        _metric_kernel,
        act,
        input_core_dims=[[sample_dim, *fdims]],
        kwargs={
            "n_feature_axes": len(fdims),
            "name": name,
            "eps": eps,
            "as_published": as_published,
        },
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"allow_rechunk": True},
    )
    return out.rename(name).assign_attrs(_attrs(name, sample_dim, fdims, eps, as_published))


def stable_rank(
    act: xr.DataArray,
    *,
    sample_dim: Hashable = SAMPLE,
    feature_dims: Dims = None,
    eps: float = _k.EPS,
    as_published: bool = False,
) -> xr.DataArray:
    """Stable rank ``‖A‖_F² / (‖A‖_2² + eps)`` of each ``sample × feature`` matrix.

    Parameters
    ----------
    act
        Activations, e.g. ``(step, layer, sample, feature)``; every dim other than
        the sample and feature dims is a batch dim and is kept.
    sample_dim
        Rows of the matrix.
    feature_dims
        Columns (several are flattened together); ``None`` means the dims after
        ``sample_dim``.
    eps
        The study's regularizer (``1e-10``).
    as_published
        Reproduce the published Phase 1 values instead: the study's code divided by
        ``torch.norm(A, p=2)``, which for a matrix is the *Frobenius* norm, so its
        stable rank is ``‖A‖_F² / (‖A‖_F² + eps)``, i.e. 1 for any non-zero matrix.

    Returns
    -------
    xarray.DataArray
        Named ``stable_rank``, float64.

    Examples
    --------
    >>> a = xr.DataArray(np.diag([2.0, 1.0, 1.0]), dims=("sample", "feature"))
    >>> float(stable_rank(a).round(6))  # (4 + 1 + 1) / 4
    1.5
    """
    return _one(STABLE_RANK, act, sample_dim, feature_dims, eps, as_published)


def participation_ratio(
    act: xr.DataArray,
    *,
    sample_dim: Hashable = SAMPLE,
    feature_dims: Dims = None,
    eps: float = _k.EPS,
) -> xr.DataArray:
    """Participation ratio ``(Σσ)² / Σσ²`` of the singular values (study's eps included).

    Parameters and return as in :func:`stable_rank` (named ``participation_ratio``).

    Examples
    --------
    >>> a = xr.DataArray(np.diag([2.0, 1.0, 1.0]), dims=("sample", "feature"))
    >>> float(participation_ratio(a).round(6))  # 16 / 6
    2.666667
    """
    return _one(PARTICIPATION_RATIO, act, sample_dim, feature_dims, eps)


def effective_rank_90(
    act: xr.DataArray,
    *,
    sample_dim: Hashable = SAMPLE,
    feature_dims: Dims = None,
    eps: float = _k.EPS,
) -> xr.DataArray:
    """Number of singular directions holding 90% of ``Σσ²`` (as float; 0 for a zero matrix).

    Parameters and return as in :func:`stable_rank` (named ``effective_rank_90``).

    Examples
    --------
    >>> a = xr.DataArray(np.diag([3.0, 1.0, 0.5]), dims=("sample", "feature"))
    >>> float(effective_rank_90(a))  # 9 / 10.25 < 0.9, 10 / 10.25 >= 0.9
    2.0
    """
    return _one(EFFECTIVE_RANK_90, act, sample_dim, feature_dims, eps)


def nuclear_norm_ratio(
    act: xr.DataArray,
    *,
    sample_dim: Hashable = SAMPLE,
    feature_dims: Dims = None,
    eps: float = _k.EPS,
) -> xr.DataArray:
    """Nuclear norm over spectral norm, ``Σσ / (σ1 + eps)``.

    Parameters and return as in :func:`stable_rank` (named ``nuclear_norm_ratio``).

    Examples
    --------
    >>> a = xr.DataArray(np.diag([2.0, 1.0, 1.0]), dims=("sample", "feature"))
    >>> float(nuclear_norm_ratio(a).round(6))
    2.0
    """
    return _one(NUCLEAR_NORM_RATIO, act, sample_dim, feature_dims, eps)


def dimensionality_metrics(
    act: xr.DataArray,
    *,
    sample_dim: Hashable = SAMPLE,
    feature_dims: Dims = None,
    eps: float = _k.EPS,
    as_published: bool = False,
) -> xr.Dataset:
    """All four Phase 1 metrics from one batched SVD per matrix.

    Parameters as in :func:`stable_rank` (``as_published`` affects only ``stable_rank``).

    Returns
    -------
    xarray.Dataset
        ``stable_rank``, ``participation_ratio``, ``effective_rank_90``,
        ``nuclear_norm_ratio`` over the batch dims of ``act``.

    Examples
    --------
    >>> a = xr.DataArray(np.eye(4)[None].repeat(2, 0), dims=("step", "sample", "feature"))
    >>> ds = dimensionality_metrics(a)
    >>> sorted(ds.data_vars), ds["stable_rank"].round(6).values.tolist()
    (['effective_rank_90', 'nuclear_norm_ratio', 'participation_ratio', 'stable_rank'], [4.0, 4.0])
    """
    fdims = _core_dims(act, sample_dim, feature_dims)
    outs = xr.apply_ufunc(
        _k.dimensionality_metrics,
        act,
        input_core_dims=[[sample_dim, *fdims]],
        output_core_dims=[[]] * len(PHASE1_METRICS),
        kwargs={"n_feature_axes": len(fdims), "eps": eps, "as_published": as_published},
        dask="parallelized",
        output_dtypes=[np.float64] * len(PHASE1_METRICS),
        dask_gufunc_kwargs={"allow_rechunk": True},
    )
    return xr.Dataset(
        {
            name: out.rename(name).assign_attrs(_attrs(name, sample_dim, fdims, eps, as_published))
            for name, out in zip(PHASE1_METRICS, outs, strict=True)
        }
    ).assign_attrs(description="Phase 1 dimensionality metrics")
