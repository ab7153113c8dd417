"""Similarity kernels on raw arrays: guarded cosine and batched linear CKA."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ndt_store._kernels.attention import float_dtype

__all__ = ["cka_bootstrap", "cka_permutation_test", "cosine_from_sums", "linear_cka"]


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


def _centered(x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Column-centered float64 (or wider) copies of ``x`` and ``y``."""
    xc = np.asarray(x)
    yc = np.asarray(y)
    dtype = np.result_type(float_dtype(xc.dtype), float_dtype(yc.dtype), np.float64)
    xc = xc - xc.mean(axis=-2, keepdims=True, dtype=dtype)
    yc = yc - yc.mean(axis=-2, keepdims=True, dtype=dtype)
    return xc, yc


def _use_gram(n: int, p: int, q: int) -> bool:
    """Whether the ``n × n`` Gram matrices are cheaper than the feature cross products."""
    return n * n * (p + q) < n * (p * q + p * p + q * q)


def _hsic_feature(a: np.ndarray, b: np.ndarray, *, debiased: bool) -> np.ndarray:
    """HSIC of centered ``a``, ``b`` (``(..., n, p)``, ``(..., n, q)``) in feature space.

    Biased: ``‖aᵀb‖²_F`` (the trace of the centered Gram product). Debiased: the
    U-statistic of Song et al. (2012) written with the row norms ``d`` (the Gram
    diagonals); centered columns make the Gram row sums zero, so ``K̃1 = -d``.
    """
    cross = np.sum(np.square(np.swapaxes(a, -1, -2) @ b), axis=(-2, -1))
    if not debiased:
        return cross
    n = a.shape[-2]
    da = np.sum(np.square(a), axis=-1)
    db = np.sum(np.square(b), axis=-1)
    dd = np.sum(da * db, axis=-1)
    total = np.sum(da, axis=-1) * np.sum(db, axis=-1)
    return (cross - dd + total / ((n - 1) * (n - 2)) - 2.0 * dd / (n - 2)) / (n * (n - 3))


def _hsic_gram(k: np.ndarray, m: np.ndarray, *, debiased: bool) -> np.ndarray:
    """HSIC from Gram matrices ``(..., n, n)`` of centered data.

    Debiased: Song et al. (2012), ``[tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n-1)(n-2)) -
    2/(n-2)·1ᵀK̃L̃1] / (n(n-3))`` with ``K̃``, ``L̃`` the Grams with zeroed diagonals.
    """
    if not debiased:
        return np.sum(k * m, axis=(-2, -1))
    n = k.shape[-1]
    eye = np.eye(n, dtype=bool)
    kt = np.where(eye, 0.0, k)
    mt = np.where(eye, 0.0, m)
    return _song(kt, mt, n)


def _song(kt: np.ndarray, mt: np.ndarray, n: int) -> np.ndarray:
    """Song et al.'s U-statistic from Grams whose excluded pairs are already zero."""
    trace = np.sum(kt * mt, axis=(-2, -1))
    rk, rm = kt.sum(axis=-1), mt.sum(axis=-1)
    total = rk.sum(axis=-1) * rm.sum(axis=-1)
    cross = np.sum(rk * rm, axis=-1)
    return (trace + total / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def _check_samples(n: int, debiased: bool) -> None:
    if debiased and n < 4:
        raise ValueError(f"debiased CKA needs at least 4 samples, got {n}")


def _ratio(hxy: np.ndarray, hxx: np.ndarray, hyy: np.ndarray, *, debiased: bool) -> np.ndarray:
    """``hxy / sqrt(hxx hyy)``; NaN where a self-HSIC is not positive (no variance)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.sqrt(hxx) * np.sqrt(hyy)
        out = np.true_divide(hxy, denom)
    bad = ~(denom > 0)
    if debiased:  # may be (slightly) negative: chance similarity fluctuates around 0
        return np.where(bad, np.nan, np.clip(out, -1.0, 1.0))
    return np.where(bad, np.nan, np.clip(out, 0.0, 1.0))


def _hsic_all(
    xc: np.ndarray, yc: np.ndarray, *, debiased: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, p, q = xc.shape[-2], xc.shape[-1], yc.shape[-1]
    if _use_gram(n, p, q):
        kx = xc @ np.swapaxes(xc, -1, -2)
        ky = yc @ np.swapaxes(yc, -1, -2)
        return (
            _hsic_gram(kx, ky, debiased=debiased),
            _hsic_gram(kx, kx, debiased=debiased),
            _hsic_gram(ky, ky, debiased=debiased),
        )
    return (
        _hsic_feature(xc, yc, debiased=debiased),
        _hsic_feature(xc, xc, debiased=debiased),
        _hsic_feature(yc, yc, debiased=debiased),
    )


def linear_cka(x: npt.ArrayLike, y: npt.ArrayLike, *, debiased: bool = False) -> np.ndarray:
    """Linear centered kernel alignment of ``x`` and ``y``, batched over leading axes.

    ``CKA = HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y))`` for linear kernels
    (Kornblith et al. 2019). Biased (the default here): ``HSIC = ‖Ycᵀ Xc‖²_F`` with
    ``Xc``, ``Yc`` column-centered; it reads well above 0 on unrelated
    representations when samples are few. Debiased: the unbiased HSIC estimator
    of Song et al. (2012) in all three places; about 0 on unrelated data, can be
    slightly negative, needs ``n >= 4``. Computed through the feature-space cross
    products or the ``n × n`` Gram matrices, whichever is smaller. A
    representation with zero variance gives NaN (no warning).

    Parameters
    ----------
    x
        ``(..., n, p)``: ``n`` samples of ``p`` features.
    y
        ``(..., n, q)``: the same ``n`` samples; leading axes broadcast with ``x``.
    debiased
        Use the unbiased HSIC estimator.

    Returns
    -------
    numpy.ndarray
        ``(...)`` CKA values, float64: in ``[0, 1]`` (biased) or ``[-1, 1]`` (debiased).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(20, 5))
    >>> round(float(linear_cka(a, 3.0 * a)), 12)
    1.0
    >>> round(float(linear_cka(a, 3.0 * a, debiased=True)), 12)
    1.0
    """
    xc, yc = _centered(x, y)
    _check_samples(xc.shape[-2], debiased)
    hxy, hxx, hyy = _hsic_all(xc, yc, debiased=debiased)
    return _ratio(hxy, hxx, hyy, debiased=debiased)


def _blocks(total: int, per_item_bytes: int, budget: int = 64 << 20) -> list[range]:
    size = max(1, min(total, budget // max(per_item_bytes, 1)))
    return [range(i, min(i + size, total)) for i in range(0, total, size)]


def cka_permutation_test(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    debiased: bool = False,
    permutations: int = 1000,
    seed: int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """CKA of ``x`` and ``y`` and its permutation p-value, batched over leading axes.

    The null pairs each sample of ``x`` with a random sample of ``y`` (rows of
    ``y`` permuted; ``HSIC(X, X)`` and ``HSIC(Y, Y)`` do not change). The p-value
    is ``(1 + #{null >= observed}) / (1 + permutations)``: exact level under the
    null of no relation between the paired rows. The same permutations serve every
    batch element (each element's test is valid on its own).

    Returns
    -------
    (cka, p_value)
        Two ``(...)`` float64 arrays; NaN where CKA is NaN.
    """
    xc, yc = _centered(x, y)
    n, p, q = xc.shape[-2], xc.shape[-1], yc.shape[-1]
    _check_samples(n, debiased)
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    hxy, hxx, hyy = _hsic_all(xc, yc, debiased=debiased)
    observed = _ratio(hxy, hxx, hyy, debiased=debiased)
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((permutations, n)), axis=-1)
    batch = int(np.prod(np.broadcast_shapes(xc.shape[:-2], yc.shape[:-2]), dtype=np.int64))
    gram = _use_gram(n, p, q)
    per_perm = 8 * batch * (n * n if gram else n * (p + q) + p * q)
    exceed = np.zeros(observed.shape, dtype=np.int64)
    kx = xc @ np.swapaxes(xc, -1, -2) if gram else None
    ky = yc @ np.swapaxes(yc, -1, -2) if gram else None
    for block in _blocks(permutations, per_perm):
        pb = perms[block.start : block.stop]
        if kx is not None and ky is not None:
            kyp = ky[..., pb[:, :, None], pb[:, None, :]]  # (..., B, n, n)
            null_xy = _hsic_gram(kx[..., None, :, :], kyp, debiased=debiased)
        else:
            null_xy = _hsic_feature(xc[..., None, :, :], yc[..., pb, :], debiased=debiased)
        null = _ratio(null_xy, hxx[..., None], hyy[..., None], debiased=debiased)
        exceed += np.sum(null >= observed[..., None] - 1e-12, axis=-1)
    pvalue = (1.0 + exceed) / (1.0 + permutations)
    return observed, np.where(np.isnan(observed), np.nan, pvalue)


def cka_bootstrap(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    debiased: bool = False,
    resamples: int = 1000,
    seed: int | None = 0,
) -> np.ndarray:
    """CKA of bootstrap resamples of the paired samples, ``(..., resamples)``.

    Each resample draws ``n`` samples with replacement (the same draw for ``x``
    and ``y``). Biased CKA is recomputed with centering on the resample. For the
    debiased estimator, pairs of draws of the *same* original sample are left out
    like the diagonal (a duplicate's self-similarity is exactly the bias the
    estimator removes), so resamples are not re-biased upward.
    """
    xc, yc = _centered(x, y)
    n = xc.shape[-2]
    _check_samples(n, debiased)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    kx = xc @ np.swapaxes(xc, -1, -2)
    ky = yc @ np.swapaxes(yc, -1, -2)
    batch = int(np.prod(np.broadcast_shapes(kx.shape[:-2], ky.shape[:-2]), dtype=np.int64))
    out = []
    for block in _blocks(resamples, 8 * 3 * batch * n * n):
        idx = draws[block.start : block.stop]
        kb = kx[..., idx[:, :, None], idx[:, None, :]]  # (..., B, n, n)
        mb = ky[..., idx[:, :, None], idx[:, None, :]]
        if debiased:
            keep = idx[:, :, None] != idx[:, None, :]  # (B, n, n): distinct original samples
            kb, mb = np.where(keep, kb, 0.0), np.where(keep, mb, 0.0)
            hs = (_song(kb, mb, n), _song(kb, kb, n), _song(mb, mb, n))
        else:  # re-center on the resample: H K H
            kb = _double_center(kb)
            mb = _double_center(mb)
            hs = (
                np.sum(kb * mb, axis=(-2, -1)),
                np.sum(kb * kb, axis=(-2, -1)),
                np.sum(mb * mb, axis=(-2, -1)),
            )
        out.append(_ratio(*hs, debiased=debiased))
    return np.concatenate(out, axis=-1)


def _double_center(k: np.ndarray) -> np.ndarray:
    return (
        k
        - k.mean(axis=-1, keepdims=True)
        - k.mean(axis=-2, keepdims=True)
        + k.mean(axis=(-2, -1), keepdims=True)
    )
