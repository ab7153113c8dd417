"""Attention kernels on raw arrays: softmax and row entropy.

Inputs and outputs are numpy arrays; nothing here knows about labels or dask.
The entropy kernel works through the rows in cache-sized blocks with in-place
operations, so it makes no full-size temporaries (the naive
``-(p * np.log(p)).sum(-1)`` allocates two).
"""

from __future__ import annotations

import contextlib

import numpy as np
import numpy.typing as npt

__all__ = ["NotProbabilitiesError", "entropy", "float_dtype", "softmax"]

_BLOCK_BYTES = 256 * 1024
"""Bytes of one working block (fits a core's L2 cache)."""


def float_dtype(dtype: npt.DTypeLike) -> np.dtype:
    """Floating dtype a kernel computes in: float32 and float64 are kept, others widen.

    Examples
    --------
    >>> float_dtype(np.float32), float_dtype(np.int64)
    (dtype('float32'), dtype('float64'))
    """
    return np.result_type(dtype, np.float32)


class NotProbabilitiesError(ValueError):
    """Rows given to :func:`entropy` with ``row_tolerance`` are not probabilities.

    ``what`` says which check failed, e.g. ``"a row sums to 0.5"``.
    """

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _check_sums(sums: np.ndarray, tolerance: float) -> None:
    """Raise :class:`NotProbabilitiesError` if a row sum is off 1 by more than ``tolerance``.

    NaN sums pass (a NaN row's entropy is NaN).
    """
    dev = np.abs(sums - 1.0)
    if (dev > tolerance).any():
        bad = sums[dev > tolerance]
        worst = float(bad[np.argmax(np.abs(bad - 1.0))])
        raise NotProbabilitiesError(f"a row sums to {worst:.4g}")


def _check_low(rows: np.ndarray, tolerance: float) -> None:
    """Raise :class:`NotProbabilitiesError` if a value of ``rows`` is below ``-tolerance``."""
    values = rows[~np.isnan(rows)]  # all-NaN rows are allowed: nothing to warn about
    low = float(values.min()) if values.size else 0.0
    if low < -tolerance:
        raise NotProbabilitiesError(f"a value is {low:.4g}")


def _rowdot(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """Row-wise dot products of two 2-d arrays into ``out`` (one fused pass)."""
    if hasattr(np, "vecdot"):  # numpy >= 2
        np.vecdot(a, b, out=out)
    else:  # pragma: no cover - numpy 1.26
        np.einsum("ij,ij->i", a, b, out=out)


def softmax(x: npt.ArrayLike, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``.

    Examples
    --------
    >>> softmax(np.zeros((1, 4))).tolist()
    [[0.25, 0.25, 0.25, 0.25]]
    """
    a = np.asarray(x)
    a = a.astype(float_dtype(a.dtype), copy=True)
    a -= np.max(a, axis=axis, keepdims=True)
    np.exp(a, out=a)
    a /= np.sum(a, axis=axis, keepdims=True)
    return a


def entropy(
    p: npt.ArrayLike,
    axis: int = -1,
    *,
    from_logits: bool = False,
    row_tolerance: float | None = None,
) -> np.ndarray:
    """Shannon entropy (natural log) of every row of ``p`` along ``axis``.

    ``p`` holds probabilities (each row sums to one); ``0 * log 0`` counts as 0,
    so a one-hot row has entropy 0 and a uniform row over ``k`` entries ``ln k``.
    NaN in a row gives NaN. With ``from_logits=True`` a softmax is applied first.

    Parameters
    ----------
    p
        Probabilities (or logits with ``from_logits=True``), any shape.
    axis
        Axis that each distribution lies along; it is removed from the result.
    from_logits
        Apply a softmax along ``axis`` before taking the entropy.
    row_tolerance
        If given (and not ``from_logits``), check that every row sums to 1 within
        this tolerance and has no value below ``-row_tolerance``: the row sums are
        taken block by block while the block is in cache (no extra pass over
        memory) and checked once, after the last block.

    Raises
    ------
    NotProbabilitiesError
        If ``row_tolerance`` is given and a row is not a distribution.

    Returns
    -------
    numpy.ndarray
        Entropies in nats, shape of ``p`` without ``axis``; float32 input stays
        float32, anything else is computed in float64.

    Examples
    --------
    >>> entropy(np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])).round(6).tolist()
    [1.386294, 0.0]
    >>> entropy(np.array([[0.5, 0.0]]), row_tolerance=1e-3)
    Traceback (most recent call last):
    ...
    ndt_store._kernels.attention.NotProbabilitiesError: a row sums to 0.5
    """
    a = np.asarray(p)
    if from_logits:
        a = softmax(a, axis=axis)
    a = np.moveaxis(a, axis, -1)
    dtype = float_dtype(a.dtype)
    lead, k = a.shape[:-1], a.shape[-1]
    n = int(np.prod(lead))
    out = np.zeros(n, dtype=dtype)
    if n == 0 or k == 0:
        return out.reshape(lead)
    rows = a.reshape(n, k)
    block = max(1, _BLOCK_BYTES // (k * dtype.itemsize))
    work = np.empty((min(block, n), k), dtype=dtype)
    tiny = dtype.type(np.finfo(dtype).tiny)
    check = row_tolerance is not None and not from_logits
    tol = 0.0 if row_tolerance is None else float(row_tolerance)
    if check:
        ones = np.ones(k, dtype=dtype)
        sums = np.empty(n, dtype=dtype)
    # with the check a negative value is reported by _check_low below, not warned about
    with np.errstate(invalid="ignore") if check else contextlib.nullcontext():
        for start in range(0, n, block):
            stop = min(start + block, n)
            rows_blk = rows[start:stop]
            t = work[: stop - start]
            if check:  # the block is in cache: its row sums (one matrix-vector product)
                np.matmul(rows_blk, ones, out=sums[start:stop])
            # log(p + tiny) is finite at p == 0, so 0 * log 0 contributes 0; for any
            # p >= ~1e-30 (float32) adding tiny changes nothing. An add is several
            # times cheaper than a clamp (np.maximum), and the row sums of p * log p
            # are one fused dot product per row.
            np.add(rows_blk, tiny, out=t)
            np.log(t, out=t)
            _rowdot(t, rows_blk, out[start:stop])
    if check:  # once for every row: no per-block calls
        _check_sums(sums, tol)
        # a value below -tiny makes its row's entropy NaN: only then look for it
        nan_rows = np.flatnonzero(np.isnan(out))
        if nan_rows.size:
            _check_low(rows[nan_rows], tol)
    np.subtract(0.0, out, out=out)  # 0 - x, not -x: a one-hot row gives +0.0
    return out.reshape(lead)
