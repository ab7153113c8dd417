"""Figures from labeled arrays, drawn headless.

Every function takes xarray DataArrays/Datasets (or plain numpy arrays, given default
dims), builds a :class:`matplotlib.figure.Figure` without ``pyplot`` (nothing global is
left open), saves it when given ``path`` (format by extension, PNG when none) and
returns it. Plot functions never open a store or compute measurements.
"""

from __future__ import annotations

from ndt_store.plot.activations import activation_heatmap, class_selectivity_heatmap
from ndt_store.plot.attention import (
    attention_heads_comparison,
    attention_pattern,
    entropy_evolution,
)
from ndt_store.plot.overview import experiment_overview
from ndt_store.plot.phase1 import loss_curve, metric_heatmap
from ndt_store.plot.weights import filter_grid, weight_change_bars, weight_change_heatmap

__all__ = [
    "activation_heatmap",
    "attention_heads_comparison",
    "attention_pattern",
    "class_selectivity_heatmap",
    "entropy_evolution",
    "experiment_overview",
    "filter_grid",
    "loss_curve",
    "metric_heatmap",
    "weight_change_bars",
    "weight_change_heatmap",
]
