"""Phase 1 dynamics as labeled reductions: velocity, jumps, critical periods, and the tables.

Every function takes labeled arrays with a series dimension (``dim``, the
true training step by default); every other dimension is a batch dimension.
A *series* is the non-NaN values along ``dim`` in order, and results are
indexed by **record index** (dimension ``index``): the position of a record
among the series' records, which is what the study's published tables call
``step``. NaN padding (steps a run did not record, layers it does not have)
never creates a value and never enters a count or a mean. See
``docs/dynamics.md``.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from ndt_store._dims import (
    ARCH_NAME,
    DATASET,
    EXPERIMENT,
    INDEX,
    LAYER,
    LOSS,
    NUM_STEPS,
    PHASE1_METRICS,
    PUBLISHED_PERIOD_COLUMNS,
    STABLE_RANK,
    STEP,
)
from ndt_store._jumps import (
    JUMP_COLUMNS,
    JumpTest,
    PhaseMode,
    check_alpha,
    jump_core,
    label_columns,
    metric_eps,
)
from ndt_store._kernels import dynamics as _k
from ndt_store.errors import InputError, NdtStoreWarning
from ndt_store.measures.significance import (
    DEFAULT_ALPHA,
    DEFAULT_FLOOR_ULPS,
    DEFAULT_SURROGATES,
    apply_to_series,
    jump_significance,
)

__all__ = [
    "DEGENERATE_RTOL",
    "JUMP_COLUMNS",
    "DegenerateMetricWarning",
    "PhaseMode",
    "acceleration",
    "check_alpha",
    "coordination",
    "critical_period_table",
    "critical_periods",
    "detect_jumps",
    "jump_table",
    "loss_correlation",
    "metric_variation",
    "phase1_tables",
    "record_steps",
    "transitions",
    "varying_metrics",
    "velocity",
    "warn_if_degenerate",
]

DEGENERATE_RTOL = 1e-6
"""A series whose range is below this share of its largest value does not move.

Metrics are computed in float32 or float64 from model weights; changes under a
millionth of the metric's own size are numerical noise, not training dynamics.
"""

CRITICAL_COLUMNS: tuple[str, ...] = PUBLISHED_PERIOD_COLUMNS

_BLOCK_EXPERIMENTS = 256  # experiments per block when a table is built from in-memory data


class DegenerateMetricWarning(NdtStoreWarning):
    """A metric does not move over a run (its range is below its noise floor)."""


# --- does a metric move? ------------------------------------------------------------
def metric_variation(
    x: xr.DataArray,
    *,
    dim: str = STEP,
    rtol: float = DEGENERATE_RTOL,
    floor_ulps: float = DEFAULT_FLOOR_ULPS,
    eps: float | None = None,
) -> xr.Dataset:
    """Range of each series against its noise floor: does the metric move at all?

    A series is *degenerate* when its range ``max - min`` (over its records)
    is at most its noise floor, the larger of
    :func:`~ndt_store.measures.significance.noise_floor` and
    ``rtol · max|x|``. A degenerate series has no jumps to find: any velocity
    it has is rounding noise.

    Parameters
    ----------
    x
        Metric values along ``dim`` (NaN = missing record); other dims batch.
    dim
        The series dimension.
    rtol
        Relative part of the floor (see :data:`DEGENERATE_RTOL`).
    floor_ulps, eps
        Absolute part of the floor, as in the significance test.

    Returns
    -------
    xarray.Dataset
        Over the batch dims: ``range``, ``noise_floor`` and ``degenerate``
        (False for a series with no record).

    Examples
    --------
    >>> x = xr.DataArray([[1.0, 1.0 + 1e-12, 1.0], [1.0, 2.0, 3.0]], dims=("layer", "step"))
    >>> metric_variation(x).degenerate.values.tolist()
    [True, False]
    """
    from ndt_store.measures.significance import noise_floor

    span = (x.max(dim) - x.min(dim)).rename("range")
    absolute = noise_floor(x, dim=dim, floor_ulps=floor_ulps, eps=eps)
    relative = rtol * abs(x).max(dim)
    floor = absolute.where(absolute >= relative, relative).rename("noise_floor")
    present = x.count(dim) > 0
    degenerate = (span <= floor) & present
    return xr.Dataset(
        {
            "range": span.assign_attrs(long_name="max - min over the records"),
            "noise_floor": floor.assign_attrs(
                long_name="largest change that is numerical noise", rtol=float(rtol)
            ),
            "degenerate": degenerate.assign_attrs(long_name="range within the noise floor"),
        }
    )


def varying_metrics(
    ds: xr.Dataset, *, metrics: Sequence[str] = PHASE1_METRICS, dim: str = STEP
) -> list[str]:
    """The metrics of ``ds`` that move in at least one of its series.

    Examples
    --------
    >>> ds = xr.Dataset({"stable_rank": ("step", [1.0, 1.0]),
    ...                  "participation_ratio": ("step", [1.0, 3.0])})
    >>> varying_metrics(ds)
    ['participation_ratio']
    """
    out = []
    for name in metrics:
        if name in ds and dim in ds[name].dims:
            if not bool(metric_variation(ds[name], dim=dim).degenerate.all()):
                out.append(name)
    return out


def warn_if_degenerate(
    ds: xr.Dataset, metric: str, *, where: str = "", dim: str = STEP
) -> tuple[bool, str | None]:
    """Warn (:class:`DegenerateMetricWarning`) when ``metric`` moves in no series of ``ds``.

    Returns
    -------
    tuple
        ``(degenerate, message)``; the message names the metric, its largest
        range and the metrics that do vary (``None`` when not degenerate).
    """
    if metric not in ds:
        known = sorted(str(v) for v in ds.data_vars if dim in ds[v].dims)
        raise InputError(
            f"no metric {metric!r} stored (known: {', '.join(known)})", field="metric", value=metric
        )
    var = metric_variation(ds[metric], dim=dim)
    if not bool(var.degenerate.all()) or not bool((ds[metric].count(dim) > 0).any()):
        return False, None
    others = [m for m in varying_metrics(ds, dim=dim) if m != metric]
    span = float(var["range"].max())
    floor = float(var["noise_floor"].max())
    message = (
        f"{metric} is degenerate{(' in ' + where) if where else ''}: its range over every series "
        f"(at most {span:.3g}) is within its noise floor ({floor:.3g}), so it has no jumps; "
        + (
            f"metrics that vary: {', '.join(others)} (pass metric=... / --metric)"
            if others
            else "no stored metric varies"
        )
    )
    warnings.warn(message, DegenerateMetricWarning, stacklevel=3)
    return True, message


# --- series -----------------------------------------------------------------------
def velocity(x: xr.DataArray, *, dim: str = STEP) -> xr.DataArray:
    """First difference of each series: ``v[i] = x[i+1] - x[i]`` over its records.

    Parameters
    ----------
    x
        Values along ``dim``; NaN marks a missing record.
    dim
        The series dimension.

    Returns
    -------
    xarray.DataArray
        ``velocity`` over (other dims..., ``index``) with ``len(dim) - 1``
        record indices, NaN past each series' end.

    Examples
    --------
    >>> x = xr.DataArray([1.0, np.nan, 4.0, 9.0], dims="step", coords={"step": [0, 5, 10, 15]})
    >>> velocity(x).values.tolist()
    [3.0, 5.0, nan]
    """
    n = max(x.sizes[dim] - 1, 0) if dim in x.dims else 0

    def kernel(values: np.ndarray) -> np.ndarray:
        return _k.first_difference(_k.compact(values)[0])

    (out,) = apply_to_series(kernel, x, dim=dim, out_sizes=[n], out_dtypes=[np.float64])
    return out.rename("velocity").assign_attrs(long_name="first difference per record")


def acceleration(x: xr.DataArray, *, dim: str = STEP) -> xr.DataArray:
    """Second difference of each series over its records (``len(dim) - 2`` indices).

    Examples
    --------
    >>> acceleration(xr.DataArray([1.0, 4.0, 9.0, 16.0], dims="step")).values.tolist()
    [2.0, 2.0]
    """
    n = max(x.sizes[dim] - 2, 0) if dim in x.dims else 0

    def kernel(values: np.ndarray) -> np.ndarray:
        return _k.first_difference(_k.compact(values)[0], 2)

    (out,) = apply_to_series(kernel, x, dim=dim, out_sizes=[n], out_dtypes=[np.float64])
    return out.rename("acceleration").assign_attrs(long_name="second difference per record")


def record_steps(x: xr.DataArray, *, dim: str = STEP) -> xr.DataArray:
    """The ``dim`` coordinate (true training step) of each record index of each series.

    Examples
    --------
    >>> x = xr.DataArray([np.nan, 1.0, 2.0], dims="step", coords={"step": [0, 5, 10]})
    >>> record_steps(x).values.tolist()
    [5.0, 10.0, nan]
    """
    if dim not in x.coords:
        raise InputError(f"array has no {dim!r} coordinate", field=dim)
    coord = np.asarray(x[dim].values, dtype=np.float64)
    (out,) = apply_to_series(
        _k.compact_coordinate,
        x,
        dim=dim,
        out_sizes=[x.sizes[dim]],
        out_dtypes=[np.float64],
        kwargs={"coord": coord},
    )
    return out.rename("train_step").assign_attrs(long_name=f"{dim} of the record")


def detect_jumps(
    x: xr.DataArray,
    *,
    threshold: float = 2.0,
    dim: str = STEP,
    alpha: float | None = None,
    n_surrogates: int = DEFAULT_SURROGATES,
    floor_ulps: float = DEFAULT_FLOOR_ULPS,
    eps: float | None = None,
    seed: int = 0,
) -> xr.Dataset:
    """The published z-score jump rule per velocity index, optionally with significance.

    ``z = |v - mean(v)| / std(v)`` (population std) on each series' velocity;
    index ``i`` is a jump where ``z > threshold``.

    Parameters
    ----------
    x
        Metric values along ``dim`` (NaN = missing record); other dims batch.
    threshold
        z-score threshold of the published rule.
    dim
        The series dimension.
    alpha
        If given, add the significance test of
        :func:`~ndt_store.measures.significance.jump_significance` at this
        family-wise level (``statistic``, ``p_value``, ``noise_floor``,
        ``above_floor``, ``significant``).
    n_surrogates, floor_ulps, eps, seed
        Passed to the significance test.

    Returns
    -------
    xarray.Dataset
        Over (other dims..., ``index``) with ``len(dim) - 1`` record indices:
        ``velocity``, ``z``, ``is_jump``, ``magnitude`` (``|v|``), ``speed``
        (the study's 5-record window speed), ``direction`` (+1 increase, -1
        decrease, 0 past the end); ``train_step`` (``dim`` coordinate of
        record ``i``) when ``x`` has a ``dim`` coordinate.

    Examples
    --------
    >>> x = xr.DataArray(np.r_[np.zeros(10), np.ones(10)], dims="step")
    >>> np.flatnonzero(detect_jumps(x).is_jump.values).tolist()
    [9]
    """
    n = max(x.sizes[dim] - 1, 0) if dim in x.dims else 0
    names = ("velocity", "z", "is_jump", "magnitude", "speed", "direction")
    outs = apply_to_series(
        _k.zscore_jumps,
        x,
        dim=dim,
        out_sizes=[n] * 6,
        out_dtypes=[np.float64, np.float64, np.bool_, np.float64, np.float64, np.int8],
        kwargs={"threshold": float(threshold)},
    )
    ds = xr.Dataset(dict(zip(names, outs, strict=True)))
    ds["z"].attrs.update(long_name="|v - mean(v)| / std(v)")
    ds["is_jump"].attrs.update(long_name="z-score jump", threshold=float(threshold))
    ds["speed"].attrs.update(long_name="|x[e-1] - x[s]| / (e - s), s=max(0,i-2), e=min(n,i+3)")
    if dim in x.coords:
        ds["train_step"] = record_steps(x, dim=dim).isel({INDEX: slice(0, n)})
    if alpha is not None:
        sig = jump_significance(
            x,
            dim=dim,
            alpha=alpha,
            n_surrogates=n_surrogates,
            floor_ulps=floor_ulps,
            eps=eps,
            seed=seed,
        )
        ds = ds.merge(sig)
    return ds


# --- critical periods -------------------------------------------------------------
def _flagged(x: xr.DataArray, dim: str, percentile: float, order: int, name: str) -> xr.DataArray:
    n = x.sizes[dim] if dim in x.dims else 0
    (out,) = apply_to_series(
        _k.critical_mask,
        x,
        dim=dim,
        out_sizes=[n],
        out_dtypes=[np.float64],
        kwargs={"q": float(percentile), "order": order},
    )
    return out.rename(name).assign_attrs(percentile=float(percentile))


def critical_periods(x: xr.DataArray, *, percentile: float = 90, dim: str = STEP) -> xr.DataArray:
    """Critical record indices: ``|v[i]|`` above the series' ``percentile`` of ``|v|``.

    Returns
    -------
    xarray.DataArray
        ``critical`` over (other dims..., ``index``) with ``len(dim)`` record
        indices: 1.0 critical, 0.0 a record that is not, NaN where the series
        has no record (so absent layers and shorter runs stay out of counts).

    Examples
    --------
    >>> x = xr.DataArray([0.0, 0, 0, 1, 1, 1], dims="step")
    >>> critical_periods(x).values.tolist()
    [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    """
    out = _flagged(x, dim, percentile, 1, "critical")
    return out.assign_attrs(long_name="critical record (|velocity| above percentile)")


def transitions(x: xr.DataArray, *, percentile: float = 90, dim: str = STEP) -> xr.DataArray:
    """Transition record indices: ``|Δ²x[i]|`` above the series' ``percentile`` of ``|Δ²x|``.

    Same encoding as :func:`critical_periods`.

    Examples
    --------
    >>> x = xr.DataArray([0.0, 0, 0, 1, 1, 1], dims="step")
    >>> transitions(x, percentile=50).values.tolist()
    [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    """
    out = _flagged(x, dim, percentile, 2, "transition")
    return out.assign_attrs(long_name="transition record (|acceleration| above percentile)")


def coordination(
    critical: xr.DataArray, *, layer_dim: str = LAYER, index_dim: str = INDEX
) -> xr.Dataset:
    """How many layers are critical together, per record index and summarized.

    Parameters
    ----------
    critical
        Output of :func:`critical_periods` (1.0 / 0.0 / NaN for no record).
    layer_dim
        Dimension reduced over: the score's denominator is the number of
        layers *with a record* at that index (the layers the run has).
    index_dim
        Record-index dimension summarized over.

    Returns
    -------
    xarray.Dataset
        ``coordination_score`` (other dims..., index), and over the other
        dims ``num_coordinated_periods`` (indices with score ``>= 0.5``),
        ``max_coordination`` and ``mean_coordination`` (over the run's records).

    Examples
    --------
    >>> c = xr.DataArray([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [np.nan] * 3], dims=("layer", "index"))
    >>> res = coordination(c)
    >>> res.coordination_score.values.tolist(), int(res.num_coordinated_periods)
    ([1.0, 0.5, 0.0], 2)
    """
    flagged = critical.sum(layer_dim, skipna=True)
    present = critical.count(layer_dim)
    score = (flagged / present.where(present > 0)).rename("coordination_score")
    return xr.Dataset(
        {
            "coordination_score": score.assign_attrs(long_name="share of layers critical"),
            "num_coordinated_periods": (score >= 0.5).sum(index_dim),
            "max_coordination": score.max(index_dim),
            "mean_coordination": score.mean(index_dim),
        }
    )


def loss_correlation(
    critical: xr.DataArray,
    loss: xr.DataArray,
    *,
    dim: str = STEP,
    layer_dim: str = LAYER,
    index_dim: str = INDEX,
) -> xr.DataArray:
    """Mean over layers of the share of a layer's critical indices where the loss falls.

    ``diff(loss)[i] < 0`` is tested at each critical record index ``i``; a
    layer with no critical index counts 0; layers with no record are left out.
    The loss is compacted along ``dim`` like the metric, so it must be
    recorded at the same steps as the metric.

    Examples
    --------
    >>> c = xr.DataArray([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dims=("layer", "index"))
    >>> loss = xr.DataArray([3.0, 2.0, 2.5], dims="step")
    >>> float(loss_correlation(c, loss))
    0.25
    """
    falling = velocity(loss, dim=dim) < 0
    falling = falling.rename({INDEX: index_dim}) if index_dim != INDEX else falling
    falling = falling.reindex({index_dim: critical[index_dim].values}, fill_value=False)
    hit = critical == 1
    n_crit = hit.sum(index_dim)
    share = (hit & falling).sum(index_dim) / n_crit.where(n_crit > 0)
    share = share.fillna(0.0).where(critical.count(index_dim) > 0)
    return share.mean(layer_dim).rename("loss_correlation")


# --- tables -------------------------------------------------------------------------
def _metric(ds: xr.Dataset | xr.DataArray, variable: str) -> xr.DataArray:
    if isinstance(ds, xr.Dataset) and variable not in ds:
        known = ", ".join(sorted(str(v) for v in ds.data_vars if LAYER in ds[v].dims))
        raise InputError(
            f"no metric {variable!r} in the data (metrics: {known})", field="metric", value=variable
        )
    x = ds[variable] if isinstance(ds, xr.Dataset) else ds
    missing = [d for d in (EXPERIMENT, LAYER) if d not in x.dims]
    if missing:
        raise InputError(
            f"a Phase 1 table needs dims {EXPERIMENT!r} and {LAYER!r}",
            field="dims",
            value=tuple(x.dims),
        )
    return x


def _coord(x: xr.DataArray, name: str, fill: object = None) -> np.ndarray:
    if name in x.coords:
        return np.asarray(x[name].values)
    return np.full(x.sizes[EXPERIMENT], fill, dtype=object)


def _labels(values: Any) -> np.ndarray:
    """Labels as an object array (the dtype a DataFrame column of them holds)."""
    return np.asarray(values, dtype=object)


def _series_layout(x: xr.DataArray, dim: str) -> xr.DataArray:
    """``x`` as (experiment, layer, dim); a table has no room for other dims."""
    extra = [d for d in x.dims if d not in (EXPERIMENT, LAYER, dim)]
    if dim not in x.dims or extra:
        raise InputError(
            f"a Phase 1 table needs dims ({EXPERIMENT!r}, {dim!r}, {LAYER!r}) and no others",
            field="dims",
            value=tuple(x.dims),
        )
    return x.transpose(EXPERIMENT, LAYER, dim)


def _present_series(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (experiment, layer) series of an in-memory block that have a record.

    ``values`` is (experiment, layer, step). Returns ``(S, n)`` values and the
    experiment and layer position of each series (in experiment, then layer
    order). Absent layers (all NaN) are dropped before any kernel runs.
    """
    values = np.asarray(values, dtype=np.float64)
    present = ~np.isnan(values).all(axis=-1)
    e, layer = np.nonzero(present)
    return values[e, layer], e, layer


def _ranks(labels: np.ndarray) -> np.ndarray:
    """Position of each label in a stable sort of the labels (the table's row order)."""
    order = np.argsort(np.asarray(labels), kind="stable")
    ranks = np.empty(order.size, dtype=np.int64)
    ranks[order] = np.arange(order.size)
    return ranks


class _Labels:
    """The eager labels of an (experiment, layer, dim) array that the table rows carry."""

    def __init__(self, x: xr.DataArray, dim: str) -> None:
        self.experiment = _labels(x[EXPERIMENT].values)
        self.layer = _labels(x[LAYER].values)
        self.steps = np.asarray(x[dim].values, dtype=np.float64) if dim in x.coords else None
        self.num_steps = np.asarray(_coord(x, NUM_STEPS, np.nan), dtype=np.float64)
        self.arch_name = _labels(_coord(x, ARCH_NAME))
        self.dataset = _labels(_coord(x, DATASET))
        self.exp_rank = _ranks(x[EXPERIMENT].values)
        self.layer_rank = _ranks(x[LAYER].values)


def _jump_block(
    values: np.ndarray,
    sl: slice,
    labels: _Labels,
    threshold: float,
    test: JumpTest | None,
    phase_mode: PhaseMode = "train",
) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows of the jump table for one in-memory block, and their sort keys.

    ``values`` are experiments ``sl`` over (experiment, layer, dim); the keys
    are ``(experiment rank, layer rank, record index)`` per row.
    """
    series, e_of, l_of = _present_series(values)
    eps = metric_eps(values.dtype, None if test is None else test.eps)
    core = jump_core(series, threshold, test, eps=eps)
    r = core["row"]
    e = e_of[r] + sl.start
    layer = l_of[r]
    train_step = None if labels.steps is None else labels.steps[core["position"]]
    out = label_columns(
        core,
        experiment=labels.experiment[e],
        layer=labels.layer[layer],
        arch_name=labels.arch_name[e],
        dataset=labels.dataset[e],
        num_steps=labels.num_steps[e],
        train_step=train_step,
        phase=phase_mode,
    )
    keys = np.stack([labels.exp_rank[e], labels.layer_rank[layer], core["index"]])
    return pd.DataFrame(out), keys


def _experiment_blocks(x: xr.DataArray) -> list[slice]:
    if x.chunks is not None:
        sizes = x.chunksizes[EXPERIMENT]
    else:
        n = x.sizes[EXPERIMENT]
        sizes = tuple([_BLOCK_EXPERIMENTS] * (n // _BLOCK_EXPERIMENTS)) + (
            (n % _BLOCK_EXPERIMENTS,) if n % _BLOCK_EXPERIMENTS else ()
        )
    bounds = np.cumsum((0, *sizes))
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def _map_blocks(func: Any, *arrays: xr.DataArray) -> list[Any]:
    """``func(*values, sl)`` per block ``sl`` of experiments, values as numpy arrays.

    Dask-backed input: one task per chunk along ``experiment`` (each task
    loads only its chunk, so memory is bounded by the chunk), computed
    together. In-memory input: blocks of ``_BLOCK_EXPERIMENTS`` in turn.
    """
    first = arrays[0]
    slices = _experiment_blocks(first) or [slice(0, 0)]
    if first.chunks is not None:
        call = dask.delayed(func, pure=True)
        tasks = [call(*[a.data[sl] for a in arrays], sl) for sl in slices]
        return list(dask.compute(*tasks))
    data = [np.asarray(a.values) for a in arrays]
    return [func(*[d[sl] for d in data], sl) for sl in slices]


def jump_table(
    ds: xr.Dataset | xr.DataArray,
    *,
    threshold: float = 2.0,
    alpha: float | None = None,
    variable: str = STABLE_RANK,
    dim: str = STEP,
    n_surrogates: int = DEFAULT_SURROGATES,
    floor_ulps: float = DEFAULT_FLOOR_ULPS,
    eps: float | None = None,
    seed: int = 0,
    phase: PhaseMode = "train",
) -> pd.DataFrame:
    """The study's jump table (``all_jumps_detailed.csv``), with significance columns.

    Parameters
    ----------
    ds
        Phase 1 data with dims ``experiment``, ``dim`` and ``layer`` (a
        Dataset holding ``variable``, or that DataArray). Coordinates
        ``num_steps``, ``arch_name`` and ``dataset`` on ``experiment`` fill
        the matching columns. numpy- or dask-backed; dask data is processed
        chunk by chunk along ``experiment`` (memory bounded by the chunk).
    threshold
        z-score threshold of the published rule.
    alpha
        ``None``: every z-score jump is listed (the published table) and
        ``significant`` is evaluated at ``DEFAULT_ALPHA`` (0.05). A number:
        only the z-score jumps with ``p_value <= alpha`` above the noise
        floor are listed, and ``significant`` uses ``alpha``.
    variable
        The metric (default ``stable_rank``).
    dim
        The training-step dimension.
    n_surrogates
        Surrogates per series for ``p_value``; ``0`` skips the significance
        test (``p_value``/``noise_floor`` NaN, ``significant`` False) and
        cannot be combined with ``alpha``.
    floor_ulps, eps, seed
        See :func:`~ndt_store.measures.significance.jump_significance`.
    phase
        ``"train"`` (default): ``phase = train_step / num_steps``, the share
        of training done at the jump. ``"index"``: the published formula
        ``index / num_steps`` (right only for runs recorded at every step),
        which reproduces the published table exactly. Either way the
        published formula is also in ``index_phase`` / ``index_phase_category``.

    Returns
    -------
    pandas.DataFrame
        One row per jump, sorted by experiment, layer, record index, with
        :data:`JUMP_COLUMNS`: ``step`` and ``index`` are the record index,
        ``train_step`` the training step of that record.

    Examples
    --------
    >>> x = xr.DataArray(
    ...     np.r_[np.zeros(10), np.ones(10)][None, :, None],
    ...     dims=("experiment", "step", "layer"),
    ...     coords={"experiment": ["run"], "layer": ["fc"], "step": np.arange(0, 100, 5),
    ...             "num_steps": ("experiment", [100])},
    ... )
    >>> cols = ["step", "train_step", "direction", "phase", "index_phase"]
    >>> jump_table(x, n_surrogates=0)[cols].values.tolist()
    [[9, 45.0, 'increase', 0.45, 0.09]]
    """
    block, finish = _jump_plan(
        ds, threshold=threshold, alpha=alpha, variable=variable, dim=dim,
        n_surrogates=n_surrogates, floor_ulps=floor_ulps, eps=eps, seed=seed, phase=phase,
    )  # fmt: skip
    xt = _series_layout(_metric(ds, variable), dim)
    return finish(_map_blocks(block, xt))


def _jump_plan(
    ds: xr.Dataset | xr.DataArray,
    *,
    threshold: float,
    alpha: float | None,
    variable: str,
    dim: str,
    n_surrogates: int,
    floor_ulps: float,
    eps: float | None,
    seed: int,
    phase: PhaseMode = "train",
) -> tuple[Any, Any]:
    """The per-block function and the finishing step of :func:`jump_table`."""
    x = _metric(ds, variable)
    if phase not in ("train", "index"):
        raise InputError("phase must be 'train' or 'index'", field="phase", value=phase)
    if alpha is not None:
        alpha = check_alpha(alpha)
    if alpha is not None and n_surrogates < 1:
        raise InputError("alpha needs the significance test", field="n_surrogates", value=0)
    test = None
    if n_surrogates > 0:
        test = JumpTest(
            alpha=DEFAULT_ALPHA if alpha is None else alpha,
            n_surrogates=n_surrogates,
            floor_ulps=floor_ulps,
            eps=eps,
            seed=seed,
            keep=alpha,
        )
    labels = _Labels(_series_layout(x, dim), dim)

    def block_table(values: np.ndarray, sl: slice) -> tuple[pd.DataFrame, np.ndarray]:
        return _jump_block(values, sl, labels, threshold, test, phase)

    def finish(parts: list[Any]) -> pd.DataFrame:
        table = pd.concat([part for part, _ in parts], ignore_index=True)
        keys = np.concatenate([k for _, k in parts], axis=1)
        if keys.shape[1] > 1:  # rows sorted by experiment, layer, record index (stable)
            order = np.lexsort(keys[::-1])
            if np.any(order[1:] < order[:-1]):
                table = table.take(order).reset_index(drop=True)
        return table[list(JUMP_COLUMNS)]

    return block_table, finish


def critical_period_table(
    ds: xr.Dataset,
    *,
    percentile: float = 90,
    variable: str = STABLE_RANK,
    dim: str = STEP,
) -> pd.DataFrame:
    """The study's critical-period table (``critical_periods_detailed.csv``), one row per run.

    Parameters
    ----------
    ds
        Phase 1 Dataset with ``variable`` over (``experiment``, ``dim``,
        ``layer``) and ``loss`` over (``experiment``, ``dim``); numpy- or
        dask-backed (reductions run lazily, chunk by chunk, then one compute).
    percentile
        Percentile of the critical and transition rules.
    variable, dim
        The metric and the training-step dimension.

    Returns
    -------
    pandas.DataFrame
        Columns ``experiment, arch_name, dataset, total_critical_steps,
        total_transitions, num_coordinated_periods, max_coordination,
        mean_coordination, loss_correlation``, sorted by experiment.

    Examples
    --------
    >>> sr = np.r_[0.0, 0, 0, 1, 1, 1][None, :, None]
    >>> ds = xr.Dataset(
    ...     {"stable_rank": (("experiment", "step", "layer"), sr),
    ...      "loss": (("experiment", "step"), np.r_[6.0, 5, 4, 3, 2, 1][None, :])},
    ...     coords={"experiment": ["run"], "layer": ["fc"]},
    ... )
    >>> row = critical_period_table(ds).iloc[0]
    >>> int(row.total_critical_steps), float(row.loss_correlation)
    (1, 1.0)
    """
    block, finish, xt, loss = _period_plan(ds, percentile=percentile, variable=variable, dim=dim)
    return finish(_map_blocks(block, xt, loss))


def _period_plan(
    ds: xr.Dataset, *, percentile: float, variable: str, dim: str
) -> tuple[Any, Any, xr.DataArray, xr.DataArray]:
    """Per-block function, finishing step and inputs of :func:`critical_period_table`."""
    x = _metric(ds, variable)
    if LOSS not in ds:
        raise InputError(f"a critical-period table needs {LOSS!r}", field=LOSS)
    xt = _series_layout(x, dim)
    loss = ds[LOSS]
    if set(loss.dims) - {EXPERIMENT, dim}:
        raise InputError(
            f"{LOSS!r} must be over ({EXPERIMENT!r}, {dim!r})", field=LOSS, value=tuple(loss.dims)
        )
    missing = {d: xt[d].values if d in xt.coords else xt.sizes[d] for d in (EXPERIMENT, dim)}
    missing = {d: v for d, v in missing.items() if d not in loss.dims}
    loss = (loss.expand_dims(missing) if missing else loss).transpose(EXPERIMENT, dim)

    def block_summary(values: np.ndarray, loss_values: np.ndarray, sl: slice) -> tuple:
        series, e, _ = _present_series(values)
        loss_values = np.asarray(loss_values, dtype=np.float64)
        return _k.critical_summary(series, loss_values, e, values.shape[0], q=float(percentile))

    def finish(parts: list[Any]) -> pd.DataFrame:
        columns = [np.concatenate(col) for col in zip(*parts, strict=True)]
        table = pd.DataFrame(
            {
                "experiment": np.asarray(x[EXPERIMENT].values, dtype=object),
                "arch_name": _coord(x, ARCH_NAME),
                "dataset": _coord(x, DATASET),
                **dict(zip(CRITICAL_COLUMNS[3:], columns, strict=True)),
            }
        )
        for name in ("total_critical_steps", "total_transitions", "num_coordinated_periods"):
            table[name] = table[name].astype(np.int64)
        return table.sort_values("experiment", kind="stable").reset_index(drop=True)

    return block_summary, finish, xt, loss


def phase1_tables(
    ds: xr.Dataset,
    *,
    threshold: float = 2.0,
    percentile: float = 90,
    alpha: float | None = None,
    variable: str = STABLE_RANK,
    dim: str = STEP,
    n_surrogates: int = DEFAULT_SURROGATES,
    floor_ulps: float = DEFAULT_FLOOR_ULPS,
    eps: float | None = None,
    seed: int = 0,
    phase: PhaseMode = "train",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both Phase 1 tables in one pass: each block of experiments is read once.

    Equal to ``(jump_table(ds, ...), critical_period_table(ds, ...))`` with the
    same options, at the cost of reading ``variable`` and ``loss`` once instead
    of twice (and one dask computation instead of two).

    Examples
    --------
    >>> sr = np.r_[np.zeros(10), np.ones(10)][None, :, None]
    >>> ds = xr.Dataset(
    ...     {"stable_rank": (("experiment", "step", "layer"), sr),
    ...      "loss": (("experiment", "step"), np.linspace(2, 1, 20)[None, :])},
    ...     coords={"experiment": ["run"], "layer": ["fc"], "step": np.arange(20)},
    ... )
    >>> jumps, periods = phase1_tables(ds, n_surrogates=0)
    >>> len(jumps), int(periods.total_critical_steps[0])
    (1, 1)
    """
    jump_block, jump_finish = _jump_plan(
        ds, threshold=threshold, alpha=alpha, variable=variable, dim=dim,
        n_surrogates=n_surrogates, floor_ulps=floor_ulps, eps=eps, seed=seed, phase=phase,
    )  # fmt: skip
    period_block, period_finish, xt, loss = _period_plan(
        ds, percentile=percentile, variable=variable, dim=dim
    )

    def both(values: np.ndarray, loss_values: np.ndarray, sl: slice) -> tuple[Any, Any]:
        return jump_block(values, sl), period_block(values, loss_values, sl)

    parts = _map_blocks(both, xt, loss)
    return jump_finish([j for j, _ in parts]), period_finish([p for _, p in parts])
