"""Shared helpers for the measurement tests (backends, no-compute guard) and their own checks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

BACKENDS = ("numpy", "dask")


def to_backend(arr: xr.DataArray, backend: str, chunks: Any = None) -> xr.DataArray:
    """``arr`` as given (numpy) or with dask-backed data in ``chunks`` (default: halves).

    Only the data becomes lazy; coordinates stay eager numpy, as the store hands them out.
    """
    if backend == "numpy":
        return arr
    sizes = {d: max(1, (n + 1) // 2) for d, n in arr.sizes.items()}
    sizes.update(chunks or {})
    return arr.copy(data=da.from_array(arr.data, chunks=tuple(sizes[d] for d in arr.dims)))


def is_lazy(obj: xr.DataArray | xr.Dataset) -> bool:
    """True when every data variable of ``obj`` is dask-backed."""
    arrays = obj.data_vars.values() if isinstance(obj, xr.Dataset) else [obj]
    return all(isinstance(a.data, da.Array) for a in arrays)


@contextmanager
def no_compute() -> Iterator[None]:
    """Fail the test if anything is computed with dask inside the block."""

    def _refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a dask computation ran while building a lazy result")

    with dask.config.set(scheduler=_refuse):
        yield


def test_no_compute_guard_catches_a_compute() -> None:
    lazy = xr.DataArray(da.ones((4, 4), chunks=2), dims=("a", "b"))
    with no_compute():
        total = lazy.sum()  # building is fine
        with pytest.raises(AssertionError, match="dask computation ran"):
            total.values  # noqa: B018
    assert float(total) == 16.0


def test_to_backend_chunks_every_dim() -> None:
    arr = xr.DataArray(np.zeros((4, 3)), dims=("a", "b"))
    lazy = to_backend(arr, "dask")
    assert is_lazy(lazy)
    assert lazy.chunks == ((2, 2), (2, 1))
    assert not is_lazy(to_backend(arr, "numpy"))
    assert to_backend(arr, "dask", {"a": 1}).chunks == ((1, 1, 1, 1), (2, 1))


def test_docs_examples_run() -> None:
    """Every python block of docs/measurements.md runs, in order, in one namespace."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "measurements.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    assert len(blocks) >= 5
    namespace: dict[str, Any] = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
