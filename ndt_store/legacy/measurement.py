"""The documented Phase 2 ``MeasurementTools`` API, forwarding to :mod:`ndt_store.measures`.

Same static methods, names and arguments as the study's code; each converts its
inputs to labeled arrays, calls the labeled measurement and converts the result
back (floats, dicts of floats, numpy arrays). Inputs may be numpy arrays (or
anything ``numpy.asarray`` takes), torch tensors (torch is imported only when one
is passed) or xarray DataArrays (used as they are, with their dim names).

Differences from the study's code, on purpose:

* ``attention_entropy`` and ``attention_specialization`` take attention
  *probabilities*, as attention modules return them. The study applied a softmax
  to its input even though it was already probabilities, which pushed every row
  towards uniform (entropy near ``ln k`` whatever the pattern). Pass
  ``from_logits=True`` to feed pre-softmax scores.
* Entropy uses ``0 · log 0 = 0`` exactly instead of ``log(p + 1e-10)``.
* ``weight_change_magnitude`` with an all-zero ``weights_before`` gives
  ``relative_change`` 0.0 (nothing changed) or ``inf``, never NaN, and no warning.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ndt_store._dims import FEATURE, HEAD, KEY, LABEL, QUERY, SAMPLE
from ndt_store.measures.activations import activation_selectivity, activation_sparsity
from ndt_store.measures.attention import attention_entropy, attention_specialization
from ndt_store.measures.similarity import cosine_similarity
from ndt_store.measures.weights import WEIGHT_CHANGE_VARIABLES, weight_change

__all__ = ["MeasurementTools"]

ATTENTION_DIMS = (SAMPLE, HEAD, QUERY, KEY)
"""Dim names given to a legacy ``[batch, heads, seq_len, seq_len]`` array."""
ACTIVATION_DIMS = (SAMPLE, FEATURE)
"""Dim names given to a legacy ``[batch, features]`` array."""
_SPECIALIZATION_KEYS = ("mean_entropy", "min_entropy", "max_entropy", "entropy_std")


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array, torch tensor (detached, on CPU) or array-like."""
    if type(x).__module__.split(".")[0] == "torch":
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _labeled(x: Any, dims: tuple[str, ...] | None) -> xr.DataArray:
    """A DataArray as given; anything else wrapped with ``dims`` (``None``: default names)."""
    if isinstance(x, xr.DataArray):
        return x
    arr = _to_numpy(x)
    return xr.DataArray(arr) if dims is None else xr.DataArray(arr, dims=dims)


def _flat(x: Any) -> xr.DataArray:
    """A 1-D DataArray of all elements (the study compared flattened tensors)."""
    return xr.DataArray(_to_numpy(x.data if isinstance(x, xr.DataArray) else x).ravel())


class MeasurementTools:
    """Tools for quantifying representational changes (the study's Phase 2 API)."""

    @staticmethod
    def attention_entropy(attention_weights: Any, *, from_logits: bool = False) -> float:
        """Mean attention entropy (nats) over batch, heads and queries.

        Parameters
        ----------
        attention_weights
            ``[batch, heads, seq_len, seq_len]`` probabilities (rows sum to one).
        from_logits
            Treat the input as pre-softmax scores (the study's behaviour).

        Returns
        -------
        float

        Examples
        --------
        >>> p = np.full((2, 4, 3, 8), 1 / 8)
        >>> round(MeasurementTools.attention_entropy(p), 6)  # ln 8
        2.079442
        """
        attn = _labeled(attention_weights, ATTENTION_DIMS)
        return float(attention_entropy(attn, from_logits=from_logits).mean())

    @staticmethod
    def attention_specialization(
        attention_weights: Any, *, from_logits: bool = False
    ) -> dict[str, float]:
        """Spread of per-head mean entropies.

        Parameters
        ----------
        attention_weights
            ``[batch, heads, seq_len, seq_len]`` probabilities.
        from_logits
            Treat the input as pre-softmax scores.

        Returns
        -------
        dict
            ``mean_entropy``, ``min_entropy``, ``max_entropy``, ``entropy_std``
            (population), ``specialization_index`` (max − min).

        Examples
        --------
        >>> p = np.zeros((1, 2, 3, 4)); p[:, 0] = 0.25; p[:, 1, :, 0] = 1.0
        >>> round(MeasurementTools.attention_specialization(p)["specialization_index"], 6)
        1.386294
        """
        attn = _labeled(attention_weights, ATTENTION_DIMS)
        ds = attention_specialization(attn, keep=(), from_logits=from_logits)
        return {k: float(ds[k]) for k in (*_SPECIALIZATION_KEYS, "specialization_index")}

    @staticmethod
    def cosine_similarity(tensor1: Any, tensor2: Any) -> float:
        """Cosine similarity of two flattened tensors; 0.0 if either norm is 0.

        Examples
        --------
        >>> MeasurementTools.cosine_similarity([1.0, 0.0], [0.0, 3.0])
        0.0
        """
        return float(cosine_similarity(_flat(tensor1), _flat(tensor2)))

    @staticmethod
    def weight_change_magnitude(weights_before: Any, weights_after: Any) -> dict[str, float]:
        """Magnitude of a weight change.

        Returns
        -------
        dict
            ``l2_norm``, ``relative_change``, ``max_change``, ``mean_change``,
            ``cosine_similarity`` (see :func:`ndt_store.measures.weights.weight_change`).

        Examples
        --------
        >>> ch = MeasurementTools.weight_change_magnitude([3.0, 4.0], [6.0, 8.0])
        >>> ch["l2_norm"], ch["relative_change"], ch["cosine_similarity"]
        (5.0, 1.0, 1.0)
        """
        ds = weight_change(_flat(weights_before), _flat(weights_after))
        return {k: float(ds[k]) for k in WEIGHT_CHANGE_VARIABLES}

    @staticmethod
    def activation_sparsity(activations: Any, threshold: float = 0.1) -> float:
        """Fraction of activations with ``|a| <= threshold`` (over all elements).

        Examples
        --------
        >>> MeasurementTools.activation_sparsity(np.array([[0.0, 1.0], [0.05, -2.0]]))
        0.5
        """
        act = _labeled(activations, None)
        return float(activation_sparsity(act, threshold=threshold, dims=act.dims))

    @staticmethod
    def activation_selectivity(activations: Any, labels: Any) -> np.ndarray:
        """Mean activation of every feature per class, ``[features, num_classes]``.

        Classes are ``0 .. max(labels)``; a class without samples gets 0.0, as in
        the study.

        Examples
        --------
        >>> MeasurementTools.activation_selectivity(np.array([[1.0], [3.0], [5.0]]), [0, 0, 2])
        array([[2., 0., 5.]])
        """
        act = _labeled(activations, ACTIVATION_DIMS)
        lab = _to_numpy(labels).astype(int)
        act = act.assign_coords({LABEL: (SAMPLE, lab)})
        ds = activation_selectivity(act, classes=np.arange(lab.max() + 1), fill_empty=0.0)
        return ds["class_mean"].to_numpy()
