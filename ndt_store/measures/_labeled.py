"""Raw arrays (numpy, dask, torch) given names so every labeled measure accepts them."""

from __future__ import annotations

import sys
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ndt_store.errors import InputError

__all__ = ["as_labeled"]


def _raw(x: Any) -> Any:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.numpy()
    if hasattr(x, "ndim") and hasattr(x, "shape") and hasattr(x, "dtype"):
        return x  # numpy or dask array: kept as is (dask stays lazy)
    return np.asarray(x)


def as_labeled(
    x: Any,
    *,
    dims: Sequence[Hashable] | None,
    inferred: Mapping[int, tuple[Hashable, ...]],
    what: str,
) -> xr.DataArray:
    """``x`` as a DataArray: a DataArray passes through, raw arrays get dim names.

    Parameters
    ----------
    x
        A DataArray, or a numpy / dask array, torch tensor or nested list.
    dims
        Names of the raw array's dims, in order; ``None`` infers them from the
        number of dims with ``inferred``.
    inferred
        ``{ndim: dims}`` used when ``dims`` is not given.
    what
        The argument's name, for the error message.

    Examples
    --------
    >>> as_labeled(np.zeros((2, 3)), dims=None, inferred={2: ("query", "key")}, what="attn").dims
    ('query', 'key')
    """
    if isinstance(x, xr.DataArray):
        if dims is not None and tuple(dims) != x.dims:
            raise InputError(
                f"{what} is labeled {x.dims!r}; dims= is only for raw arrays",
                field="dims",
                value=tuple(dims),
            )
        return x
    if isinstance(x, xr.Dataset):
        raise InputError(f"{what} must be a DataArray or an array, not a Dataset", field=what)
    raw = _raw(x)
    if dims is None:
        if raw.ndim not in inferred:
            known = ", ".join(f"{n}: {d}" for n, d in sorted(inferred.items()))
            raise InputError(
                f"cannot infer the dims of a {raw.ndim}-d {what} (shape {raw.shape}); "
                f"pass dims=(...) (inferred by number of dims: {known})",
                field="dims",
            )
        dims = inferred[raw.ndim]
    if len(dims) != raw.ndim:
        raise InputError(
            f"{what} has {raw.ndim} dims (shape {raw.shape}) but dims= names {len(dims)}",
            field="dims",
            value=tuple(dims),
        )
    return xr.DataArray(raw, dims=tuple(dims))
