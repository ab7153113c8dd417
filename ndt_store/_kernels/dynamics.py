"""Phase 1 dynamics kernels: velocity, z-score jumps, critical periods, surrogate p-values.

Raw numpy arrays in, raw numpy arrays out. Every kernel works on the **last**
axis (the series) and batches over all leading axes. A series may be padded
with NaN: :func:`compact` moves each series' values to the front (order kept),
after which a series of ``n`` records occupies positions ``0..n-1`` and every
later position is NaN. The other kernels expect that compacted layout; NaN
propagates through ``np.diff`` so padding never creates a value.

The z-score jump rule, the window speed and the linear-interpolation
percentile reproduce, operation for operation, the study's per-series numpy
code (``np.diff``, ``v.mean()``, ``v.std()``, ``np.percentile``), so that
unpadded series give bit-identical results.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_EPSILON",
    "MAD_TO_SIGMA",
    "compact",
    "compact_coordinate",
    "critical_mask",
    "critical_summary",
    "exceeds_percentile",
    "first_difference",
    "jump_rows",
    "label_keys",
    "mix_keys",
    "nan_percentile",
    "noise_floor",
    "pad_last",
    "phase_randomized",
    "record_mask",
    "robust_z",
    "stopping_plan",
    "surrogate_pvalues",
    "uniform_from_keys",
    "window_speed",
    "zscore",
    "zscore_jumps",
]

MAD_TO_SIGMA = 1.482602218505602
"""``1 / Φ⁻¹(3/4)``: median absolute deviation → Gaussian standard deviation."""

_MEANAD_TO_SIGMA = math.sqrt(math.pi / 2.0)
_SURROGATE_BLOCK = 32  # surrogates drawn at once for a group of series of equal length
_SERIES_BLOCK = 64  # series per surrogate pass: 64 x 32 x m float64 (~6.5 MB at m=400)
_FIRST_LOOK = 25  # first surrogate count at which a sequential test may stop
DEFAULT_EPSILON = 1e-3
"""Error budget of each kind of early decision of the sequential test (all looks together)."""
_ROW_BLOCK = 128  # series per pass of the table kernels: temporaries stay small and in cache


def _float(x: npt.ArrayLike) -> np.ndarray:
    a = np.asarray(x)
    return a if a.dtype.kind == "f" else a.astype(np.float64)


# --- layout -------------------------------------------------------------------
def compact(x: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move each series' non-NaN values to the front, keeping their order.

    Parameters
    ----------
    x
        ``(..., n)`` values; NaN marks a missing record.

    Returns
    -------
    values
        ``(..., n)``: the valid values first (in order), then NaN. When every
        series is already in that layout this is ``x`` itself (as float), not a
        copy.
    order
        ``(..., n)`` int: ``values = take_along_axis(x, order, -1)``.
    count
        ``(...)`` int: number of valid values per series.

    Examples
    --------
    >>> v, o, c = compact(np.array([np.nan, 1.0, np.nan, 3.0]))
    >>> v.tolist(), o.tolist(), int(c)
    ([1.0, 3.0, nan, nan], [1, 3, 0, 2], 2)
    """
    a = _float(x)
    n = a.shape[-1]
    missing = np.isnan(a)
    count = n - missing.sum(axis=-1)
    order = np.empty(a.shape, dtype=np.intp)
    order[...] = np.arange(n, dtype=np.intp)
    if n == 0 or np.all(count == n):  # nothing to move: the common case
        return a, order, count
    flat_missing = missing.reshape(-1, n)
    # only rows with a record after a gap need a sort (trailing NaN is already compact)
    gappy = np.flatnonzero((flat_missing[:, :-1] & ~flat_missing[:, 1:]).any(axis=-1))
    if gappy.size == 0:
        return a, order, count
    values = a.copy()
    flat_values = values.reshape(-1, n)
    flat_order = order.reshape(-1, n)
    moved = np.argsort(flat_missing[gappy], axis=-1, kind="stable")
    flat_order[gappy] = moved
    flat_values[gappy] = np.take_along_axis(a.reshape(-1, n)[gappy], moved, axis=-1)
    return values, order, count


def _length_groups(count: np.ndarray, width: int) -> list[tuple[int, slice | np.ndarray]]:
    """``(length, rows)`` for each distinct positive series length of a flat batch.

    ``rows`` is a slice when every series has that length (no gather needed).
    """
    if count.size and count[0] == width and np.all(count == width):
        return [(width, slice(None))] if width > 0 else []
    lengths = np.unique(count[count > 0])
    return [(int(n), np.flatnonzero(count == n)) for n in lengths]


def compact_coordinate(x: npt.ArrayLike, coord: npt.ArrayLike) -> np.ndarray:
    """The coordinate value (e.g. training step) of each compacted record, NaN past the end.

    Parameters
    ----------
    x
        ``(..., n)`` values, NaN where a record is missing.
    coord
        ``(n,)`` coordinate of the last axis of ``x`` (numeric).

    Examples
    --------
    >>> compact_coordinate(np.array([np.nan, 1.0, 2.0]), np.array([0, 5, 10])).tolist()
    [5.0, 10.0, nan]
    """
    _, order, count = compact(x)
    c = np.asarray(coord, dtype=np.float64)[order]
    return np.where(np.arange(c.shape[-1]) < count[..., None], c, np.nan)


def record_mask(count: npt.ArrayLike, length: int) -> np.ndarray:
    """Boolean ``(..., length)`` mask, True at positions ``< count``.

    Examples
    --------
    >>> record_mask(np.array([2, 0]), 3).tolist()
    [[True, True, False], [False, False, False]]
    """
    return np.arange(length) < np.asarray(count)[..., None]


def pad_last(a: npt.ArrayLike, length: int, fill: float | bool = np.nan) -> np.ndarray:
    """Pad the last axis of ``a`` at its end with ``fill`` up to ``length``.

    Examples
    --------
    >>> pad_last(np.array([1.0, 2.0]), 4).tolist()
    [1.0, 2.0, nan, nan]
    """
    arr = np.asarray(a)
    extra = length - arr.shape[-1]
    if extra <= 0:
        return arr
    tail = np.full((*arr.shape[:-1], extra), fill, dtype=np.result_type(arr, np.asarray(fill)))
    return np.concatenate([arr, tail], axis=-1)


def first_difference(x: npt.ArrayLike, order: int = 1) -> np.ndarray:
    """``order``-th difference of each compacted series (NaN where it runs past the end).

    Examples
    --------
    >>> first_difference(np.array([1.0, 4.0, 9.0, np.nan])).tolist()
    [3.0, 5.0, nan]
    """
    return np.diff(_float(x), n=order, axis=-1)


# --- the published z-score rule ----------------------------------------------
def zscore(v: npt.ArrayLike) -> np.ndarray:
    """``|v - mean(v)| / std(v)`` per series (population std), ignoring trailing NaN.

    ``v`` holds each series' values first, then NaN (the compacted layout).
    Series of equal length are reduced together exactly as numpy's
    ``mean``/``std`` reduce one series (same pairwise sums over the same
    values), so the result equals ``np.abs(v - v.mean()) / v.std()`` of each
    series bit for bit, whatever its padding. A series with zero spread gives
    NaN (never a jump).

    Examples
    --------
    >>> zscore(np.array([0.0, 0.0, 0.0, 4.0, np.nan])).round(6).tolist()
    [0.57735, 0.57735, 0.57735, 1.732051, nan]
    """
    a = _float(v)
    m = a.shape[-1]
    if a.size == 0:
        return np.full(a.shape, np.nan)
    flat = a.reshape(-1, m)
    count = m - np.isnan(flat).sum(axis=-1)
    z = np.full(flat.shape, np.nan)
    for n, rows in _length_groups(count, m):  # one pass per distinct series length
        block = flat[rows, :n]
        centered = block - block.mean(axis=-1, keepdims=True)
        std = block.std(axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            z[rows, :n] = np.where(std > 0, np.abs(centered) / std, np.nan)
    return z.reshape(a.shape)


def window_speed(x: npt.ArrayLike, count: npt.ArrayLike) -> np.ndarray:
    """The study's local speed at each velocity index ``i`` of a compacted series.

    ``|x[e-1] - x[s]| / (e - s)`` with ``s = max(0, i-2)``, ``e = min(n, i+3)``
    and ``n`` the series' record count; NaN for ``i >= n - 1``.

    Examples
    --------
    >>> window_speed(np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]), np.array(6)).tolist()
    [0.6666666666666666, 0.75, 0.8, 0.8, 0.75]
    """
    a = _float(x)
    m = a.shape[-1]
    if m < 2:
        return np.full((*a.shape[:-1], max(m - 1, 0)), np.nan)
    n = np.asarray(count)[..., None]
    i = np.arange(m - 1)
    s = np.maximum(0, i - 2)
    # x[s] and x[i+2] as slices (no gather): s = 0, 0, 0, 1, 2, ...
    start = np.empty((*a.shape[:-1], m - 1))
    start[..., :3] = a[..., :1]
    start[..., 3:] = a[..., 1 : m - 3]
    end = np.empty((*a.shape[:-1], m - 1))
    end[..., : m - 2] = a[..., 2:]
    end[..., m - 2 :] = np.nan
    # where the window is cut by the series' end, x[e-1] is its last value
    cut = i + 3 > n
    if cut.any():
        last = np.take_along_axis(a, np.clip(n - 1, 0, None), axis=-1)
        end = np.where(cut, last, end)
    width = np.where(cut, n - s, i + 3 - s)
    with np.errstate(divide="ignore", invalid="ignore"):
        speed = np.abs(end - start) / width
    return np.where(i < n - 1, speed, np.nan)


def zscore_jumps(
    x: npt.ArrayLike, threshold: float = 2.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The published jump rule on series padded anywhere with NaN.

    Parameters
    ----------
    x
        ``(..., n)`` metric values in record order; NaN marks missing records.
    threshold
        A velocity index is a jump where its z-score exceeds this.

    Returns
    -------
    velocity, z, is_jump, magnitude, speed, direction
        ``(..., n-1)`` each, indexed by record index ``i`` of the compacted
        series; ``direction`` is +1 where ``velocity > 0`` else -1 (0 past the
        end); ``is_jump`` is False past the end.

    Examples
    --------
    >>> v, z, j, m, s, d = zscore_jumps(np.array([0.0, 0, 0, 0, 5, 5, 5, 5]))
    >>> np.flatnonzero(j).tolist(), d[3].item()
    ([3], 1)
    """
    values, _, count = compact(x)
    velocity = first_difference(values)
    z = zscore(velocity)
    with np.errstate(invalid="ignore"):
        is_jump = z > threshold
    magnitude = np.abs(velocity)
    speed = window_speed(values, count)
    valid = ~np.isnan(velocity)
    direction = np.where(valid, np.where(velocity > 0, 1, -1), 0).astype(np.int8)
    return velocity, z, is_jump, magnitude, speed, direction


def jump_rows(
    x: npt.ArrayLike, threshold: float = 2.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The published jump rule, evaluated only where it fires (sparse output).

    Same rule and numbers as :func:`zscore_jumps`, but only the jumps are
    returned, and the series are processed a few at a time so that the
    temporaries stay small (much faster on many series).

    Parameters
    ----------
    x
        ``(S, n)`` metric series in record order; NaN marks missing records.
    threshold
        A velocity index is a jump where its z-score exceeds this.

    Returns
    -------
    row, index, velocity, z, magnitude, speed, position
        One entry per jump, ordered by row then record index: the series,
        the record index ``i``, ``v[i]``, its z-score, ``|v[i]|``, the window
        speed, and the position of record ``i`` along the last axis of ``x``.

    Examples
    --------
    >>> row, i, v, z, m, s, pos = jump_rows(np.array([[0.0, 0, np.nan, 0, 0, 5, 5, 5, 5]]))
    >>> row.tolist(), i.tolist(), v.tolist(), pos.tolist()
    ([0], [3], [5.0], [4])
    """
    a = _float(x)
    empty_int, empty = np.zeros(0, dtype=np.intp), np.zeros(0)
    cols: list[list[np.ndarray]] = [[empty_int], [empty_int]] + [[empty] for _ in range(4)]
    cols.append([empty_int])
    for start in range(0, a.shape[0], _ROW_BLOCK):
        values, order, count = compact(a[start : start + _ROW_BLOCK])
        velocity = np.diff(values, axis=-1)
        z = zscore(velocity)
        with np.errstate(invalid="ignore"):
            r, i = np.nonzero(z > threshold)
        v = velocity[r, i]
        # speed |x[e-1] - x[s]| / (e - s), s = max(0, i-2), e = min(count, i+3)
        s = np.maximum(i - 2, 0)
        e = np.minimum(count[r], i + 3)
        speed = np.abs(values[r, e - 1] - values[r, s]) / (e - s)
        found = (r + start, i, v, z[r, i], np.abs(v), speed, order[r, i])
        for col, part in zip(cols, found, strict=True):
            col.append(part)
    row, index, velocity_, z_, magnitude, speed_, position = (np.concatenate(c) for c in cols)
    return row, index, velocity_, z_, magnitude, speed_, position


# --- percentiles and critical periods -----------------------------------------
def nan_percentile(a: npt.ArrayLike, q: float) -> np.ndarray:
    """Per-series ``np.percentile(values, q)`` (linear method) ignoring NaN.

    Vectorized over leading axes (one sort), and numerically identical to
    numpy's linear interpolation on the valid values. All-NaN series give NaN.

    Examples
    --------
    >>> nan_percentile(np.array([[1.0, 2.0, 3.0, 4.0], [1.0, np.nan, 3.0, np.nan]]), 90).tolist()
    [3.7, 2.8]
    """
    arr = _float(a)
    m = arr.shape[-1]
    if arr.size == 0:
        return np.full(arr.shape[:-1], np.nan)
    flat = arr.reshape(-1, m)
    count = m - np.isnan(flat).sum(axis=-1)
    out = np.full(flat.shape[0], np.nan)
    quant = np.true_divide(q, 100)
    # one sort (NaN goes last) and one pass per distinct series length; a sort, not a
    # partition: introselect is very slow on series with many equal changes
    srt = np.sort(flat, axis=-1)
    for n, rows in _length_groups(count, m):
        virtual = (np.float64(n) - 1) * quant
        prev = np.floor(virtual)
        above = virtual >= n - 1
        lo_i = n - 1 if above else int(prev)
        hi_i = n - 1 if above else int(prev) + 1
        lo, hi = srt[rows, lo_i], srt[rows, hi_i]
        gamma = virtual - prev
        diff = hi - lo
        out[rows] = hi - diff * (1 - gamma) if gamma >= 0.5 else lo + diff * gamma
    return out.reshape(arr.shape[:-1])


def exceeds_percentile(a: npt.ArrayLike, q: float, length: int | None = None) -> np.ndarray:
    """Float mask of ``a > percentile(a, q)`` per series: 1.0 / 0.0, NaN where ``a`` is NaN.

    Parameters
    ----------
    a
        ``(..., m)`` values, NaN-padded.
    q
        Percentile in ``[0, 100]``.
    length
        Pad the result's last axis at its end to this length. Padding
        positions that are still records of the series are filled by the
        caller; here they are NaN.

    Examples
    --------
    >>> exceeds_percentile(np.array([1.0, 2.0, 3.0, 10.0, np.nan]), 50).tolist()
    [0.0, 0.0, 1.0, 1.0, nan]
    """
    arr = _float(a)
    thr = nan_percentile(arr, q)[..., None]
    with np.errstate(invalid="ignore"):
        mask = np.where(np.isnan(arr), np.nan, (arr > thr).astype(np.float64))
    return mask if length is None else pad_last(mask, length)


def _critical_from_values(
    values: np.ndarray, count: np.ndarray, order: int, q: float
) -> np.ndarray:
    n = values.shape[-1]
    change = np.abs(first_difference(values, order))
    mask = exceeds_percentile(change, q, length=n)
    # records at the end of the series that have no difference of this order
    tail = record_mask(count, n) & np.isnan(mask)
    return np.where(tail, 0.0, mask)


def critical_mask(x: npt.ArrayLike, q: float = 90.0, order: int = 1) -> np.ndarray:
    """Critical (``order=1``) or transition (``order=2``) record indices of each series.

    Index ``i`` is flagged where ``|Δᵒʳᵈᵉʳ x[i]|`` exceeds the series' ``q``-th
    percentile of ``|Δᵒʳᵈᵉʳ x|``.

    Returns
    -------
    numpy.ndarray
        ``(..., n)`` float: 1.0 flagged, 0.0 a record that is not flagged,
        NaN past the series' last record.

    Examples
    --------
    >>> critical_mask(np.array([0.0, 0, 0, 0, 5, 5, np.nan]), 50).tolist()
    [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, nan]
    """
    values, _, count = compact(x)
    return _critical_from_values(values, count, order, q)


def _group_sum(a: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum the rows of ``a`` (``(S, ...)``) per group id (nondecreasing ``group``)."""
    out = np.zeros((n_groups, *a.shape[1:]), dtype=np.result_type(a.dtype, np.int64))
    if group.size:
        starts = np.concatenate(([0], np.flatnonzero(group[1:] != group[:-1]) + 1))
        out[group[starts]] = np.add.reduceat(a, starts, axis=0, dtype=out.dtype)
    return out


def critical_summary(
    x: npt.ArrayLike,
    loss: npt.ArrayLike,
    group: npt.ArrayLike,
    n_groups: int,
    q: float = 90.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The critical-period table's numbers per run, from the runs' layer series.

    Parameters
    ----------
    x
        ``(S, n)`` metric series (NaN marks a missing record), one per layer
        of a run.
    loss
        ``(G, n)`` loss series of the runs, recorded at the same positions.
    group
        ``(S,)`` run of each series, integers in ``[0, G)``.
    n_groups
        ``G``, the number of runs.
    q
        Percentile of the critical (``|Δx|``) and transition (``|Δ²x|``) rules.

    Returns
    -------
    total_critical, total_transitions, num_coordinated
        ``(G,)`` int counts per run.
    max_coordination, mean_coordination, loss_correlation
        ``(G,)`` float each. The coordination score of record index ``i`` is the
        share of the run's layers with a record at ``i`` that are critical
        there; periods are indices with score ``>= 0.5``; max and mean run
        over the indices where some layer has a record. The loss correlation
        is the mean over layers of the share of their critical indices where
        ``Δloss < 0`` (0 for a layer with none). A run without series gets
        zero counts and NaN scores.

    Examples
    --------
    >>> x = np.array([[0.0, 0, 0, 1, 1, 1], [0.0, 0, 1, 1, 1, 1]])
    >>> loss = np.array([[6.0, 5, 4, 3, 2, 1]])
    >>> [float(v[0]) for v in critical_summary(x, loss, np.array([0, 0]), 1)]
    [2.0, 0.0, 2.0, 0.5, 0.16666666666666666, 1.0]
    """
    a = _float(x)
    n = a.shape[-1]
    grp = np.asarray(group, dtype=np.intp).reshape(-1)
    if grp.size > 1 and np.any(grp[1:] < grp[:-1]):
        by_group = np.argsort(grp, kind="stable")
        grp, a = grp[by_group], a[by_group]
    # loss: falling at record index i when loss[i+1] < loss[i] (over the run's records)
    lv = compact(loss)[0]
    falling = np.zeros(lv.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        falling[:, :-1] = np.diff(lv, axis=-1) < 0
    n_series = a.shape[0]
    n_hit = np.zeros(n_series, dtype=np.int64)
    n_trans = np.zeros(n_series, dtype=np.int64)
    n_fall = np.zeros(n_series, dtype=np.int64)
    count = np.zeros(n_series, dtype=np.int64)
    flagged = np.zeros((n_groups, n), dtype=np.int64)
    present = np.zeros((n_groups, n), dtype=np.int64)
    for start in range(0, n_series, _ROW_BLOCK):  # a few series at a time: small temporaries
        sl = slice(start, start + _ROW_BLOCK)
        values, _, cnt = compact(a[sl])
        g = grp[sl]
        # critical: |Δx[i]| above the series' percentile (NaN never counts)
        hit = np.zeros(values.shape, dtype=bool)
        change = np.abs(np.diff(values, axis=-1))
        with np.errstate(invalid="ignore"):
            np.greater(change, nan_percentile(change, q)[:, None], out=hit[:, :-1])
            change2 = np.abs(np.diff(values, n=2, axis=-1))
            n_trans[sl] = (change2 > nan_percentile(change2, q)[:, None]).sum(axis=-1)
        n_hit[sl] = hit.sum(axis=-1)
        n_fall[sl] = (hit & falling[g]).sum(axis=-1)
        count[sl] = cnt
        first = np.concatenate(([0], np.flatnonzero(g[1:] != g[:-1]) + 1))
        flagged[g[first]] += np.add.reduceat(hit, first, axis=0, dtype=np.int64)
        present[g[first]] += np.add.reduceat(record_mask(cnt, n), first, axis=0, dtype=np.int64)
    total_critical = _group_sum(n_hit, grp, n_groups)
    total_transitions = _group_sum(n_trans, grp, n_groups)
    has = present > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(has, flagged / present, np.nan)
        num_coordinated = (score >= 0.5).sum(axis=-1)
    n_has = has.sum(axis=-1)
    any_record = n_has > 0
    top = np.where(has, score, -np.inf).max(axis=-1, initial=-np.inf)
    max_coordination = np.where(any_record, top, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_coordination = np.where(
            any_record, np.where(has, score, 0.0).sum(axis=-1) / n_has, np.nan
        )
        share = np.where(n_hit > 0, n_fall / n_hit, 0.0)
    share = np.where(count > 0, share, np.nan)
    has_share = ~np.isnan(share)
    n_layers = _group_sum(has_share, grp, n_groups)
    share_sum = np.bincount(grp, weights=np.where(has_share, share, 0.0), minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss_correlation = np.where(n_layers > 0, share_sum / n_layers, np.nan)
    return (
        total_critical,
        total_transitions,
        num_coordinated,
        max_coordination,
        mean_coordination,
        loss_correlation,
    )


# --- significance ----------------------------------------------------------------
def robust_z(v: npt.ArrayLike) -> np.ndarray:
    """``|v - median(v)| / σ̂`` per series (no NaN), σ̂ = 1.4826·MAD.

    When half or more of a series sits exactly at its median (MAD = 0),
    σ̂ falls back to ``sqrt(π/2)``·mean absolute deviation; a constant series
    gives 0 everywhere.

    Examples
    --------
    >>> robust_z(np.array([1.0, -1.0, 1.0, -1.0, 9.0])).round(3).tolist()
    [0.0, 0.674, 0.0, 0.674, 2.698]
    """
    a = _float(v)
    med = np.median(a, axis=-1, keepdims=True)
    dev = np.abs(a - med)
    mad = np.median(dev, axis=-1, keepdims=True) * MAD_TO_SIGMA
    meanad = dev.mean(axis=-1, keepdims=True) * _MEANAD_TO_SIGMA
    scale = np.where(mad > 0, mad, meanad)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = dev / scale
    return np.where(scale > 0, z, 0.0)


_SM_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_SM_M1 = np.uint64(0xBF58476D1CE4E5B9)
_SM_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
        z = np.asarray(z, dtype=np.uint64) + _SM_GAMMA
        z = (z ^ (z >> np.uint64(30))) * _SM_M1
        z = (z ^ (z >> np.uint64(27))) * _SM_M2
        return z ^ (z >> np.uint64(31))


def label_keys(labels: npt.ArrayLike) -> np.ndarray:
    """Stable 64-bit keys of labels (BLAKE2b of their ``str``), for seeding per series.

    Examples
    --------
    >>> k = label_keys(np.array(["fc", "fc", "input_proj"]))
    >>> k.dtype.name, bool(k[0] == k[1]), bool(k[0] == k[2])
    ('uint64', True, False)
    """
    flat = np.asarray(labels, dtype=object).ravel()
    keys = [
        int.from_bytes(hashlib.blake2b(str(item).encode(), digest_size=8).digest(), "little")
        for item in flat
    ]
    return np.array(keys, dtype=np.uint64).reshape(np.shape(labels))


def mix_keys(a: npt.ArrayLike, b: npt.ArrayLike) -> np.ndarray:
    """Combine two broadcastable uint64 key arrays into one (order matters).

    Examples
    --------
    >>> bool(mix_keys(np.uint64(1), np.uint64(2)) != mix_keys(np.uint64(2), np.uint64(1)))
    True
    """
    return _splitmix64(np.asarray(a, dtype=np.uint64)) ^ np.asarray(b, dtype=np.uint64)


def uniform_from_keys(keys: npt.ArrayLike, seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform ``[0, 1)`` draws of shape ``(*keys.shape, *shape)`` from a counter-based generator.

    Draw ``c`` of series ``k`` is ``splitmix64(splitmix64(seed ^ k) + c)``: it
    depends only on the seed, the series' key and ``c``, never on which other
    series are computed alongside (so chunking cannot change results).

    Examples
    --------
    >>> u = uniform_from_keys(np.array([1, 2], dtype=np.uint64), 0, (3,))
    >>> u.shape, bool(((u >= 0) & (u < 1)).all())
    ((2, 3), True)
    >>> bool((uniform_from_keys(np.array([2], dtype=np.uint64), 0, (3,)) == u[1]).all())
    True
    """
    k = np.asarray(keys, dtype=np.uint64)
    base = _splitmix64(k ^ np.uint64(seed % 2**64))
    counter = np.arange(math.prod(shape), dtype=np.uint64).reshape(shape)
    with np.errstate(over="ignore"):
        start = base.reshape(*k.shape, *([1] * len(shape))) + counter
    bits = _splitmix64(start)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _phase_stream_key(m: int) -> np.ndarray:
    """The key of the phase stream shared by every series of length ``m``."""
    return label_keys(np.array([f"phase-randomized surrogates of length {m}"]))


def _amplitudes(v: np.ndarray) -> np.ndarray:
    """``|rfft(v)|`` per series, the zero-frequency (and even-length Nyquist) term signed."""
    m = v.shape[-1]
    spec = np.fft.rfft(v, axis=-1)
    amp = np.abs(spec)
    amp[:, 0] = spec[:, 0].real  # the mean is kept as it is
    if m % 2 == 0:
        amp[:, -1] = spec[:, -1].real  # the Nyquist term stays real
    return amp


def _surrogate_phases(m: int, seed: int, start: int, count: int) -> np.ndarray:
    """``e^{iφ}`` of surrogates ``start..start+count-1`` of length ``m``: ``(count, m//2+1)``.

    ``φ[b, k] = 2π·u[b·(m//2+1) + k]`` from the counter-based stream keyed by the
    length; no phase at zero frequency or (even ``m``) Nyquist.
    """
    n_freq = m // 2 + 1
    u = _uniform_counters(_phase_stream_key(m), seed, start * n_freq, count * n_freq)
    rotation = np.exp(2j * np.pi * u.reshape(count, n_freq))
    rotation[:, 0] = 1.0
    if m % 2 == 0:
        rotation[:, -1] = 1.0
    return rotation


def _uniform_counters(keys: np.ndarray, seed: int, start: int, count: int) -> np.ndarray:
    """Draws ``start..start+count-1`` of the counter-based stream of one key (see below)."""
    base = _splitmix64(np.asarray(keys, dtype=np.uint64).reshape(-1)[:1] ^ np.uint64(seed % 2**64))
    counter = np.arange(start, start + count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = _splitmix64(base + counter)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def phase_randomized(
    v: npt.ArrayLike,
    keys: npt.ArrayLike | None = None,
    n_surrogates: int = 99,
    seed: int = 0,
    *,
    start: int = 0,
) -> np.ndarray:
    """Gaussian surrogates of ``(S, m)`` NaN-free series: same amplitude spectrum, random phases.

    Returns ``(S, n_surrogates, m)``: surrogates ``start .. start+n_surrogates-1``.
    The mean (zero frequency) and, for even ``m``, the real Nyquist term are
    kept; every other Fourier phase is drawn uniformly. The phases of surrogate
    ``b`` depend only on ``seed``, the series length ``m`` and ``b``: every
    series of that length is randomized with the same phases, so the
    surrogates of a series never depend on which other series are computed
    alongside, and the phases are drawn once for all of them. ``keys`` is
    accepted for compatibility and not used.

    Examples
    --------
    >>> v = np.sin(np.arange(16.0))[None, :]
    >>> sur = phase_randomized(v, None, 3, seed=0)
    >>> sur.shape, bool(np.allclose(np.abs(np.fft.rfft(sur)), np.abs(np.fft.rfft(v))[:, None]))
    ((1, 3, 16), True)
    >>> later = phase_randomized(v, None, 2, seed=0, start=1)  # surrogates 1 and 2 alone
    >>> bool(np.allclose(sur[:, 1:], later))
    True
    """
    a = _float(v)
    m = a.shape[-1]
    rotation = _surrogate_phases(m, seed, start, n_surrogates)
    return np.fft.irfft(_amplitudes(a)[:, None, :] * rotation, n=m, axis=-1)


def _max_robust_z(y: np.ndarray) -> np.ndarray:
    """``robust_z(y).max(-1)`` for ``(R, m)`` float32 rows, overwriting ``y``.

    One in-place sort per row gives the median; the deviations ``|y - median|``
    then fall and rise along the sorted row, so the ``k``-th smallest of them
    (the MAD's order statistic) is the smallest, over windows of ``k + 1``
    neighbours, of the larger deviation at the window's two ends, and the
    largest deviation sits at one end of the row. Every value is one of the
    float32 deviations ``robust_z`` would select: the result is what two
    selections (median, then MAD) give, at about half their cost.
    """
    m = y.shape[-1]
    half = m // 2
    y.sort(axis=-1)
    med = y[:, half] if m % 2 else (y[:, half] + y[:, half - 1]) / 2
    y -= med[:, None]
    np.abs(y, out=y)  # y is now |y - median|, falling then rising along each row

    def smallest(k: int) -> np.ndarray:  # the k-th smallest deviation (from 0) per row
        return np.maximum(y[:, : m - k], y[:, k:]).min(axis=-1)

    mad = smallest(half) if m % 2 else (smallest(half) + smallest(half - 1)) / 2
    top = np.maximum(y[:, 0], y[:, -1])
    scale = mad * np.float32(MAD_TO_SIGMA)
    flat = ~(scale > 0)
    if flat.any():  # half or more of a row at its median: mean absolute deviation instead
        scale[flat] = y[flat].mean(axis=-1) * np.float32(_MEANAD_TO_SIGMA)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = top / scale
    return np.where(scale > 0, z, 0.0)


def _binomial_pmf(n: int, p: float) -> list[float]:
    log_p, log_q = math.log(p), math.log1p(-p)
    top = math.lgamma(n + 1)
    return [
        math.exp(top - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p + (n - j) * log_q)
        for j in range(n + 1)
    ]


def _binomial_limits(n: int, p: float, level: float) -> tuple[int, int]:
    """``(low, high)``: the largest ``k`` with ``P(Bin(n, p) <= k) <= level`` (-1 if none)
    and the smallest ``k`` with ``P(Bin(n, p) >= k) <= level`` (``n + 1`` if none)."""
    pmf = _binomial_pmf(n, p)
    low, cdf = -1, 0.0
    while low < n and cdf + pmf[low + 1] <= level:
        cdf += pmf[low + 1]
        low += 1
    high, sf = n + 1, 0.0
    while high > 0 and sf + pmf[high - 1] <= level:
        sf += pmf[high - 1]
        high -= 1
    return low, high


@functools.lru_cache(maxsize=64)
def stopping_plan(
    n_surrogates: int, alpha: float, epsilon: float
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Where the sequential test looks, and its two stopping rules at each look.

    Returns
    -------
    looks
        Cumulative surrogate counts ``L`` (25, 50, 100, ... below
        ``n_surrogates``) after which the rules are checked.
    high
        Per look: an index with ``k >= high[j]`` exceedances among ``L`` is
        decided *not significant*: ``P(Binomial(L, alpha) >= k) <= epsilon /
        #looks``, or ``k`` already makes ``(1 + k) / (n_surrogates + 1) >
        alpha`` whatever the remaining surrogates show.
    low
        Per look: an index with ``k <= low[j]`` is decided *significant*:
        ``P(Binomial(L, alpha) <= k) <= epsilon / #looks`` (``-1``: none yet).

    Examples
    --------
    >>> looks, high, low = stopping_plan(999, 0.05, 1e-3)
    >>> looks, high, low
    ((25, 50, 100, 200, 400, 800), (8, 10, 15, 24, 38, 50), (-1, -1, -1, 0, 5, 19))
    """
    looks = []
    size = _FIRST_LOOK
    while size < n_surrogates:
        looks.append(size)
        size *= 2
    exact = max(0, math.floor(alpha * (n_surrogates + 1) - 1 + 1e-9) + 1)
    level = epsilon / max(len(looks), 1)
    limits = [_binomial_limits(n, alpha, level) for n in looks]
    high = tuple(min(exact, hi) for _, hi in limits)
    low = tuple(lo for lo, _ in limits)
    return tuple(looks), high, low


def _order_stat_desc(a: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th largest value per row (from 1): ``+inf`` if ``k < 1``, ``-inf`` past the end."""
    n = a.shape[-1]
    if k < 1:
        return np.full(a.shape[0], np.inf)
    if k > n:
        return np.full(a.shape[0], -np.inf)
    return np.partition(a, n - k, axis=-1)[:, n - k].astype(np.float64)


def _phase_blocks(m: int, seed: int, start: int, stop: int) -> list[tuple[int, np.ndarray]]:
    """Phases of surrogates ``start..stop-1`` in memory blocks: ``[(first, e^{iφ} complex64)]``."""
    return [
        (
            b0,
            _surrogate_phases(m, seed, b0, min(stop, b0 + _SURROGATE_BLOCK) - b0).astype(
                np.complex64
            ),
        )
        for b0 in range(start, stop, _SURROGATE_BLOCK)
    ]


def _draw(
    null_max: np.ndarray,
    amp: np.ndarray,
    rows: np.ndarray,
    blocks: list[tuple[int, np.ndarray]],
    m: int,
) -> None:
    """Fill ``null_max[rows, b0:b0+B]`` with the maximum robust z of each surrogate.

    The surrogates are computed in single precision (``complex64`` spectra,
    ``float32`` series: numpy >= 2 transforms them without widening); the
    statistic of a surrogate has a relative error of about 1e-6, against the
    1e-7 rounding of the float32 robust z itself (``docs/dynamics.md``).
    """
    for b0, rotation in blocks:
        spec = amp[rows, None, :] * rotation
        sur = np.asarray(np.fft.irfft(spec, n=m, axis=-1), dtype=np.float32)
        top = _max_robust_z(sur.reshape(-1, m))
        null_max[rows, b0 : b0 + rotation.shape[0]] = top.reshape(rows.size, rotation.shape[0])


def _part_size(rows: int, threads: int) -> int:
    """Series per part: at most :data:`_SERIES_BLOCK`, and enough parts to keep threads busy."""
    if threads <= 1:
        return _SERIES_BLOCK
    return max(8, min(_SERIES_BLOCK, -(-rows // (2 * threads))))


def _run_parts(func: Callable[[np.ndarray], None], parts: list[np.ndarray], threads: int) -> None:
    """``func(part)`` for every part, on up to ``threads`` threads (numpy releases the GIL)."""
    if threads <= 1 or len(parts) <= 1:
        for part in parts:
            func(part)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(parts))) as pool:
        for _ in pool.map(func, parts):
            pass


def _pvalues_equal_length(
    v: np.ndarray,
    asked: np.ndarray,
    n_surrogates: int,
    seed: int,
    alpha: float | None,
    epsilon: float,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Statistic, p-values and surrogates used, for ``(S, m)`` NaN-free series."""
    s_count, m = v.shape
    stat = robust_z(v)
    pvalue = np.full_like(stat, np.nan)
    used = np.zeros(s_count, dtype=np.int64)
    if m < 3 or s_count == 0:
        return stat, pvalue, used
    looks: tuple[int, ...] = ()
    high: tuple[int, ...] = ()
    low: tuple[int, ...] = ()
    if alpha is not None:
        looks, high, low = stopping_plan(n_surrogates, float(alpha), float(epsilon))
    amp = _amplitudes(v).astype(np.float32)  # surrogates in float32 (see _draw)
    stat_asked = np.where(asked, stat, -np.inf)  # an index not asked never holds a series up
    asked_any = asked.any(axis=-1)
    null_max = np.full((s_count, n_surrogates), -np.inf, dtype=np.float32)
    active = np.flatnonzero(asked_any)
    done = 0
    for look in [*looks, n_surrogates]:
        blocks = _phase_blocks(m, seed, done, look)
        size = _part_size(active.size, threads)
        parts = [active[r0 : r0 + size] for r0 in range(0, active.size, size)]
        _run_parts(functools.partial(_draw, null_max, amp, blocks=blocks, m=m), parts, threads)
        done = look
        used[active] = look
        if look == n_surrogates or active.size == 0:
            break
        j = looks.index(look)
        # an asked index is decided once k >= high[j] (not significant) or k <= low[j]
        # (significant); each kind errs with probability <= epsilon over all looks
        drawn = null_max[active, :look]
        high_q = _order_stat_desc(drawn, high[j])  # stat <= high_q: k >= high[j]
        low_q = _order_stat_desc(drawn, low[j] + 1)  # stat > low_q: k <= low[j]
        st = stat_asked[active]
        open_ = (st > high_q[:, None]) & (st <= low_q[:, None]) & asked[active]
        active = active[open_.any(axis=-1)]
    null_max.sort(axis=-1)  # undrawn (-inf) first
    for row in np.flatnonzero(asked_any):  # exceedances among the series' own draws
        idx = np.flatnonzero(asked[row])
        below = np.searchsorted(null_max[row].astype(np.float64), stat[row, idx], side="left")
        pvalue[row, idx] = (1.0 + n_surrogates - below) / (1.0 + used[row])
    return stat, pvalue, used


def surrogate_pvalues(
    v: npt.ArrayLike,
    keys: npt.ArrayLike | None = None,
    *,
    n_surrogates: int = 999,
    seed: int = 0,
    alpha: float | None = None,
    epsilon: float = DEFAULT_EPSILON,
    asked: npt.ArrayLike | None = None,
    return_used: bool = False,
    threads: int = 1,
) -> tuple[np.ndarray, ...]:
    """Family-wise p-values of each velocity against Gaussian phase-randomized surrogates.

    For each series (last axis, NaN-padded at its end) the statistic is the
    robust z-score :func:`robust_z`. Surrogate series (:func:`phase_randomized`)
    share the series' amplitude spectrum (hence its autocorrelation and mean)
    with uniformly random Fourier phases; the p-value of index ``i`` is
    ``(1 + #{b : max_j z_b[j] >= z[i]}) / (L + 1)`` over the ``L`` surrogates
    drawn for the series, i.e. it is compared with the null distribution of
    the series' *maximum*, which controls the family-wise error rate over the
    series.

    With ``alpha=None`` every series gets ``L = n_surrogates``. With a level
    ``alpha`` the draws stop early (see :func:`stopping_plan` and
    ``docs/dynamics.md``): after 100, 200, 400, ... surrogates a series stops
    once each asked index has ``k >= h`` exceedances (not significant at
    ``alpha``, exactly as with all ``n_surrogates``) or so few that
    ``P(Binomial(L, alpha) <= k) <= epsilon / #looks`` (significant).

    Parameters
    ----------
    v
        ``(..., m)`` velocities, valid values first then NaN.
    keys
        Accepted for compatibility; surrogates depend on ``seed`` and the
        series length only.
    n_surrogates
        Surrogates per series (the most drawn).
    seed
        Seed of the counter-based generator.
    alpha, epsilon
        Level of the sequential test and its error budget (see above);
        ``alpha=None``: no early stop.
    asked
        ``(..., m)`` bool: the indices whose p-values are wanted (default all);
        the others get NaN and never keep a series drawing.
    return_used
        Also return the number of surrogates drawn per series.
    threads
        Groups of series computed at once (numpy releases the GIL in the
        transforms and selections); the result does not depend on it.

    Returns
    -------
    statistic, p_value[, used]
        ``(..., m)`` each (``used``: ``(...)``); NaN past the end and for
        series shorter than 3.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> v = rng.normal(size=(1, 200)); v[0, 50] += 12
    >>> z, p = surrogate_pvalues(v, n_surrogates=99)
    >>> float(p[0, 50]), bool(np.nanmedian(p) > 0.5)
    (0.01, True)
    >>> z, p, used = surrogate_pvalues(v, alpha=0.05, asked=z > 5, return_used=True)
    >>> float(p[0, 50]), int(used[0])  # one index asked, clearly significant after 200 draws
    (0.004975124378109453, 200)
    """
    arr = _float(v)
    lead = arr.shape[:-1]
    m = arr.shape[-1]
    stat = np.full(arr.shape, np.nan)
    pvalue = np.full(arr.shape, np.nan)
    used = np.zeros(lead, dtype=np.int64)
    if arr.size == 0:
        return (stat, pvalue, used) if return_used else (stat, pvalue)
    flat = arr.reshape(-1, m)
    count = (~np.isnan(flat)).sum(axis=-1)
    want = np.ones(flat.shape, dtype=bool)
    if asked is not None:
        want = np.broadcast_to(np.asarray(asked, dtype=bool), arr.shape).reshape(-1, m)
    stat_f, p_f, used_f = stat.reshape(-1, m), pvalue.reshape(-1, m), used.reshape(-1)
    for length in np.unique(count):  # one pass per distinct series length
        rows = np.flatnonzero(count == length)
        if length == 0:
            continue
        s, p, u = _pvalues_equal_length(
            flat[rows, :length],
            want[rows, :length],
            n_surrogates,
            seed,
            alpha,
            epsilon,
            threads,
        )
        stat_f[rows, :length] = s
        p_f[rows, :length] = p
        used_f[rows] = u
    return (stat, pvalue, used) if return_used else (stat, pvalue)


def noise_floor(x: npt.ArrayLike, floor_ulps: float, eps: float) -> np.ndarray:
    """``floor_ulps · eps · max|x|`` per series (NaN for an all-NaN series).

    Examples
    --------
    >>> noise_floor(np.array([[1.0, -2.0, np.nan]]), 10.0, 1e-3).tolist()
    [0.02]
    """
    a = np.abs(_float(x))
    valid = ~np.isnan(a)
    top = np.where(valid, a, 0.0).max(axis=-1, initial=0.0)
    return np.where(valid.any(axis=-1), floor_ulps * eps * top, np.nan)
