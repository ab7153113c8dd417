"""The documented Phase 2 ``VisualizationTools`` API, forwarding to :mod:`ndt_store.plot`.

Same method names and arguments as the study's code. Differences, on purpose:

* With ``save_path=None`` the study called ``plt.show()``; these methods return the
  :class:`matplotlib.figure.Figure` instead (display it in a notebook, or save it).
  Every method returns the figure, saved or not; nothing is left open in ``pyplot``.
* ``plot_attention_heads_comparison`` puts all panels on one shared colour scale, so
  before and after are comparable (the study scaled each panel separately).
* ``plot_filter_visualization`` shows three-channel filters in colour and averages
  other multi-channel filters (the study silently showed input channel 0).

Inputs may be numpy arrays, torch tensors (torch is never imported unless one is
passed) or xarray DataArrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ndt_store._dims import HEAD, STEP
from ndt_store.plot import (
    activation_heatmap,
    attention_heads_comparison,
    attention_pattern,
    entropy_evolution,
    filter_grid,
)
from ndt_store.plot._common import as_dataarray, as_numpy
from ndt_store.plot.attention import ATTENTION_DIMS


def _head_labels(attn: xr.DataArray) -> list[Any]:
    if HEAD in attn.coords:
        return list(attn[HEAD].values)
    return list(range(attn.sizes[HEAD]))


class VisualizationTools:
    """Plots of representations (the study's Phase 2 ``VisualizationTools``)."""

    @staticmethod
    def plot_attention_pattern(
        attention_weights: Any,
        tokens: Sequence[str],
        head_idx: int = 0,
        save_path: str | Path | None = None,
    ) -> Figure:
        """Heatmap of one head's attention, averaged over the batch.

        Parameters
        ----------
        attention_weights
            ``[batch, heads, seq_len, seq_len]`` (numpy, torch or DataArray).
        tokens
            Token strings labelling query and key positions.
        head_idx
            Position of the head to show.
        save_path
            Where to save the plot (format by extension).

        Returns
        -------
        matplotlib.figure.Figure

        Examples
        --------
        >>> import numpy as np
        >>> fig = VisualizationTools.plot_attention_pattern(
        ...     np.full((1, 2, 3, 3), 1 / 3), ["a", "b", "c"], head_idx=1)
        """
        da = as_dataarray(attention_weights, ATTENTION_DIMS, what="attention_weights")
        head = _head_labels(da)[head_idx] if HEAD in da.dims else head_idx
        return attention_pattern(da, head=head, tokens=list(tokens), path=save_path)

    @staticmethod
    def plot_attention_heads_comparison(
        attention_before: Any,
        attention_after: Any,
        num_heads: int = 4,
        save_path: str | Path | None = None,
    ) -> Figure:
        """Compare the first ``num_heads`` heads before (top row) and after (bottom row).

        Parameters
        ----------
        attention_before, attention_after
            ``[batch, heads, seq_len, seq_len]`` (numpy, torch or DataArray).
        num_heads
            Number of heads to show (capped at the number available).
        save_path
            Where to save the plot (format by extension).

        Returns
        -------
        matplotlib.figure.Figure

        Examples
        --------
        >>> import numpy as np
        >>> a = np.full((1, 4, 3, 3), 1 / 3)
        >>> fig = VisualizationTools.plot_attention_heads_comparison(a, a, num_heads=2)
        """
        before = as_dataarray(attention_before, ATTENTION_DIMS, what="attention_before")
        after = as_dataarray(attention_after, ATTENTION_DIMS, what="attention_after")
        heads = _head_labels(before)[:num_heads] if HEAD in before.dims else num_heads
        return attention_heads_comparison(before, after, heads=heads, path=save_path)

    @staticmethod
    def plot_filter_visualization(
        filters: Any, num_filters: int = 16, save_path: str | Path | None = None
    ) -> Figure:
        """Grid of the first ``num_filters`` CNN filters ``[out_channels, in_channels, H, W]``.

        Returns
        -------
        matplotlib.figure.Figure

        Examples
        --------
        >>> import numpy as np
        >>> fig = VisualizationTools.plot_filter_visualization(np.ones((4, 1, 3, 3)))
        """
        return filter_grid(filters, num_filters=num_filters, path=save_path)

    @staticmethod
    def plot_activation_heatmap(
        activations: Any,
        labels: Sequence[Any] | None = None,
        save_path: str | Path | None = None,
    ) -> Figure:
        """Heatmap of activations ``[samples, features]`` (features as rows).

        Returns
        -------
        matplotlib.figure.Figure

        Examples
        --------
        >>> import numpy as np
        >>> fig = VisualizationTools.plot_activation_heatmap(np.eye(3), labels=["x", "y", "z"])
        """
        return activation_heatmap(
            activations, labels=None if labels is None else list(labels), path=save_path
        )

    @staticmethod
    def plot_entropy_evolution(
        entropies: Any,
        steps: Sequence[int],
        jump_steps: Sequence[int] | None = None,
        save_path: str | Path | None = None,
    ) -> Figure:
        """Attention entropy over training steps, jump steps as dashed lines.

        Parameters
        ----------
        entropies
            One value per step, or ``[steps, heads]`` for one line per head.
        steps
            Training steps.
        jump_steps
            Steps where jumps occurred.
        save_path
            Where to save the plot (format by extension).

        Returns
        -------
        matplotlib.figure.Figure

        Examples
        --------
        >>> fig = VisualizationTools.plot_entropy_evolution([2.0, 1.5, 1.4], [0, 5, 10], [5])
        """
        if isinstance(entropies, xr.DataArray):
            da = entropies
        else:
            values = as_numpy(entropies)
            dims = (STEP, HEAD)[: values.ndim]
            da = xr.DataArray(values, dims=dims)
        da = da.assign_coords({STEP: np.asarray(as_numpy(steps))})
        return entropy_evolution(da, jump_steps=jump_steps, path=save_path)


__all__ = ["VisualizationTools"]
