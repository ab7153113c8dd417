"""Values as strict JSON types: one converter for reports, the web views and the CLI."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, dataclasses and paths as JSON types; NaN/inf as None.

    Mappings become dicts with string keys, tuples lists. Float arrays are
    converted in one vectorized pass (large web payloads).

    Examples
    --------
    >>> jsonable({"a": np.float64(1.5), "b": [np.nan, np.int64(2)]})
    {'a': 1.5, 'b': [None, 2]}
    >>> jsonable({"a": np.float64("nan"), "b": np.arange(2), 1: np.array([np.inf, 0.5])})
    {'a': None, 'b': [0, 1], '1': [None, 0.5]}
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            obj = value.astype(object)
            obj[~np.isfinite(value)] = None
            return obj.tolist()
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
