"""Activation measurements: sparsity and class selectivity.

Stored activations are ``(step, sample, feature...)`` with the probe batch's class
labels as coordinate ``label`` on ``sample``. Class means are one matrix product
with a one-hot membership matrix, not a loop over classes. Results stay lazy on
dask-backed input; only the small label coordinate is read (computed, if it was lazy).
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import numpy.typing as npt
import xarray as xr

from ndt_store._dims import CLASS, LABEL, SAMPLE
from ndt_store._kernels import activations as _k
from ndt_store._kernels.attention import float_dtype
from ndt_store.errors import InputError
from ndt_store.measures.similarity import Dims, as_dims, dims_after

__all__ = ["activation_selectivity", "activation_sparsity"]


def activation_sparsity(
    act: xr.DataArray,
    *,
    threshold: float = 0.1,
    dims: Dims = None,
    sample_dim: Hashable = SAMPLE,
) -> xr.DataArray:
    """Fraction of activations with ``|a| <= threshold``, reduced over ``dims``.

    Computed as the legacy definition ``1 − mean(|a| > threshold)`` (a NaN counts
    as inactive, as it did there).

    Parameters
    ----------
    act
        Activations, e.g. ``(step, sample, feature)``.
    threshold
        A unit is active where ``|a| > threshold``.
    dims
        Dims to reduce; ``None`` means ``sample_dim`` and every dim after it
        (samples and features), keeping step/layer.
    sample_dim
        Used only to pick the default ``dims``.

    Returns
    -------
    xarray.DataArray
        Named ``activation_sparsity``, in ``[0, 1]``.

    Examples
    --------
    >>> a = xr.DataArray([[0.0, 0.5], [0.05, -2.0]], dims=("sample", "feature"))
    >>> float(activation_sparsity(a))
    0.5
    """
    red = (sample_dim, *dims_after(act, sample_dim)) if dims is None else as_dims(dims, act)
    active = (abs(act) > threshold).mean(red)
    return (
        (1.0 - active)
        .rename("activation_sparsity")
        .assign_attrs(
            long_name="fraction of activations at or below the threshold",
            units="1",
            threshold=float(threshold),
            reduced_dims=", ".join(map(str, red)),
        )
    )


def activation_selectivity(
    act: xr.DataArray,
    *,
    label: Hashable = LABEL,
    sample_dim: Hashable = SAMPLE,
    classes: npt.ArrayLike | None = None,
    fill_empty: float = np.nan,
    samples: Dims = None,
) -> xr.Dataset:
    """Per-class mean activation of every unit and its class-selectivity index.

    ``class_mean[..., c]`` is the mean over the samples whose ``label`` is ``c``
    (one-hot matrix product over ``sample_dim``). The selectivity index per unit
    is ``(μmax − μrest) / (μmax + μrest)`` with ``μmax`` the largest class mean and
    ``μrest`` the mean of the other classes' means (classes with samples only).
    It is 0 where all class means are equal (including 0/0, e.g. a dead unit),
    NaN where only ``μmax + μrest`` is 0 (signed activations: the index is meant
    for non-negative ones) and NaN when fewer than two classes have samples.

    Parameters
    ----------
    act
        Activations with ``sample_dim`` carrying the coordinate ``label``.
    label
        Name of the class-label coordinate on ``sample_dim``.
    sample_dim
        Dim of the samples.
    classes
        Class labels to report, in order; ``None`` uses the sorted distinct labels.
        A class with no sample gets ``class_mean = fill_empty``.
    fill_empty
        Mean reported for a class without samples (default NaN).
    samples
        Several dims that together index the samples, e.g. ``("sample", "position")``
        for a sequence model's tokens; overrides ``sample_dim``. ``label`` may lie on
        any of them (per-sequence labels are repeated over positions, per-token
        labels used as they are).

    Returns
    -------
    xarray.Dataset
        ``class_mean`` (all other dims of ``act``, then ``class``),
        ``selectivity_index`` (all other dims) and ``class_count`` (``class``).

    Examples
    --------
    >>> a = xr.DataArray([[1.0, 0.0], [3.0, 0.0], [1.0, 0.0]], dims=("sample", "feature"),
    ...                  coords={"label": ("sample", [0, 0, 1])})
    >>> sel = activation_selectivity(a)
    >>> sel["class_mean"].values.tolist()
    [[2.0, 1.0], [0.0, 0.0]]
    >>> sel["selectivity_index"].round(6).values.tolist()
    [0.333333, 0.0]
    """
    if samples is not None:
        data, labels, sample_dim = _tokens_as_samples(act, label, as_dims(samples, act))
    else:
        if label not in act.coords or act.coords[label].dims != (sample_dim,):
            raise InputError(
                f"activations need a coordinate {label!r} on dim {sample_dim!r}",
                field=str(label),
                value=act.dims,
            )
        labels = act.coords[label].to_numpy()  # small; read even if the coordinate is lazy
        data = act.drop_vars([label])
    cls = np.unique(labels) if classes is None else np.asarray(classes)
    members = _k.one_hot(labels, cls, dtype=float_dtype(act.dtype))
    onehot = xr.DataArray(members, dims=(sample_dim, CLASS), coords={CLASS: cls})
    counts = members.sum(axis=0)
    count = xr.DataArray(counts.astype(np.int64), dims=CLASS, coords={CLASS: cls})
    present = count > 0
    class_sum = xr.dot(data, onehot, dim=[sample_dim])
    denom = xr.DataArray(np.where(counts > 0, counts, np.nan), dims=CLASS, coords={CLASS: cls})
    class_mean = class_sum / denom  # x / nan is nan, without a warning
    n_present = int(present.sum())
    if n_present >= 2:
        mu_max = class_mean.where(present, -np.inf).max(CLASS, skipna=False)
        total = class_mean.where(present, 0.0).sum(CLASS, skipna=False)
        mu_rest = (total - mu_max) / (n_present - 1)
        index = xr.apply_ufunc(
            _k.selectivity_index,
            mu_max,
            mu_rest,
            dask="parallelized",
            output_dtypes=[np.result_type(mu_max.dtype, mu_rest.dtype)],
        )
    else:
        index = xr.full_like(class_mean.isel({CLASS: 0}, drop=True), np.nan)
    if not np.isnan(fill_empty):
        class_mean = class_mean.where(present, fill_empty)
    class_mean = class_mean.transpose(..., CLASS)
    return xr.Dataset(
        {
            "class_mean": class_mean.assign_attrs(long_name="mean activation per class"),
            "selectivity_index": index.assign_attrs(
                long_name="class selectivity index (mu_max - mu_rest) / (mu_max + mu_rest)",
                units="1",
                equal_means="0.0",
            ),
            "class_count": count.assign_attrs(long_name="samples per class"),
        }
    ).assign_attrs(description="activation class selectivity", label=str(label))


def _tokens_as_samples(
    act: xr.DataArray, label: Hashable, names: tuple[Hashable, ...]
) -> tuple[xr.DataArray, np.ndarray, Hashable]:
    """``act`` with the dims ``names`` stacked into one sample dim, and its labels."""
    coord = act.coords.get(label)
    if coord is None or not coord.dims or not set(coord.dims) <= set(names):
        raise InputError(
            f"activations need a coordinate {label!r} on some of the sample dims {names!r}",
            field=str(label),
            value=act.dims,
        )
    template = xr.DataArray(
        np.zeros([act.sizes[d] for d in names], dtype=np.int8), dims=names
    )  # small: one byte per token
    labels = xr.broadcast(coord.drop_vars(list(coord.coords)), template)[0]
    flat = labels.transpose(*names).to_numpy().reshape(-1)
    stacked = "_".join(map(str, names))
    data = act.drop_vars([label]).stack({stacked: list(names)}, create_index=False)
    return data, flat, stacked
