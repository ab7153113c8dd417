"""Attention measurements: row entropy and head specialization.

Stored attention is ``(step, sample, head, query, key)`` probabilities (each row
sums to one over ``key``). Every function here reduces named dims, keeps the rest
and stays lazy on dask-backed input.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import xarray as xr

from ndt_store._dims import EXPERIMENT, HEAD, KEY, LAYER, STEP
from ndt_store._kernels import attention as _k
from ndt_store.errors import InputError

__all__ = ["attention_entropy", "attention_specialization"]

DEFAULT_KEEP: tuple[Hashable, ...] = (EXPERIMENT, STEP, LAYER)
"""Dims :func:`attention_specialization` keeps by default (those present)."""


def _entropy_block(x: Any, from_logits: bool) -> Any:
    return _k.entropy(x, axis=-1, from_logits=from_logits)[..., None]


def _entropy_any(x: Any, *, from_logits: bool = False) -> Any:
    """Row entropy over the last axis of a numpy or dask array (dask stays lazy).

    For dask, one task per chunk with ``map_blocks`` keeping the reduced axis at
    length 1 and dropping it by indexing: unlike ``apply_ufunc(dask="parallelized")``
    this does not copy every block.
    """
    if hasattr(x, "map_blocks") and hasattr(x, "rechunk"):
        x = x.rechunk({x.ndim - 1: -1})
        kept = x.map_blocks(
            _entropy_block,
            from_logits,
            chunks=(*x.chunks[:-1], (1,) * len(x.chunks[-1])),
            dtype=_k.float_dtype(x.dtype),
        )
        return kept[..., 0]
    return _k.entropy(x, axis=-1, from_logits=from_logits)


def attention_entropy(
    attn: xr.DataArray, *, dim: Hashable = KEY, from_logits: bool = False
) -> xr.DataArray:
    """Shannon entropy (nats) of every attention row over ``dim``.

    The input is probabilities; ``0 · log 0`` counts as 0, so a one-hot row gives
    0 and a uniform row over ``k`` keys gives ``ln k``. With ``from_logits=True``
    a softmax over ``dim`` is applied first (pre-softmax scores).

    Parameters
    ----------
    attn
        Attention probabilities, e.g. ``(step, sample, head, query, key)``.
    dim
        Dim each distribution lies along; it is removed from the result.
    from_logits
        Treat ``attn`` as logits and apply a softmax first.

    Returns
    -------
    xarray.DataArray
        Named ``attention_entropy``: ``attn`` without ``dim``; float32 input stays
        float32. Lazy on dask input (a chunked ``dim`` is merged into one chunk).

    Examples
    --------
    >>> import numpy as np
    >>> p = xr.DataArray(np.full((2, 4), 0.25), dims=("query", "key"))
    >>> attention_entropy(p).round(6).values.tolist()  # ln 4
    [1.386294, 1.386294]
    """
    if dim not in attn.dims:
        raise InputError(
            f"attention has no dim {dim!r} (dims {attn.dims!r})", field="dim", value=dim
        )
    out = xr.apply_ufunc(
        _entropy_any,
        attn,
        input_core_dims=[[dim]],
        kwargs={"from_logits": from_logits},
        dask="allowed",
    )
    return out.rename("attention_entropy").assign_attrs(
        long_name="attention entropy",
        units="nat",
        reduced_dims=str(dim),
        input="logits" if from_logits else "probabilities",
    )


def attention_specialization(
    attn: xr.DataArray,
    *,
    head_dim: Hashable = HEAD,
    keep: Hashable | Iterable[Hashable] = DEFAULT_KEEP,
    dim: Hashable = KEY,
    from_logits: bool = False,
) -> xr.Dataset:
    """How differently the heads attend: spread of the per-head mean entropies.

    Per-head entropy is :func:`attention_entropy` averaged over every dim except
    ``head_dim`` and the ``keep`` dims present (by default experiment, step and
    layer); across heads it is then summarized by mean, min, max, population std
    and ``specialization_index = max − min``.

    Parameters
    ----------
    attn
        Attention probabilities, e.g. ``(step, sample, head, query, key)``.
    head_dim
        Dim of the heads.
    keep
        Dims to keep (each present one); all others but ``head_dim`` are averaged.
    dim, from_logits
        As in :func:`attention_entropy`.

    Returns
    -------
    xarray.Dataset
        ``head_entropy`` (keep dims + head) and ``mean_entropy``, ``min_entropy``,
        ``max_entropy``, ``entropy_std``, ``specialization_index`` (keep dims).

    Examples
    --------
    >>> import numpy as np
    >>> p = np.zeros((1, 2, 3, 4))
    >>> p[:, 0] = 0.25          # head 0 uniform
    >>> p[:, 1, :, 0] = 1.0     # head 1 one-hot
    >>> a = xr.DataArray(p, dims=("sample", "head", "query", "key"))
    >>> float(attention_specialization(a)["specialization_index"].round(6))  # ln 4
    1.386294
    """
    if head_dim not in attn.dims:
        raise InputError(
            f"attention has no head dim {head_dim!r} (dims {attn.dims!r})",
            field="head_dim",
            value=head_dim,
        )
    keep_t = (keep,) if isinstance(keep, str) or not isinstance(keep, Iterable) else tuple(keep)
    ent = attention_entropy(attn, dim=dim, from_logits=from_logits)
    avg = [d for d in ent.dims if d != head_dim and d not in keep_t]
    head_entropy = ent.mean(avg, skipna=False) if avg else ent
    lo = head_entropy.min([head_dim], skipna=False)
    hi = head_entropy.max([head_dim], skipna=False)
    attrs = {"units": "nat", "input": ent.attrs["input"]}
    ds = xr.Dataset(
        {
            "head_entropy": head_entropy.assign_attrs(
                long_name="mean attention entropy per head",
                averaged_dims=", ".join(map(str, avg)),
                **attrs,
            ),
            "mean_entropy": head_entropy.mean([head_dim], skipna=False).assign_attrs(
                long_name="mean of head entropies", **attrs
            ),
            "min_entropy": lo.assign_attrs(long_name="lowest head entropy", **attrs),
            "max_entropy": hi.assign_attrs(long_name="highest head entropy", **attrs),
            "entropy_std": head_entropy.std([head_dim], skipna=False, ddof=0).assign_attrs(
                long_name="population std of head entropies", **attrs
            ),
            "specialization_index": (hi - lo).assign_attrs(
                long_name="highest minus lowest head entropy", **attrs
            ),
        }
    )
    return ds.assign_attrs(description="attention head specialization", head_dim=str(head_dim))
