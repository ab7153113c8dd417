"""The four Phase 1 dimensionality metrics of activations, computed in torch.

Same definitions as the numpy kernels in :mod:`ndt_store._kernels.dimensionality`
(the uncentered ``samples × features`` matrix, ``eps = 1e-10``), so a run recorded
here and a run imported from the study are measured alike, except that
:func:`activation_metrics` uses the *spectral* stable rank by default (the
published values used the Frobenius norm in the denominator, which makes the
stable rank 1 for every non-zero matrix; pass ``as_published=True`` to get that).

The work stays on the activation's device: one batched SVD of singular values
per layer, the four formulas in float64, and one ``(layers, 4)`` tensor out, so
the caller can copy all numbers to the host in one transfer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ndt_store._kernels.dimensionality import EPS

__all__ = [
    "activation_metrics",
    "gram_singular_values",
    "metrics_from_singular_values",
    "singular_values",
]


def singular_values(act: Any) -> Any:
    """Descending singular values of ``act`` flattened to ``(samples, features)``.

    Parameters
    ----------
    act
        A tensor whose first axis is the sample axis; all other axes are merged
        into features.

    Returns
    -------
    torch.Tensor
        ``min(samples, features)`` singular values, float64, on ``act``'s device.

    Examples
    --------
    >>> import torch
    >>> singular_values(torch.diag(torch.tensor([1.0, 3.0, 2.0]))).tolist()
    [3.0, 2.0, 1.0]
    """
    import torch

    a = act.detach().reshape(act.shape[0], -1) if act.ndim else act.detach().reshape(1, 1)
    if a.shape[0] == 0 or a.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64, device=a.device)
    if not a.is_floating_point() or a.dtype in (torch.float16, torch.bfloat16):
        a = a.float()
    return torch.linalg.svdvals(a).to(torch.float64)


def gram_singular_values(activations: Sequence[Any]) -> list[Any]:
    """Singular values of many activation matrices, from batched Gram eigenvalues.

    For each ``(samples, features...)`` tensor ``A`` (flattened to ``n × f``), the
    eigenvalues of the smaller Gram matrix (``A Aᵀ`` or ``Aᵀ A``, float64) are the
    squared singular values. Inputs of one shape share one batched matrix product,
    and Gram matrices of one shape one batched ``eigvalsh`` call: on the quickstart transformer
    this is ~4× faster than one ``svdvals`` per layer. Values agree with an SVD to
    about ``1e-8 · σ1`` in absolute terms (what the metrics need; tiny singular
    values are not resolved below that).

    Returns
    -------
    list of torch.Tensor
        Per input, ``min(n, f)`` singular values, descending, float64, on its device.

    Examples
    --------
    >>> import torch
    >>> (s,) = gram_singular_values([torch.diag(torch.tensor([1.0, 3.0]))])
    >>> s.round(decimals=6).tolist()
    [3.0, 1.0]
    """
    import torch

    # inputs of one shape: one batched matrix product for all their Gram matrices
    by_shape: dict[tuple[Any, ...], list[int]] = {}
    for i, act in enumerate(activations):
        by_shape.setdefault((tuple(act.shape), act.dtype, act.device), []).append(i)
    grams: list[Any] = [None] * len(activations)
    for idx in by_shape.values():
        first = activations[idx[0]]
        n = int(first.shape[0]) if first.ndim else 1
        f = math.prod(first.shape[1:]) if first.ndim else 1
        stacked = torch.stack([activations[i].detach() for i in idx]).reshape(len(idx), n, f)
        a = stacked.to(torch.float64)
        g = a @ a.transpose(1, 2) if a.shape[1] <= a.shape[2] else a.transpose(1, 2) @ a
        for k, i in enumerate(idx):
            grams[i] = g[k]
    out: list[Any] = [None] * len(grams)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, g in enumerate(grams):
        groups.setdefault((tuple(g.shape), g.device), []).append(i)
    for (shape, _), idx in groups.items():
        if shape[0] == 0:
            for i in idx:
                out[i] = grams[i].new_zeros(0)
            continue
        lam = _eigenvalues(torch.stack([grams[i] for i in idx]))
        sv = torch.sqrt(torch.clamp(lam, min=0.0)).flip(-1)
        for k, i in enumerate(idx):
            out[i] = sv[k]
    return out


def _eigenvalues(stack: Any) -> Any:
    """Eigenvalues of a stack of symmetric matrices; NaN for a matrix that has none.

    A diverging run gives non-finite activations, and LAPACK may fail to converge on
    an ill-conditioned Gram matrix: the metrics of that layer are then NaN, and the
    recording goes on (a measurement never stops training).
    """
    import torch

    finite = torch.isfinite(stack).all(dim=-1).all(dim=-1)
    safe = torch.where(finite[:, None, None], stack, torch.zeros((), dtype=stack.dtype))
    try:
        lam = torch.linalg.eigvalsh(safe)
    except RuntimeError:  # one matrix did not converge: the others still count
        rows = []
        for m in safe:
            try:
                rows.append(torch.linalg.eigvalsh(m))
            except RuntimeError:
                rows.append(torch.full(m.shape[:1], float("nan"), dtype=m.dtype))
        lam = torch.stack(rows)
    lam[~finite] = float("nan")
    return lam


def metrics_from_singular_values(s: Any, *, eps: float = EPS, as_published: bool = False) -> Any:
    """``(stable_rank, participation_ratio, effective_rank_90, nuclear_norm_ratio)``.

    Parameters
    ----------
    s
        Descending singular values (1-D tensor).
    eps
        The study's regularizer and zero threshold.
    as_published
        Frobenius norm in the stable rank's denominator, as the study's code did.

    Returns
    -------
    torch.Tensor
        Shape ``(4,)``, float64, in :data:`ndt_store._dims.PHASE1_METRICS` order.

    Examples
    --------
    >>> import torch
    >>> metrics_from_singular_values(torch.ones(4, dtype=torch.float64)).round().tolist()
    [4.0, 4.0, 4.0, 4.0]
    """
    import torch

    s = s.to(torch.float64)
    if s.numel() == 0:
        return torch.zeros(4, dtype=torch.float64, device=s.device)
    var = s * s
    fro2 = var.sum()
    top = s[0]
    top2 = fro2 if as_published else top * top
    zero = torch.zeros((), dtype=torch.float64, device=s.device)
    stable = torch.where(torch.sqrt(top2) < eps, zero, fro2 / (top2 + eps))
    se = s + eps
    participation = se.sum() ** 2 / ((se * se).sum() + eps)
    cum = torch.cumsum(var, 0)
    below = (cum / cum[-1] < 0.9).sum().to(torch.float64)
    effective = torch.clamp(below + 1, max=float(s.numel()))
    effective = torch.where(fro2 < eps, zero, effective)
    nuclear = torch.where(top < eps, zero, s.sum() / (top + eps))
    return torch.stack([stable, participation, effective, nuclear])


def activation_metrics(
    activations: Sequence[Any], *, eps: float = EPS, as_published: bool = False
) -> Any:
    """The four metrics of each activation tensor, stacked as ``(len(activations), 4)``.

    Parameters
    ----------
    activations
        One tensor per layer, sample axis first (other axes are features).
    eps, as_published
        See :func:`metrics_from_singular_values`.

    Returns
    -------
    torch.Tensor
        float64 on the activations' device (nothing is copied to the host).

    Examples
    --------
    >>> import torch
    >>> activation_metrics([torch.eye(4), torch.ones(3, 2)]).round(decimals=4).tolist()
    [[4.0, 4.0, 4.0, 4.0], [1.0, 1.0, 1.0, 1.0]]
    """
    import torch

    rows = [
        metrics_from_singular_values(s, eps=eps, as_published=as_published)
        for s in gram_singular_values(activations)
    ]
    if not rows:
        return torch.zeros((0, 4), dtype=torch.float64)
    return torch.stack(rows)
