"""Phase 1 dimensionality kernels: the study's four metrics from singular values.

Definitions follow the Phase 1 code of the public ``ndt`` project (Neural
Dimensionality Tracker, Javier Marin, MIT licence), applied to the uncentered
``samples × features`` activation matrix ``A`` with singular values
``σ1 ≥ σ2 ≥ … ≥ σr`` (``r = min(samples, features)``) and ``eps = 1e-10``:

* stable rank ``‖A‖_F² / (‖A‖_2² + eps)``, 0 when ``σ1 < eps`` (the documented
  definition; the published values differ, see :func:`stable_rank`);
* participation ratio ``(Σ(σi + eps))² / (Σ(σi + eps)² + eps)`` (on singular
  values, not on their squares);
* effective rank 90: ``1 + #{k : Σ_{i≤k} σi² / Σ σi² < 0.9}``, capped at ``r``,
  0 when ``Σ σi² < 1e-10``;
* nuclear norm ratio ``Σ σi / (σ1 + eps)``, 0 when ``σ1 < eps``.

All four are 0 for an empty matrix. Everything is batched over leading axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "EPS",
    "dimensionality_metrics",
    "effective_rank",
    "flatten_features",
    "gram_singular_values",
    "nuclear_norm_ratio",
    "participation_ratio",
    "singular_values",
    "stable_rank",
]

EPS = 1e-10
"""The study's regularizer and zero threshold."""


def flatten_features(x: npt.ArrayLike, n_feature_axes: int = 1) -> np.ndarray:
    """Merge the last ``n_feature_axes`` axes into one: ``(..., n, f1, f2) -> (..., n, f1*f2)``.

    Examples
    --------
    >>> flatten_features(np.zeros((3, 4, 2, 5)), 2).shape
    (3, 4, 10)
    """
    a = np.asarray(x)
    if n_feature_axes == 1:
        return a
    keep = a.ndim - n_feature_axes
    return a.reshape((*a.shape[:keep], -1))


def singular_values(x: npt.ArrayLike) -> np.ndarray:
    """Singular values (descending, float64) of every matrix in a ``(..., n, m)`` stack.

    Examples
    --------
    >>> singular_values(np.diag([1.0, 3.0, 2.0])).tolist()
    [3.0, 2.0, 1.0]
    """
    a = np.asarray(x, dtype=np.float64)
    if a.shape[-1] == 0 or a.shape[-2] == 0:
        return np.zeros((*a.shape[:-2], 0))
    return np.linalg.svd(a, compute_uv=False)


def gram_singular_values(matrices: Sequence[npt.ArrayLike]) -> list[np.ndarray]:
    """Descending singular values of many ``(n, f)`` matrices, from Gram eigenvalues.

    The numpy twin of :func:`ndt_store.capture.metrics.gram_singular_values`, used
    by the Recorder's writer thread for models on the CPU: each matrix becomes
    float64 and its smaller Gram matrix (``AᵀA`` or ``AAᵀ``) is formed with one
    symmetric rank-k update (numpy's ``A.T @ A`` computes half of it), then the
    Gram matrices of one size share one ``eigvalsh`` call. Values agree with an SVD
    to about ``1e-8 · σ1`` in absolute terms. A matrix with a non-finite entry, or
    whose eigenvalues do not converge, gets NaN singular values (the others are
    unaffected).

    Parameters
    ----------
    matrices
        2-D arrays (samples × features).

    Returns
    -------
    list of numpy.ndarray
        Per matrix, ``min(n, f)`` singular values, descending, float64.

    Examples
    --------
    >>> [s.round(6).tolist() for s in gram_singular_values([np.diag([1.0, 3.0]), np.ones((3, 1))])]
    [[3.0, 1.0], [1.732051]]
    """
    grams: list[np.ndarray] = []
    finite: list[bool] = []
    for m in matrices:
        a = np.asarray(m, dtype=np.float64)
        if a.ndim != 2:
            raise ValueError(f"expected 2-D matrices, got shape {a.shape}")
        ok = bool(np.isfinite(a).all())
        if not ok:
            a = np.zeros_like(a)
        # `x.T @ x` of one array is a symmetric rank-k update: half a general product
        grams.append(a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T)
        finite.append(ok)
    out: list[np.ndarray] = [np.zeros(0)] * len(grams)
    by_size: dict[int, list[int]] = {}
    for i, g in enumerate(grams):
        by_size.setdefault(g.shape[0], []).append(i)
    for size, idx in by_size.items():
        if size == 0:
            continue
        stack = np.stack([grams[i] for i in idx])
        try:
            lam = np.linalg.eigvalsh(stack)
        except np.linalg.LinAlgError:  # one did not converge: the others still count
            lam = np.stack([_eigvalsh_or_nan(g) for g in stack])
        sv = np.sqrt(np.clip(lam, 0.0, None))[:, ::-1]
        for k, i in enumerate(idx):
            out[i] = sv[k] if finite[i] else np.full(size, np.nan)
    return out


def _eigvalsh_or_nan(g: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.eigvalsh(g)
    except np.linalg.LinAlgError:
        return np.full(g.shape[0], np.nan)


def stable_rank(s: npt.ArrayLike, eps: float = EPS, as_published: bool = False) -> np.ndarray:
    """Stable rank ``Σσ² / (σ1² + eps)`` from descending singular values ``s`` (last axis).

    0 where ``σ1 < eps``. With ``as_published=True`` the spectral norm is replaced by
    the Frobenius norm, as in the study's code (``torch.norm(A, p=2)`` of a matrix
    is its Frobenius norm), which reproduces the published Phase 1 values:
    ``‖A‖_F² / (‖A‖_F² + eps)``, 1 up to ``eps`` for any non-zero matrix.

    Examples
    --------
    >>> float(stable_rank(np.array([2.0, 2.0, 0.0])).round(6))
    2.0
    >>> float(stable_rank(np.array([2.0, 2.0, 0.0]), as_published=True).round(6))
    1.0
    """
    s = np.asarray(s, dtype=np.float64)
    if s.shape[-1] == 0:
        return np.zeros(s.shape[:-1])
    fro2 = np.sum(np.square(s), axis=-1)
    top2 = fro2 if as_published else np.square(s[..., 0])
    out = fro2 / (top2 + eps)
    return np.where(np.sqrt(top2) < eps, 0.0, out)


def participation_ratio(s: npt.ArrayLike, eps: float = EPS) -> np.ndarray:
    """Participation ratio ``(Σ(σ+eps))² / (Σ(σ+eps)² + eps)`` of singular values ``s``.

    Examples
    --------
    >>> float(participation_ratio(np.array([1.0, 1.0, 1.0, 1.0])).round(6))
    4.0
    """
    s = np.asarray(s, dtype=np.float64) + eps
    if s.shape[-1] == 0:
        return np.zeros(s.shape[:-1])
    return np.square(np.sum(s, axis=-1)) / (np.sum(np.square(s), axis=-1) + eps)


def effective_rank(s: npt.ArrayLike, fraction: float = 0.9, eps: float = EPS) -> np.ndarray:
    """Components needed for ``fraction`` of ``Σσ²``: ``1 + #{k: cum_k/total < fraction}``.

    Capped at the number of singular values; 0 where ``Σσ² < eps``. Returned as float.

    Examples
    --------
    >>> effective_rank(np.array([[3.0, 1.0, 0.0], [1.0, 1.0, 1.0]])).tolist()
    [1.0, 3.0]
    """
    s = np.asarray(s, dtype=np.float64)
    r = s.shape[-1]
    if r == 0:
        return np.zeros(s.shape[:-1])
    var = np.square(s)
    cum = np.cumsum(var, axis=-1)
    total = cum[..., -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        below = np.sum(cum / total < fraction, axis=-1)
    out = np.minimum(below + 1, r).astype(np.float64)
    return np.where(total[..., 0] < eps, 0.0, out)


def nuclear_norm_ratio(s: npt.ArrayLike, eps: float = EPS) -> np.ndarray:
    """Nuclear norm over spectral norm, ``Σσ / (σ1 + eps)``; 0 where ``σ1 < eps``.

    Examples
    --------
    >>> float(nuclear_norm_ratio(np.array([2.0, 1.0, 1.0])).round(6))
    2.0
    """
    s = np.asarray(s, dtype=np.float64)
    if s.shape[-1] == 0:
        return np.zeros(s.shape[:-1])
    top = s[..., 0]
    out = np.sum(s, axis=-1) / (top + eps)
    return np.where(top < eps, 0.0, out)


def dimensionality_metrics(
    x: npt.ArrayLike, n_feature_axes: int = 1, eps: float = EPS, as_published: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four metrics of every ``(..., n, features...)`` matrix from one batched SVD.

    ``as_published`` is passed to :func:`stable_rank`.

    Returns
    -------
    tuple of numpy.ndarray
        ``(stable_rank, participation_ratio, effective_rank_90, nuclear_norm_ratio)``,
        each of the leading shape.

    Examples
    --------
    >>> [round(float(v), 6) for v in dimensionality_metrics(np.eye(4))]
    [4.0, 4.0, 4.0, 4.0]
    """
    s = singular_values(flatten_features(x, n_feature_axes))
    return (
        stable_rank(s, eps, as_published),
        participation_ratio(s, eps),
        effective_rank(s, 0.9, eps),
        nuclear_norm_ratio(s, eps),
    )
