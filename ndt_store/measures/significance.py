"""Significance of Phase 1 jumps: family-wise p-values against surrogates, and a noise floor.

The published jump rule (``z > 2`` on the velocity) fires on about 5% of the
indices of any series, noise or not. :func:`jump_significance` gives every
velocity index a p-value that controls the family-wise error rate over its
series, plus a noise floor tied to the float precision of the metric. See
``docs/dynamics.md`` for the null model and its validation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ndt_store._dims import INDEX, STEP
from ndt_store._jumps import DEFAULT_ALPHA, DEFAULT_FLOOR_ULPS, DEFAULT_SURROGATES
from ndt_store._kernels import dynamics as _k
from ndt_store._kernels.dynamics import DEFAULT_EPSILON
from ndt_store.errors import InputError

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_EPSILON",
    "DEFAULT_FLOOR_ULPS",
    "DEFAULT_SURROGATES",
    "apply_to_series",
    "jump_significance",
    "noise_floor",
    "series_keys",
]


def _check_dim(x: xr.DataArray, dim: str) -> None:
    if dim not in x.dims:
        raise InputError(f"array has no dimension {dim!r}", field="dims", value=tuple(x.dims))


def _single_chunk(x: xr.DataArray, dim: str) -> xr.DataArray:
    return x.chunk({dim: -1}) if x.chunks is not None else x


def _eps(x: xr.DataArray, eps: float | None) -> float:
    if eps is not None:
        return float(eps)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    return float(np.finfo(dtype).eps)


def apply_to_series(
    func: Callable[..., Any],
    x: xr.DataArray,
    *extra: xr.DataArray,
    dim: str,
    out_sizes: Sequence[int | None],
    out_dtypes: Sequence[Any],
    kwargs: dict[str, Any] | None = None,
    index_extra: int = 0,
) -> tuple[xr.DataArray, ...]:
    """Run a series kernel over ``dim`` of ``x`` with ``apply_ufunc``.

    ``func(values, *extra_values, **kwargs)`` gets ``x`` with ``dim`` last (one
    chunk along it; any chunking elsewhere stays parallel) and returns one
    array per entry of ``out_sizes``: an output of size ``n`` ends in a new
    ``index`` dim of length ``n`` (coordinate ``0..n-1``); ``None`` means the
    output has no series axis. ``extra`` arrays are broadcast batch inputs;
    the first ``index_extra`` of them also run along ``index`` (one value per
    velocity index, passed with ``index`` last).
    """
    _check_dim(x, dim)
    xs = _single_chunk(x, dim)
    core = "_series" if dim == INDEX else dim
    if core != dim:
        xs = xs.rename({dim: core})
    extras = [_single_chunk(e, INDEX) if k < index_extra else e for k, e in enumerate(extra)]
    if xs.chunks is not None:
        extras = [
            e.chunk({d: xs.chunksizes[d] for d in e.dims if d in xs.chunksizes}) for e in extras
        ]
    sizes = {f"{INDEX}{k}": n for k, n in enumerate(out_sizes) if n is not None}
    out_core = [[] if n is None else [f"{INDEX}{k}"] for k, n in enumerate(out_sizes)]
    result = xr.apply_ufunc(
        func,
        xs,
        *extras,
        kwargs=kwargs or {},
        input_core_dims=[[core]] + [[INDEX] if k < index_extra else [] for k in range(len(extras))],
        output_core_dims=out_core,
        dask="parallelized",
        output_dtypes=list(out_dtypes),
        dask_gufunc_kwargs={"output_sizes": sizes},
    )
    outs = result if isinstance(result, tuple) else (result,)
    named = []
    for k, (out, n) in enumerate(zip(outs, out_sizes, strict=True)):
        if n is not None:
            out = out.rename({f"{INDEX}{k}": INDEX}).assign_coords({INDEX: np.arange(n)})
        named.append(out)
    return tuple(named)


def series_keys(x: xr.DataArray, *, dim: str = STEP) -> xr.DataArray:
    """A uint64 key per series from its labels on every dimension but ``dim``.

    The key (with the seed) fixes a series' surrogates, so a series' p-values
    do not depend on which other series, chunks or experiments are computed
    with it. Dimensions without a coordinate use the position.

    Examples
    --------
    >>> x = xr.DataArray(np.zeros((2, 3)), dims=("layer", "step"), coords={"layer": ["a", "b"]})
    >>> series_keys(x).dims, series_keys(x).dtype.name
    (('layer',), 'uint64')
    """
    key = xr.DataArray(np.uint64(0))
    for name in sorted(str(d) for d in x.dims if d != dim):  # independent of dim order
        labels = x[name].values if name in x.coords else np.arange(x.sizes[name])
        pairs = np.array([f"{name}={label}" for label in labels.tolist()], dtype=object)
        key = xr.apply_ufunc(_k.mix_keys, key, xr.DataArray(_k.label_keys(pairs), dims=(name,)))
    return key.transpose(*[d for d in x.dims if d != dim])


def noise_floor(
    x: xr.DataArray,
    *,
    dim: str = STEP,
    floor_ulps: float = DEFAULT_FLOOR_ULPS,
    eps: float | None = None,
) -> xr.DataArray:
    """Smallest change that is not float noise: ``floor_ulps · eps · max|x|`` per series.

    Parameters
    ----------
    x
        Metric values along ``dim`` (NaN = missing record).
    dim
        The series dimension.
    floor_ulps
        The floor in units in the last place of the series' largest value.
    eps
        Machine epsilon of the precision the metric was *computed* in; by
        default that of ``x``'s dtype (float64: 2.2e-16). Pass
        ``np.finfo(np.float32).eps`` for metrics computed in float32.

    Returns
    -------
    xarray.DataArray
        ``noise_floor`` over every dimension but ``dim``.

    Examples
    --------
    >>> x = xr.DataArray([[1.0, 0.5], [2.0, np.nan]], dims=("layer", "step"))
    >>> noise_floor(x, floor_ulps=1.0, eps=0.1).values.tolist()
    [0.1, 0.2]
    """
    (out,) = apply_to_series(
        _k.noise_floor,
        x,
        dim=dim,
        out_sizes=[None],
        out_dtypes=[np.float64],
        kwargs={"floor_ulps": float(floor_ulps), "eps": _eps(x, eps)},
    )
    return out.rename("noise_floor").assign_attrs(
        long_name="noise floor of the velocity", floor_ulps=float(floor_ulps), eps=_eps(x, eps)
    )


def jump_significance(
    x: xr.DataArray,
    *,
    dim: str = STEP,
    alpha: float = DEFAULT_ALPHA,
    n_surrogates: int = DEFAULT_SURROGATES,
    floor_ulps: float = DEFAULT_FLOOR_ULPS,
    eps: float | None = None,
    seed: int = 0,
    rows: xr.DataArray | None = None,
    sequential: bool = True,
    epsilon: float = DEFAULT_EPSILON,
) -> xr.Dataset:
    """Family-wise p-value and noise-floor test of every velocity index of every series.

    A series is ``x``'s non-NaN values along ``dim`` in order; its velocity
    ``v[i] = x[i+1] - x[i]`` is indexed by record index ``i``. The statistic is
    the robust z-score ``|v - median(v)| / (1.4826·MAD(v))``. The null model is
    a stationary Gaussian process with the velocity's own amplitude spectrum:
    up to ``n_surrogates`` phase-randomized surrogates per series. Each
    index's p-value is the share of surrogates whose *maximum* statistic
    reaches its statistic, so ``p <= alpha`` has family-wise error ``<= alpha``
    per series.

    By default the surrogates are drawn sequentially and a series stops early
    once each of its indices is decided at ``alpha`` (``docs/dynamics.md``,
    "How the p-values are computed"): a "not significant" decision is the one
    all ``n_surrogates`` would give; a "significant" one errs with probability
    at most ``epsilon``. The p-value of a series that stopped after ``L``
    surrogates is ``(1 + k) / (1 + L)``.

    Parameters
    ----------
    x
        Metric values with a ``dim`` dimension; all other dims are batch dims.
    dim
        The series dimension (training step).
    alpha
        Family-wise error rate per series for ``significant``.
    n_surrogates
        Surrogate series per series at most (smallest p-value ``1/(n_surrogates+1)``).
    floor_ulps, eps
        Noise floor, see :func:`noise_floor`.
    seed
        Seed; with the series length it fixes the surrogates.
    rows
        Optional bool array over the batch dims and ``index`` (``len(dim) - 1``
        long): only these indices get a p-value (NaN elsewhere), and only
        they decide when a series may stop.
    sequential
        ``False``: every series gets all ``n_surrogates`` (the fixed test).
    epsilon
        Error budget of the early "significant" decisions.

    Returns
    -------
    xarray.Dataset
        Over (batch dims..., ``index``) of length ``len(dim) - 1``:
        ``statistic``, ``p_value``, ``above_floor`` (``|v| > noise_floor``),
        ``significant`` (``p_value <= alpha`` and above the floor); over the
        batch dims ``noise_floor`` and ``surrogates`` (how many were drawn).
        NaN / False past a series' end.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = xr.DataArray(np.cumsum(rng.normal(size=200)) + 30 * (np.arange(200) >= 80), dims="step")
    >>> res = jump_significance(x, n_surrogates=199)
    >>> np.flatnonzero(res.significant.values).tolist()
    [79]
    """
    _check_dim(x, dim)
    if n_surrogates < 1:
        raise InputError("need at least one surrogate", field="n_surrogates", value=n_surrogates)
    if not 0 < alpha < 1:
        raise InputError("alpha must lie in (0, 1)", field="alpha", value=alpha)
    n_index = max(x.sizes[dim] - 1, 0)
    level = float(alpha) if sequential else None

    def kernel(
        values: np.ndarray, asked: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        velocity = _k.first_difference(_k.compact(values)[0])
        stat, pvalue, used = _k.surrogate_pvalues(
            velocity, n_surrogates=n_surrogates, seed=seed, alpha=level, epsilon=epsilon,
            asked=asked, return_used=True,
        )  # fmt: skip
        return stat, pvalue, np.abs(velocity), used

    inputs: list[xr.DataArray] = []
    if rows is not None:
        if INDEX not in rows.dims or rows.sizes[INDEX] != n_index:
            raise InputError(
                f"rows needs an {INDEX!r} dimension of length {n_index}",
                field="rows",
                value=dict(rows.sizes),
            )
        inputs.append(rows.astype(bool).drop_vars(INDEX, errors="ignore"))
    stat, pvalue, magnitude, used = apply_to_series(
        kernel,
        x,
        *inputs,
        dim=dim,
        out_sizes=[n_index] * 3 + [None],
        out_dtypes=[np.float64] * 3 + [np.int64],
        index_extra=len(inputs),
    )
    floor = noise_floor(x, dim=dim, floor_ulps=floor_ulps, eps=eps)
    above = magnitude > floor
    significant = (pvalue <= alpha) & above
    out = xr.Dataset(
        {
            "statistic": stat.assign_attrs(long_name="robust z-score of the velocity"),
            "p_value": pvalue.assign_attrs(
                long_name="family-wise p-value (max statistic over phase-randomized surrogates)",
                n_surrogates=int(n_surrogates),
                seed=int(seed),
                sequential=int(sequential),
                epsilon=float(epsilon),
            ),
            "noise_floor": floor,
            "surrogates": used.assign_attrs(long_name="surrogates drawn for the series"),
            "above_floor": above.assign_attrs(long_name="|velocity| above the noise floor"),
            "significant": significant.assign_attrs(
                long_name="significant jump", alpha=float(alpha)
            ),
        }
    )
    return out
