"""Similarity kernels on raw arrays: guarded cosine and batched linear CKA."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ndt_store._kernels.attention import float_dtype

__all__ = ["cosine_from_sums", "linear_cka"]


def cosine_from_sums(dot: npt.ArrayLike, sq_a: npt.ArrayLike, sq_b: npt.ArrayLike) -> np.ndarray:
    """Cosine ``dot / sqrt(sq_a * sq_b)`` from reduced sums, 0.0 where a norm is 0.

    Parameters
    ----------
    dot
        ``Σ a·b`` over the compared axes.
    sq_a, sq_b
        ``Σ a²`` and ``Σ b²`` over the same axes.

    Examples
    --------
    >>> cosine_from_sums(np.array([1.0, 0.0]), np.array([1.0, 0.0]), np.array([4.0, 1.0])).tolist()
    [0.5, 0.0]
    """
    d = np.asarray(dot)
    denom = np.sqrt(np.asarray(sq_a)) * np.sqrt(np.asarray(sq_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.true_divide(d, denom)
    out = np.where(denom == 0, np.zeros((), out.dtype), out)
    # rounding can push |cos| a hair past 1 for parallel vectors
    return np.clip(out, -1.0, 1.0)


def linear_cka(x: npt.ArrayLike, y: npt.ArrayLike) -> np.ndarray:
    """Linear centered kernel alignment of ``x`` and ``y``, batched over leading axes.

    ``CKA = ‖Ycᵀ Xc‖²_F / (‖Xcᵀ Xc‖_F ‖Ycᵀ Yc‖_F)`` with ``Xc``, ``Yc`` the
    column-centered matrices (Kornblith et al. 2019). Computed through the
    feature-space cross products or the ``n × n`` Gram matrices, whichever is
    smaller. A representation with zero variance gives NaN (no warning).

    Parameters
    ----------
    x
        ``(..., n, p)``: ``n`` samples of ``p`` features.
    y
        ``(..., n, q)``: the same ``n`` samples; leading axes broadcast with ``x``.

    Returns
    -------
    numpy.ndarray
        ``(...)`` CKA values in ``[0, 1]``, float64.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(20, 5))
    >>> round(float(linear_cka(a, 3.0 * a)), 12)
    1.0
    """
    xc = np.asarray(x)
    yc = np.asarray(y)
    dtype = np.result_type(float_dtype(xc.dtype), float_dtype(yc.dtype), np.float64)
    xc = xc - xc.mean(axis=-2, keepdims=True, dtype=dtype)
    yc = yc - yc.mean(axis=-2, keepdims=True, dtype=dtype)
    n, p, q = xc.shape[-2], xc.shape[-1], yc.shape[-1]
    xt = np.swapaxes(xc, -1, -2)
    yt = np.swapaxes(yc, -1, -2)
    if n * n * (p + q) < n * (p * q + p * p + q * q):
        kx = xc @ xt
        ky = yc @ yt
        hsic_xy = np.sum(kx * ky, axis=(-2, -1))
        hsic_xx = np.sum(kx * kx, axis=(-2, -1))
        hsic_yy = np.sum(ky * ky, axis=(-2, -1))
    else:
        hsic_xy = np.sum(np.square(yt @ xc), axis=(-2, -1))
        hsic_xx = np.sum(np.square(xt @ xc), axis=(-2, -1))
        hsic_yy = np.sum(np.square(yt @ yc), axis=(-2, -1))
    denom = np.sqrt(hsic_xx) * np.sqrt(hsic_yy)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.true_divide(hsic_xy, denom)
    return np.where(denom == 0, np.nan, np.clip(out, 0.0, 1.0))
