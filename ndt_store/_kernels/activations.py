"""Activation kernels on raw arrays: one-hot class membership and the selectivity index."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["one_hot", "selectivity_index"]


def one_hot(labels: npt.ArrayLike, classes: npt.ArrayLike, dtype: npt.DTypeLike = np.float64):
    """Membership matrix ``M[i, c] = labels[i] == classes[c]`` as ``dtype``.

    A label that is in no class gets an all-zero row. Used to take class means as
    one matrix product instead of a loop over classes.

    Examples
    --------
    >>> one_hot(np.array([2, 0, 2]), np.array([0, 1, 2])).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    lab = np.asarray(labels)
    cls = np.asarray(classes)
    return (lab[..., :, None] == cls[None, :]).astype(dtype)


def selectivity_index(mu_max: npt.ArrayLike, mu_rest: npt.ArrayLike) -> np.ndarray:
    """Class-selectivity index ``(μmax − μrest) / (μmax + μrest)`` elementwise.

    Where ``μmax == μrest`` (every class mean equal, e.g. a dead unit: the 0/0
    case) the index is 0.0. Where only the denominator is 0 (signed activations
    whose means cancel, outside the index's non-negative domain) it is NaN.
    No floating-point warnings are raised.

    Examples
    --------
    >>> selectivity_index(np.array([3.0, 0.0, 1.0]), np.array([1.0, 0.0, -1.0])).tolist()
    [0.5, 0.0, nan]
    """
    hi = np.asarray(mu_max)
    rest = np.asarray(mu_rest)
    num = hi - rest
    den = hi + rest
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.true_divide(num, den)
    out = np.where(den == 0, np.nan, out)
    return np.where(num == 0, np.zeros((), out.dtype), out)
