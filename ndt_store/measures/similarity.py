"""Similarity between labeled arrays: cosine similarity and linear CKA.

Both reduce over named dims and keep (broadcast) every other dim, so one call
compares e.g. every layer or every step at once. Results stay lazy on dask input.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Literal

import numpy as np
import xarray as xr

from ndt_store._dims import SAMPLE
from ndt_store._kernels import similarity as _k
from ndt_store._kernels.dimensionality import flatten_features
from ndt_store.errors import InputError

__all__ = ["DEBIASED_BELOW", "cka_test", "cosine_similarity", "linear_cka"]

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


Estimator = Literal["auto", "debiased", "biased"]

DEBIASED_BELOW = 1000
"""``estimator="auto"`` uses debiased CKA below this many samples, biased CKA from it on."""


def _cka_kernel(x: np.ndarray, y: np.ndarray, nfx: int, nfy: int, debiased: bool) -> np.ndarray:
    return _k.linear_cka(flatten_features(x, nfx), flatten_features(y, nfy), debiased=debiased)


def _resolve(
    x: xr.DataArray,
    y: xr.DataArray,
    sample_dim: Hashable,
    feature_dims: Dims,
    samples: Dims,
) -> tuple[xr.DataArray, xr.DataArray, Hashable, tuple[Hashable, ...], tuple[Hashable, ...]]:
    """Inputs with their sample dims stacked into one, that dim, and the feature dims."""
    if samples is not None:
        names = as_dims(samples, x, y)
        for arr, which in ((x, "x"), (y, "y")):
            bad = [d for d in names if d not in arr.dims]
            if bad:
                raise InputError(
                    f"{which} lacks sample dims {bad!r} (dims {arr.dims!r})",
                    field="samples",
                    value=samples,
                )
        last = names[-1]
        if feature_dims is None:  # the dims after the last sample dim, per input
            fx = tuple(d for d in dims_after(x, last) if d not in names)
            fy = tuple(d for d in dims_after(y, last) if d not in names)
        else:
            fx = fy = as_dims(feature_dims, x, y)
        if len(names) > 1:
            stacked = "_".join(map(str, names))
            x = x.stack({stacked: list(names)}, create_index=False)
            y = y.stack({stacked: list(names)}, create_index=False)
            sample_dim = stacked
        else:
            sample_dim = names[0]
    elif feature_dims is None:
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
    return x, y, sample_dim, fx, fy


def _debiased(estimator: Estimator, n: int) -> bool:
    if estimator not in ("auto", "debiased", "biased"):
        raise InputError(
            f"estimator must be 'auto', 'debiased' or 'biased', got {estimator!r}",
            field="estimator",
            value=estimator,
        )
    debiased = estimator == "debiased" or (estimator == "auto" and n < DEBIASED_BELOW)
    if debiased and n < 4:
        raise InputError(
            f"debiased CKA needs at least 4 samples, got {n} (use estimator='biased')",
            field="estimator",
            value=estimator,
        )
    return debiased


def linear_cka(
    x: xr.DataArray,
    y: xr.DataArray,
    *,
    sample_dim: Hashable = SAMPLE,
    feature_dims: Dims = None,
    samples: Dims = None,
    estimator: Estimator = "auto",
) -> xr.DataArray:
    """Linear CKA between representations ``x`` and ``y`` of the same samples.

    Reduces over the sample dim(s) and the feature dims; batched (broadcast) over
    every other dim, e.g. compare all layers of step ``a`` with step ``b`` in one
    call. ``x`` and ``y`` may have different feature sizes. Coordinates on the
    batch dims must match exactly (``sel``/``assign_coords`` first if needed).

    Parameters
    ----------
    x, y
        Activations with the sample dim(s) and feature dims.
    sample_dim
        Dim of the samples (rows of the representation matrices).
    feature_dims
        Feature dim(s), the same names in both inputs; ``None`` takes, for each
        input, the dims after the (last) sample dim (the stored ``(step, sample,
        feature...)`` layout).
    samples
        Several dims that together index the samples, e.g. ``("sample",
        "position")`` for a sequence model's tokens; overrides ``sample_dim``.
    estimator
        ``"debiased"`` (unbiased HSIC, Song et al. 2012: ≈ 0 on unrelated
        representations, can be slightly negative), ``"biased"`` (Kornblith et al.
        2019: reads well above 0 on unrelated data when samples are few), or
        ``"auto"``: debiased below :data:`DEBIASED_BELOW` samples. The choice is
        recorded in the result's ``estimator`` attribute.

    Returns
    -------
    xarray.DataArray
        Named ``linear_cka``; NaN where either input has zero variance.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = xr.DataArray(rng.normal(size=(30, 4)), dims=("sample", "feature"))
    >>> float(linear_cka(x, 2.0 * x).round(6))
    1.0
    >>> t = xr.DataArray(rng.normal(size=(4, 16, 8)), dims=("sample", "position", "feature"))
    >>> float(linear_cka(t, t + 0.1, samples=("sample", "position")).round(6))
    1.0
    """
    x, y, sample_dim, fx, fy = _resolve(x, y, sample_dim, feature_dims, samples)
    debiased = _debiased(estimator, int(x.sizes[sample_dim]))
    out = xr.apply_ufunc(
        _cka_kernel,
        x,
        y,
        input_core_dims=[[sample_dim, *fx], [sample_dim, *fy]],
        exclude_dims=set(fx) | set(fy),
        kwargs={"nfx": len(fx), "nfy": len(fy), "debiased": debiased},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"allow_rechunk": True},
    )
    return out.rename("linear_cka").assign_attrs(
        long_name="linear centered kernel alignment",
        units="1",
        estimator="debiased" if debiased else "biased",
        reduced_dims=", ".join(map(str, (sample_dim, *dict.fromkeys((*fx, *fy))))),
    )


def _cka_test_kernel(
    x: np.ndarray,
    y: np.ndarray,
    nfx: int,
    nfy: int,
    debiased: bool,
    permutations: int,
    resamples: int,
    confidence: float,
    seed: int | None,
) -> np.ndarray:
    a, b = flatten_features(x, nfx), flatten_features(y, nfy)
    cka, pvalue = _k.cka_permutation_test(
        a, b, debiased=debiased, permutations=permutations, seed=seed
    )
    boot = _k.cka_bootstrap(a, b, debiased=debiased, resamples=resamples, seed=seed)
    tail = (1.0 - confidence) / 2.0
    with np.errstate(invalid="ignore"):
        low, high = np.nanquantile(boot, [tail, 1.0 - tail], axis=-1) if boot.size else (cka, cka)
    return np.stack(np.broadcast_arrays(cka, pvalue, low, high), axis=-1)


def cka_test(
    x: xr.DataArray,
    y: xr.DataArray,
    *,
    sample_dim: Hashable = SAMPLE,
    feature_dims: Dims = None,
    samples: Dims = None,
    estimator: Estimator = "auto",
    permutations: int = 1000,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> xr.Dataset:
    """Linear CKA with a permutation p-value and a bootstrap interval, batched.

    For every batch element (e.g. every layer × step pair): the CKA of
    :func:`linear_cka`; ``p_value``, the share of ``permutations`` row shuffles of
    ``y`` whose CKA reaches the observed one (``(1 + count) / (1 + permutations)``;
    a small p-value says the before/after similarity is more than chance pairing);
    and a percentile interval over ``resamples`` bootstrap resamples of the samples.

    Parameters
    ----------
    x, y, sample_dim, feature_dims, samples, estimator
        As for :func:`linear_cka`.
    permutations, resamples
        Sizes of the permutation null and of the bootstrap.
    confidence
        Coverage of the interval, in ``(0, 1)``.
    seed
        Seed of the permutations and resamples (the same draws for every batch element).

    Returns
    -------
    xarray.Dataset
        ``linear_cka``, ``p_value``, ``ci_low``, ``ci_high`` over the batch dims.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = xr.DataArray(rng.normal(size=(40, 6)), dims=("sample", "feature"))
    >>> out = cka_test(x, x + 0.5 * rng.normal(size=(40, 6)), permutations=199, resamples=200)
    >>> float(out.p_value), bool(out.ci_low < out.linear_cka < out.ci_high)
    (0.005, True)
    """
    if not 0.0 < confidence < 1.0:
        raise InputError(
            f"confidence must be in (0, 1), got {confidence!r}",
            field="confidence",
            value=confidence,
        )
    for name, value in (("permutations", permutations), ("resamples", resamples)):
        if int(value) < 1:
            raise InputError(f"{name} must be >= 1, got {value!r}", field=name, value=value)
    x, y, sample_dim, fx, fy = _resolve(x, y, sample_dim, feature_dims, samples)
    debiased = _debiased(estimator, int(x.sizes[sample_dim]))
    stats = xr.apply_ufunc(
        _cka_test_kernel,
        x,
        y,
        input_core_dims=[[sample_dim, *fx], [sample_dim, *fy]],
        output_core_dims=[["statistic"]],
        exclude_dims=set(fx) | set(fy),
        kwargs={
            "nfx": len(fx),
            "nfy": len(fy),
            "debiased": debiased,
            "permutations": int(permutations),
            "resamples": int(resamples),
            "confidence": float(confidence),
            "seed": seed,
        },
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"allow_rechunk": True, "output_sizes": {"statistic": 4}},
    )
    est = "debiased" if debiased else "biased"
    names = ("linear_cka", "p_value", "ci_low", "ci_high")
    ds = xr.Dataset({n: stats.isel(statistic=i, drop=True) for i, n in enumerate(names)})
    ds["linear_cka"].attrs.update(long_name="linear centered kernel alignment", estimator=est)
    ds["p_value"].attrs.update(
        long_name="permutation p-value of CKA (rows of y shuffled)", permutations=permutations
    )
    for n in ("ci_low", "ci_high"):
        ds[n].attrs.update(
            long_name=f"{confidence:.0%} bootstrap percentile interval of CKA",
            resamples=resamples,
        )
    return ds.assign_attrs(estimator=est, seed=-1 if seed is None else seed)
