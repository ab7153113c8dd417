"""Attention measurements: row entropy and head specialization.

Stored attention is ``(step, sample, head, query, key)`` probabilities (each row
sums to one over ``key``). Every function here reduces named dims, keeps the rest
and stays lazy on dask-backed input.

Inputs are checked: probability rows must sum to one (within
:data:`ROW_SUM_TOLERANCE`) and be non-negative, else an
:class:`~ndt_store.errors.InputError` says so and points at
``from_logits=True``; on dask input the check runs inside each chunk's task.
Raw arrays (numpy, dask, torch) are accepted too: name their dims with
``dims=`` or let them be inferred from their number (:data:`INFERRED_DIMS`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from functools import partial
from typing import Any

import numpy as np
import xarray as xr

from ndt_store._dims import EXPERIMENT, HEAD, KEY, LAYER, QUERY, SAMPLE, STEP
from ndt_store._frame import chunk_reduce
from ndt_store._kernels import attention as _k
from ndt_store.errors import InputError
from ndt_store.measures._labeled import as_labeled

__all__ = [
    "INFERRED_DIMS",
    "ROW_SUM_TOLERANCE",
    "attention_entropy",
    "attention_specialization",
    "head_entropy",
]

ROW_SUM_TOLERANCE = 1e-3
"""How far from 1 a probability row may sum (float16/float32 softmax outputs pass)."""

INFERRED_DIMS: dict[int, tuple[Hashable, ...]] = {
    1: (KEY,),
    2: (QUERY, KEY),
    3: (HEAD, QUERY, KEY),
    4: (SAMPLE, HEAD, QUERY, KEY),
    5: (STEP, SAMPLE, HEAD, QUERY, KEY),
}
"""Dims given to a raw attention array by its number of dims (``[batch, heads, q, k]``...)."""


def _not_probabilities(what: str) -> InputError:
    return InputError(
        f"attention rows are not probabilities ({what}; each row must sum to 1 within "
        f"{ROW_SUM_TOLERANCE:g}): pass from_logits=True for pre-softmax scores, or "
        "normalise the rows",
        field="attn",
    )


def _checked_entropy(x: Any, axis: int, from_logits: bool) -> np.ndarray:
    """Row entropy along ``axis``; rows must be probabilities unless ``from_logits``.

    The check runs inside the kernel, block by block, at no extra pass over memory.
    """
    try:
        return _k.entropy(x, axis=axis, from_logits=from_logits, row_tolerance=ROW_SUM_TOLERANCE)
    except _k.NotProbabilitiesError as exc:
        raise _not_probabilities(exc.what) from None


DEFAULT_KEEP: tuple[Hashable, ...] = (EXPERIMENT, STEP, LAYER)
"""Dims :func:`attention_specialization` keeps by default (those present)."""


def _entropy_block(x: Any, from_logits: bool) -> Any:
    return _checked_entropy(x, -1, from_logits)[..., None]


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
    return _checked_entropy(x, -1, from_logits)


def attention_entropy(
    attn: Any,
    *,
    dim: Hashable = KEY,
    from_logits: bool = False,
    dims: tuple[Hashable, ...] | None = None,
) -> xr.DataArray:
    """Shannon entropy (nats) of every attention row over ``dim``.

    The input is probabilities; ``0 · log 0`` counts as 0, so a one-hot row gives
    0 and a uniform row over ``k`` keys gives ``ln k``. With ``from_logits=True``
    a softmax over ``dim`` is applied first (pre-softmax scores).

    Parameters
    ----------
    attn
        Attention probabilities, e.g. ``(step, sample, head, query, key)``: a
        DataArray, or a raw numpy/dask array or torch tensor (see ``dims``).
        Rows that do not sum to one raise :class:`InputError`.
    dim
        Dim each distribution lies along; it is removed from the result.
    from_logits
        Treat ``attn`` as logits and apply a softmax first.
    dims
        Dim names of a raw array; default inferred from its number of dims
        (:data:`INFERRED_DIMS`: 4 dims are ``(sample, head, query, key)``).

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
    >>> attention_entropy(np.full((2, 4), 0.25)).dims  # a raw array: dims inferred
    ('query',)
    """
    attn = as_labeled(attn, dims=dims, inferred=INFERRED_DIMS, what="attn")
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


def _mean_entropy_block(
    x: np.ndarray, *, key_axis: int, avg_axes: tuple[int, ...], from_logits: bool
) -> np.ndarray:
    """Row entropy over ``key_axis``, then the mean over ``avg_axes`` (of ``x``)."""
    e = _checked_entropy(x, key_axis, from_logits)
    axes = tuple(a - (a > key_axis) for a in avg_axes)
    if not axes:
        return e
    count = int(np.prod([e.shape[a] for a in axes]))
    total = np.sum(e, axis=axes, dtype=np.float64)
    return (total / count).astype(e.dtype, copy=False) if count else np.full_like(total, np.nan)


def _keep_tuple(keep: Hashable | Iterable[Hashable]) -> tuple[Hashable, ...]:
    return (keep,) if isinstance(keep, str) or not isinstance(keep, Iterable) else tuple(keep)


def head_entropy(
    attn: Any,
    *,
    head_dim: Hashable = HEAD,
    keep: Hashable | Iterable[Hashable] = DEFAULT_KEEP,
    dim: Hashable = KEY,
    from_logits: bool = False,
    dims: tuple[Hashable, ...] | None = None,
) -> xr.DataArray:
    """Mean attention entropy per head: per (experiment, step, layer, head) by default.

    The same as ``attention_entropy(attn).mean(avg, skipna=False)`` where ``avg`` is
    every dim but ``head_dim`` and the ``keep`` dims present, computed in one pass:
    on attention read lazily from a store (untouched, as ``store.attention`` returns
    it), each stored chunk is read, reduced to its per-head means and released in
    one task, so nothing but the result is ever held beyond one chunk per thread;
    on other dask arrays it is the lazy two-step reduction, on numpy the same kernels
    directly. Means are accumulated in float64 and returned in the input's float dtype.

    Parameters
    ----------
    attn
        Attention probabilities, e.g. ``(step, sample, head, query, key)``.
    head_dim, keep
        Dims kept: ``head_dim`` and each ``keep`` dim present; the rest are averaged.
    dim, from_logits, dims
        As in :func:`attention_entropy`.

    Returns
    -------
    xarray.DataArray
        Named ``head_entropy``, dims of ``attn`` without ``dim`` and the averaged ones.

    Examples
    --------
    >>> p = np.zeros((1, 2, 3, 4))
    >>> p[:, 0] = 0.25          # head 0 uniform
    >>> p[:, 1, :, 0] = 1.0     # head 1 one-hot
    >>> a = xr.DataArray(p, dims=("sample", "head", "query", "key"))
    >>> head_entropy(a).round(6).values.tolist()
    [1.386294, 0.0]
    """
    attn = as_labeled(attn, dims=dims, inferred=INFERRED_DIMS, what="attn")
    for name, d in (("dim", dim), ("head_dim", head_dim)):
        if d not in attn.dims:
            raise InputError(
                f"attention has no dim {d!r} (dims {attn.dims!r})", field=name, value=d
            )
    keep_t = _keep_tuple(keep)
    avg = [d for d in attn.dims if d not in (dim, head_dim) and d not in keep_t]
    attrs = {
        "long_name": "mean attention entropy per head",
        "units": "nat",
        "averaged_dims": ", ".join(map(str, avg)),
        "input": "logits" if from_logits else "probabilities",
    }
    func = partial(
        _mean_entropy_block,
        key_axis=attn.get_axis_num(dim),
        avg_axes=tuple(attn.get_axis_num(d) for d in avg),
        from_logits=from_logits,
    )
    dropped = [*avg, dim]
    template = attn.isel({d: 0 for d in dropped}, drop=True)
    fast = chunk_reduce(
        attn.data,
        func,
        drop_axes=[attn.get_axis_num(d) for d in dropped],
        dtype=_k.float_dtype(attn.dtype),
    )
    if fast is not None:
        out = template.copy(data=fast)
    elif isinstance(attn.data, np.ndarray):
        out = template.copy(data=func(attn.data))
    else:
        ent = attention_entropy(attn, dim=dim, from_logits=from_logits)
        out = ent.mean(avg, skipna=False) if avg else ent
    return out.rename("head_entropy").assign_attrs(attrs)


def attention_specialization(
    attn: Any,
    *,
    head_dim: Hashable = HEAD,
    keep: Hashable | Iterable[Hashable] = DEFAULT_KEEP,
    dim: Hashable = KEY,
    from_logits: bool = False,
    dims: tuple[Hashable, ...] | None = None,
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
    dim, from_logits, dims
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
    attn = as_labeled(attn, dims=dims, inferred=INFERRED_DIMS, what="attn")
    if head_dim not in attn.dims:
        raise InputError(
            f"attention has no head dim {head_dim!r} (dims {attn.dims!r})",
            field="head_dim",
            value=head_dim,
        )
    per_head = head_entropy(attn, head_dim=head_dim, keep=keep, dim=dim, from_logits=from_logits)
    lo = per_head.min([head_dim], skipna=False)
    hi = per_head.max([head_dim], skipna=False)
    attrs = {"units": "nat", "input": per_head.attrs["input"]}
    ds = xr.Dataset(
        {
            "head_entropy": per_head,
            "mean_entropy": per_head.mean([head_dim], skipna=False).assign_attrs(
                long_name="mean of head entropies", **attrs
            ),
            "min_entropy": lo.assign_attrs(long_name="lowest head entropy", **attrs),
            "max_entropy": hi.assign_attrs(long_name="highest head entropy", **attrs),
            "entropy_std": per_head.std([head_dim], skipna=False, ddof=0).assign_attrs(
                long_name="population std of head entropies", **attrs
            ),
            "specialization_index": (hi - lo).assign_attrs(
                long_name="highest minus lowest head entropy", **attrs
            ),
        }
    )
    return ds.assign_attrs(description="attention head specialization", head_dim=str(head_dim))
