"""Tests for the documented legacy ``VisualizationTools`` facade."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure
from PIL import Image

from ndt_store._dims import FEATURE, HEAD, KEY, QUERY, SAMPLE, STEP
from ndt_store.legacy.visualization import VisualizationTools as VT

torch = pytest.importorskip("torch")
RNG = np.random.default_rng(1)


@pytest.fixture(autouse=True)
def _no_show(monkeypatch: pytest.MonkeyPatch) -> None:
    """The facade returns figures; it must never call pyplot's show."""

    def boom(*_: Any, **__: Any) -> None:
        raise AssertionError("plt.show() was called")

    monkeypatch.setattr(plt, "show", boom)


def _attn() -> np.ndarray:
    x = RNG.random((2, 4, 3, 3)).astype(np.float32)
    return x / x.sum(-1, keepdims=True)


KINDS = ["numpy", "torch", "xarray"]


def _as(kind: str, arr: np.ndarray, dims: tuple[str, ...]) -> Any:
    if kind == "torch":
        return torch.from_numpy(arr).requires_grad_(arr.dtype.kind == "f")
    if kind == "xarray":
        return xr.DataArray(arr, dims=dims)
    return arr


ATT_DIMS = (SAMPLE, HEAD, QUERY, KEY)


@pytest.mark.parametrize("kind", KINDS)
def test_attention_pattern(kind: str, tmp_path: Path) -> None:
    a = _attn()
    fig = VT.plot_attention_pattern(
        _as(kind, a, ATT_DIMS), ["x", "y", "z"], head_idx=2, save_path=tmp_path / "a.png"
    )
    assert isinstance(fig, Figure)
    with Image.open(tmp_path / "a.png") as im:
        assert im.size == (640, 520)
    ax = fig.axes[0]
    assert "head 2" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y", "z"]
    np.testing.assert_allclose(ax.images[0].get_array(), a[:, 2].mean(0), rtol=1e-6)
    assert plt.get_fignums() == []


def test_head_idx_is_positional_on_labeled_heads() -> None:
    a = xr.DataArray(_attn(), dims=ATT_DIMS, coords={HEAD: [10, 11, 12, 13]})
    fig = VT.plot_attention_pattern(a, ["x", "y", "z"], head_idx=1)
    assert "head 11" in fig.axes[0].get_title()


@pytest.mark.parametrize("kind", KINDS)
def test_heads_comparison(kind: str) -> None:
    before, after = _attn(), _attn()
    fig = VT.plot_attention_heads_comparison(
        _as(kind, before, ATT_DIMS), _as(kind, after, ATT_DIMS), num_heads=2
    )
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == [
        "head 0, before",
        "head 1, before",
        "head 0, after",
        "head 1, after",
    ]
    clims = {ax.images[0].get_clim() for ax in panels}
    assert len(clims) == 1  # shared colour scale
    big = VT.plot_attention_heads_comparison(before, after, num_heads=99)
    assert len([ax for ax in big.axes if ax.images]) == 8  # capped at the 4 heads available


@pytest.mark.parametrize("kind", KINDS)
def test_filter_visualization_multichannel_is_not_channel0(kind: str) -> None:
    w = RNG.normal(size=(20, 2, 3, 3)).astype(np.float32)
    fig = VT.plot_filter_visualization(_as(kind, w, ("o", "i", "y", "x")), num_filters=16)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 16
    np.testing.assert_allclose(panels[3].images[0].get_array(), w[3].mean(0), rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_activation_heatmap(kind: str) -> None:
    act = RNG.random((5, 3)).astype(np.float32)
    fig = VT.plot_activation_heatmap(_as(kind, act, (SAMPLE, FEATURE)), labels=list("abcde"))
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), act.T, rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcde")


@pytest.mark.parametrize("kind", KINDS)
def test_entropy_evolution(kind: str, tmp_path: Path) -> None:
    ent = np.array([2.0, 1.5, 1.2, 1.1], dtype=np.float32)
    fig = VT.plot_entropy_evolution(
        _as(kind, ent, (STEP,)), [0, 5, 10, 15], jump_steps=[5], save_path=tmp_path / "e.pdf"
    )
    assert (tmp_path / "e.pdf").read_bytes().startswith(b"%PDF")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [0, 5, 10, 15])
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == "jump"


def test_bfloat16_tensor() -> None:
    a = torch.from_numpy(_attn()).to(torch.bfloat16)
    fig = VT.plot_attention_pattern(a, ["x", "y", "z"])
    assert fig.axes[0].images[0].get_array().shape == (3, 3)
