"""Weight-change kernels on raw arrays: guarded ratios of already-reduced norms.

The reductions themselves (norms, maxima, means over parameter axes) are plain
array reductions done by the caller; these kernels only turn the reduced
quantities into ratios with the zero cases defined and no warnings raised.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["relative_change"]


def relative_change(delta_norm: npt.ArrayLike, before_norm: npt.ArrayLike) -> np.ndarray:
    """``‖after − before‖ / ‖before‖`` elementwise, defined where ``‖before‖ == 0``.

    Where ``before_norm`` is 0 the result is ``0.0`` when ``delta_norm`` is also 0
    (nothing changed) and ``inf`` otherwise (something grew out of nothing).
    NaN inputs give NaN. No floating-point warnings are raised.

    Examples
    --------
    >>> relative_change(np.array([1.0, 0.0, 2.0]), np.array([2.0, 0.0, 0.0])).tolist()
    [0.5, 0.0, inf]
    """
    d = np.asarray(delta_norm)
    b = np.asarray(before_norm)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.true_divide(d, b)
    return np.where((b == 0) & (d == 0), np.zeros((), out.dtype), out)
