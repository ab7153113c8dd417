"""Tests for ndt_store.plot: rendering, labels from coordinates, formats, no leaks."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dask
import dask.array as dsa
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.figure import Figure
from PIL import Image

from ndt_store._dims import (
    ARCH_NAME,
    CLASS,
    EXPERIMENT,
    FEATURE,
    HEAD,
    INDEX,
    KEY,
    LABEL,
    LAYER,
    LOSS,
    PARAMETER,
    QUERY,
    SAMPLE,
    STABLE_RANK,
    STEP,
)
from ndt_store.errors import InputError
from ndt_store.plot import (
    activation_heatmap,
    attention_heads_comparison,
    attention_pattern,
    class_selectivity_heatmap,
    entropy_evolution,
    experiment_overview,
    filter_grid,
    loss_curve,
    metric_heatmap,
    weight_change_bars,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RNG = np.random.default_rng(0)

# ----------------------------------------------------------------------------- inputs


def _attn_np(b: int = 2, h: int = 3, s: int = 4) -> np.ndarray:
    x = RNG.random((b, h, s, s))
    return x / x.sum(-1, keepdims=True)


def _label(arr: np.ndarray, dims: tuple, coords: dict, backend: str, **kw: Any) -> xr.DataArray:
    data = dsa.from_array(arr, chunks=1) if backend == "dask" else arr
    return xr.DataArray(data, dims=dims, coords=coords, **kw)


TOKENS = ["the", "cat", "sat", "down"]


def attn_da(backend: str = "numpy", arr: np.ndarray | None = None, step: int = 100) -> xr.DataArray:
    arr = _attn_np() if arr is None else arr
    return _label(
        arr,
        (SAMPLE, HEAD, QUERY, KEY),
        {HEAD: [10, 11, 12], QUERY: TOKENS, KEY: TOKENS, STEP: step},
        backend,
    )


def phase1_da(backend: str = "numpy") -> xr.DataArray:
    steps = np.arange(0, 50, 5)
    arr = np.cumsum(RNG.random((steps.size, 3)), axis=0)
    return _label(
        arr,
        (STEP, LAYER),
        {STEP: steps, LAYER: ["network.0", "network.2", "fc"]},
        backend,
        name=STABLE_RANK,
    )


def overview_ds(backend: str = "numpy") -> xr.Dataset:
    steps = np.arange(0, 30, 5)
    arr = RNG.random((3, steps.size, 3))
    arr[2, :, 2] = np.nan  # layer absent from the third experiment
    da = _label(
        arr,
        (EXPERIMENT, STEP, LAYER),
        {
            EXPERIMENT: ["mlp_a_mnist", "cnn_b_mnist", "mlp_a_qmnist"],
            STEP: steps,
            LAYER: ["l0", "l1", "l2"],
            ARCH_NAME: (EXPERIMENT, ["mlp_a", "cnn_b", "mlp_a"]),
        },
        backend,
    )
    return xr.Dataset({STABLE_RANK: da})


# One labeled and one raw call per plot: name -> (labeled builder, raw builder).
CASES: dict[str, tuple[Callable[[str], Any], Callable[[], Any]]] = {
    "attention_pattern": (
        lambda b: lambda p: attention_pattern(attn_da(b), head=11, path=p),
        lambda: lambda p: attention_pattern(_attn_np(), head=1, tokens=TOKENS, path=p),
    ),
    "attention_heads_comparison": (
        lambda b: (
            lambda p: attention_heads_comparison(
                attn_da(b, step=100), attn_da(b, step=200), heads=[10, 12], path=p
            )
        ),
        lambda: lambda p: attention_heads_comparison(_attn_np(), _attn_np(), heads=2, path=p),
    ),
    "filter_grid": (
        lambda b: (
            lambda p: filter_grid(
                _label(
                    RNG.normal(size=(5, 2, 3, 3)),
                    ("out", "in", "y", "x"),
                    {"out": list("abcde")},
                    b,
                ),
                path=p,
            )
        ),
        lambda: lambda p: filter_grid(RNG.normal(size=(6, 3, 3, 3)), num_filters=4, path=p),
    ),
    "activation_heatmap": (
        lambda b: (
            lambda p: activation_heatmap(
                _label(
                    RNG.random((6, 4)), (SAMPLE, FEATURE), {LABEL: (SAMPLE, [3, 1, 4, 1, 5, 9])}, b
                ),
                path=p,
            )
        ),
        lambda: lambda p: activation_heatmap(RNG.random((6, 4)), labels=list("abcdef"), path=p),
    ),
    "entropy_evolution": (
        lambda b: (
            lambda p: entropy_evolution(
                _label(
                    RNG.random((5, 2)), (STEP, HEAD), {STEP: [0, 5, 10, 15, 20], HEAD: [0, 1]}, b
                ),
                jump_steps=[10],
                path=p,
            )
        ),
        lambda: lambda p: entropy_evolution(RNG.random(5), path=p),
    ),
    "metric_heatmap": (
        lambda b: lambda p: metric_heatmap(phase1_da(b), jumps={"fc": [10]}, path=p),
        lambda: lambda p: metric_heatmap(RNG.random((8, 3)), path=p),
    ),
    "loss_curve": (
        lambda b: (
            lambda p: loss_curve(
                _label(
                    np.exp(-np.arange(10.0)), (STEP,), {STEP: np.arange(0, 50, 5)}, b, name=LOSS
                ),
                moments=[15],
                path=p,
            )
        ),
        lambda: lambda p: loss_curve(np.exp(-np.arange(10.0)), path=p),
    ),
    "weight_change_bars": (
        lambda b: (
            lambda p: weight_change_bars(
                _label(
                    np.array([0.3, 0.1, 0.7]), (PARAMETER,), {PARAMETER: ["a.w", "a.b", "c.w"]}, b
                ),
                path=p,
            )
        ),
        lambda: lambda p: weight_change_bars(np.array([0.3, 0.1, 0.7]), path=p),
    ),
    "class_selectivity_heatmap": (
        lambda b: (
            lambda p: class_selectivity_heatmap(
                _label(RNG.random((5, 3)), (FEATURE, CLASS), {CLASS: ["cat", "dog", "eel"]}, b),
                path=p,
            )
        ),
        lambda: lambda p: class_selectivity_heatmap(RNG.random((5, 3)), path=p),
    ),
    "experiment_overview": (
        lambda b: lambda p: experiment_overview(overview_ds(b), path=p),
        lambda: lambda p: experiment_overview(overview_ds("numpy")[STABLE_RANK].values, path=p),
    ),
}


def _texts(fig: Figure) -> list[str]:
    """Every title, axis label, tick label and legend text of a figure."""
    out = [fig.get_suptitle()] if fig.get_suptitle() else []
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        if ax.get_legend() is not None:
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    return out


def _check_png(path: Path, fig: Figure, dpi: int = 100) -> None:
    assert path.exists()
    with Image.open(path) as im:
        w, h = fig.get_size_inches() * dpi
        assert im.size == (round(w), round(h))
        px = np.asarray(im.convert("L"), dtype=float)
    assert px.var() > 0


# ----------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("backend", ["numpy", "dask"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_labeled_renders_png(name: str, backend: str, tmp_path: Path) -> None:
    plot = CASES[name][0](backend)
    fig = plot(tmp_path / f"{name}.png")
    assert isinstance(fig, Figure)
    _check_png(tmp_path / f"{name}.png", fig)


@pytest.mark.parametrize("name", sorted(CASES))
def test_raw_renders_png(name: str, tmp_path: Path) -> None:
    fig = CASES[name][1]()(tmp_path / "raw.png")
    _check_png(tmp_path / "raw.png", fig)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_lazy_input_is_computed_once(name: str) -> None:
    """A plot reads each dask input in one compute, not one per head/layer/panel."""
    calls = []

    def counting_get(dsk: Any, keys: Any, **kw: Any) -> Any:
        calls.append(1)
        return dask.get(dsk, keys, **kw)

    with dask.config.set(scheduler=counting_get):
        CASES[name][0]("dask")(None)
    expected = 2 if name == "attention_heads_comparison" else 1
    assert len(calls) == expected


@pytest.mark.parametrize("suffix,magic", [(".svg", b"<?xml"), (".pdf", b"%PDF"), ("", b"\x89PNG")])
def test_format_by_extension(suffix: str, magic: bytes, tmp_path: Path) -> None:
    path = tmp_path / f"sub/fig{suffix}"
    loss_curve(np.arange(5.0), path=path)
    assert path.read_bytes().startswith(magic)


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\.gifx"):
        loss_curve(np.arange(5.0), path=tmp_path / "fig.gifx")


def test_dpi_sets_pixel_size(tmp_path: Path) -> None:
    fig = loss_curve(np.arange(5.0), path=tmp_path / "a.png", dpi=50)
    _check_png(tmp_path / "a.png", fig, dpi=50)


def test_no_figures_left_open_and_memory_flat(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    plt.close("all")
    da = phase1_da()
    proc = psutil.Process()
    refs = []

    def call(i: int) -> None:
        path = tmp_path / "m.png" if i % 10 == 0 else None  # both paths; saving is the slow one
        fig = metric_heatmap(da, jumps={"fc": [10]}, path=path, dpi=40)
        refs.append(weakref.ref(fig))

    for i in range(0, 50, 10):  # warm caches (fonts, colormaps, the PNG writer)
        call(i)
    gc.collect()
    base = proc.memory_info().rss
    for i in range(100):
        call(i)
    gc.collect()
    grown = proc.memory_info().rss - base
    assert plt.get_fignums() == []
    assert all(r() is None for r in refs), "a figure is still referenced after being saved"
    assert grown < 30_000_000, f"RSS grew by {grown} bytes over 100 figures"


def test_import_needs_neither_pyplot_nor_torch() -> None:
    code = (
        "import sys, numpy as np; import ndt_store.plot as p; "
        "p.filter_grid(np.ones((2, 1, 3, 3))); p.attention_pattern(np.ones((1, 1, 2, 2)));"
        "print('matplotlib.pyplot' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------- attention


def test_attention_pattern_labels_and_values() -> None:
    arr = _attn_np()
    fig = attention_pattern(attn_da(arr=arr), head=11)
    ax = fig.axes[0]
    assert "head 11" in ax.get_title() and "step = 100" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == TOKENS
    assert [t.get_text() for t in ax.get_yticklabels()] == TOKENS
    np.testing.assert_allclose(ax.images[0].get_array(), arr[:, 1].mean(axis=0))


def test_attention_pattern_errors() -> None:
    with pytest.raises(InputError, match="available heads"):
        attention_pattern(attn_da(), head=0)  # labels are 10..12
    with pytest.raises(InputError, match="tokens"):
        attention_pattern(_attn_np(), tokens=["a"])
    with pytest.raises(InputError, match="4 dimensions"):
        attention_pattern(np.ones((3, 3)))
    with pytest.raises(InputError, match="unexpected"):
        attention_pattern(attn_da().expand_dims(LAYER))


def test_heads_comparison_shares_colour_scale() -> None:
    before, after = _attn_np(), _attn_np() * 3
    fig = attention_heads_comparison(attn_da(arr=before, step=7), attn_da(arr=after, step=9))
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 6
    lo = min(before.mean(0).min(), after.mean(0).min())
    hi = max(before.mean(0).max(), after.mean(0).max())
    for im in images:
        np.testing.assert_allclose(im.get_clim(), (lo, hi))
    texts = _texts(fig)
    assert {"head 10, before", "head 12, after"} <= set(texts)
    assert any("step = 7" in t for t in texts) and any("step = 9" in t for t in texts)
    np.testing.assert_allclose(fig.axes[5].images[0].get_array(), after[:, 2].mean(0))


def test_entropy_evolution_lines_and_jumps() -> None:
    steps = [0, 5, 10, 15]
    da = xr.DataArray(RNG.random((4, 2)), dims=(STEP, HEAD), coords={STEP: steps, HEAD: [3, 4]})
    fig = entropy_evolution(da, jump_steps=[5, 10])
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["head 3", "head 4", "jump"]  # one legend entry for all jumps
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), steps)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), da.values[:, 1])
    assert [line.get_xdata()[0] for line in ax.lines[2:]] == [5, 10]


# ----------------------------------------------------------------------------- weights


def test_filter_grid_rgb_mean_and_all() -> None:
    w = RNG.normal(size=(4, 3, 5, 5))
    rgb = filter_grid(w)
    img = rgb.axes[0].images[0].get_array()
    assert img.shape == (5, 5, 3)
    f0 = np.moveaxis(w[0], 0, -1)
    np.testing.assert_allclose(img, (f0 - f0.min()) / (f0.max() - f0.min()))

    w5 = RNG.normal(size=(4, 5, 3, 3))
    fig = filter_grid(w5)
    assert "mean over 5 input channels" in fig.get_suptitle()
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), w5[0].mean(0))
    assert not np.allclose(fig.axes[0].images[0].get_array(), w5[0, 0])

    rows = filter_grid(w5, num_filters=2, channels="all")
    panels = [ax for ax in rows.axes if ax.images]
    assert len(panels) == 10
    np.testing.assert_allclose(panels[6].images[0].get_array(), w5[1, 1])
    with pytest.raises(InputError, match="rgb"):
        filter_grid(w5, channels="rgb")


def test_filter_grid_titles_from_coords() -> None:
    da = xr.DataArray(
        np.ones((3, 1, 2, 2)), dims=("unit", "c", "y", "x"), coords={"unit": [7, 8, 9]}
    )
    titles = [ax.get_title() for ax in filter_grid(da).axes if ax.images]
    assert titles == ["unit 7", "unit 8", "unit 9"]


def test_weight_change_bars_values_and_dict_of_dicts() -> None:
    changes = {"a.w": 0.5, "a.b": 0.25}
    ax = weight_change_bars(changes).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a.w", "a.b"]
    assert [p.get_height() for p in ax.patches] == [0.5, 0.25]
    nested = {
        "a.w": {"l2_norm": 2.0, "relative_change": 0.1},
        "a.b": {"l2_norm": 1.0, "relative_change": 0.3},
    }
    fig = weight_change_bars(nested)
    assert [ax.get_ylabel() for ax in fig.axes] == ["l2_norm", "relative_change"]
    assert [p.get_height() for p in fig.axes[1].patches] == [0.1, 0.3]
    grouped = xr.DataArray(
        np.array([[1.0, 2.0], [3.0, 4.0]]),
        dims=(PARAMETER, STEP),
        coords={PARAMETER: ["x", "y"], STEP: [100, 2000]},
    )
    assert {"step 100", "step 2000"} <= set(_texts(weight_change_bars(grouped)))


# ----------------------------------------------------------------------------- activations


def test_activation_heatmap_is_features_by_samples() -> None:
    act = RNG.random((6, 4))
    da = xr.DataArray(act, dims=(SAMPLE, FEATURE), coords={LABEL: (SAMPLE, [3, 1, 4, 1, 5, 9])})
    ax = activation_heatmap(da).axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), act.T)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["3", "1", "4", "1", "5", "9"]
    with pytest.raises(InputError, match="labels"):
        activation_heatmap(act, labels=["a"])


def test_class_selectivity_sorting() -> None:
    sel = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.5], [0.6, 0.1]])
    da = xr.DataArray(sel, dims=(FEATURE, CLASS), coords={FEATURE: list("abcd"), CLASS: ["x", "y"]})
    ax = class_selectivity_heatmap(da, sort_features=True).axes[0]
    # preferred class x: b (0.8), d (0.6); class y: a (0.9), c (0.5)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "d", "a", "c"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y"]
    np.testing.assert_allclose(ax.images[0].get_array(), sel[[1, 3, 0, 2]])


# ----------------------------------------------------------------------------- Phase 1


def test_metric_heatmap_labels_jumps_and_critical() -> None:
    da = phase1_da()
    jumps = pd.DataFrame({LAYER: ["fc", "network.0"], INDEX: [2, 9]})
    critical = xr.zeros_like(da, dtype=bool)
    critical[3:5, 1] = True
    critical[7, 1] = True
    fig = metric_heatmap(da, jumps=jumps, critical=critical)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["network.0", "network.2", "fc"]
    assert ax.get_xlabel() == "training step" and STABLE_RANK in ax.get_title()
    np.testing.assert_allclose(ax.collections[-1].get_offsets(), [[10, 2], [45, 0]])
    boxes = [c for c in ax.collections if c.get_hatch()]
    assert len(boxes) == 1
    np.testing.assert_allclose(ax.collections[0].get_array().reshape(3, -1), da.values.T)
    assert "jump (2)" in _texts(fig) and "critical period" in _texts(fig)


def test_metric_heatmap_jump_table_forms() -> None:
    da = phase1_da()
    by_step = pd.DataFrame({LAYER: ["fc"], "train_step": [35], EXPERIMENT: ["e"]})
    ax = metric_heatmap(da.assign_coords({EXPERIMENT: "e"}), jumps=by_step).axes[0]
    np.testing.assert_allclose(ax.collections[-1].get_offsets(), [[35, 2]])
    other = metric_heatmap(da.assign_coords({EXPERIMENT: "f"}), jumps=by_step)
    assert "jump (0)" in _texts(other)
    with pytest.raises(InputError, match="record index"):
        metric_heatmap(da, jumps=pd.DataFrame({LAYER: ["fc"], STEP: [3]}))
    with pytest.raises(InputError, match="not in the heatmap"):
        metric_heatmap(da, jumps={"nope": [5]})


def test_metric_heatmap_selects_experiment_and_drops_absent_layers() -> None:
    ds = overview_ds()
    with pytest.raises(InputError, match="pass experiment"):
        metric_heatmap(ds)
    ax = metric_heatmap(ds, experiment="mlp_a_qmnist").axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["l0", "l1"]
    assert "experiment = mlp_a_qmnist" in ax.get_title()


def test_loss_curve_moments() -> None:
    moments = [
        SimpleNamespace(step=10, moment_type="pre_jump"),
        SimpleNamespace(step=15, moment_type="post_jump"),
        {STEP: 30, "moment_type": "pre_jump"},
    ]
    loss = xr.DataArray(
        np.exp(-np.arange(10.0)), dims=STEP, coords={STEP: np.arange(0, 50, 5)}, name=LOSS
    )
    ax = loss_curve(loss, moments=moments, logy=True).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [LOSS, "pre_jump", "post_jump"]
    assert [line.get_xdata()[0] for line in ax.lines[1:]] == [10, 15, 30]
    assert ax.lines[1].get_color() == ax.lines[3].get_color() != ax.lines[2].get_color()
    assert ax.get_yscale() == "log"


def test_experiment_overview_groups_by_architecture() -> None:
    fig = experiment_overview(overview_ds())
    titled = [ax for ax in fig.axes if ax.get_title()]
    # rows sorted by arch: cnn_b first, then both mlp_a experiments
    assert [ax.get_title() for ax in titled] == ["cnn_b_mnist", "mlp_a_mnist", "mlp_a_qmnist"]
    assert titled[0].get_ylabel().startswith("cnn_b") and titled[1].get_ylabel().startswith("mlp_a")
    assert [len(ax.lines) for ax in titled] == [3, 3, 2]  # absent layer not drawn


# ----------------------------------------------------------------------------- real data


def _phase1_dataset(names: list[str]) -> xr.Dataset:
    """Plain reading of the shared Phase 1 JSON into (experiment, step, layer)."""
    arrays, archs = [], []
    for name in names:
        rec = json.loads((DATA / "phase1" / "phase1_full" / f"{name}.json").read_text())
        ms = rec["measurements"]
        layers = list(ms[0]["layer_metrics"])
        vals = [[m["layer_metrics"][ly][STABLE_RANK] for ly in layers] for m in ms]
        arrays.append(
            xr.DataArray(
                vals, dims=(STEP, LAYER), coords={STEP: [m["step"] for m in ms], LAYER: layers}
            )
        )
        archs.append(rec["arch_name"])
    da = xr.concat(arrays, dim=EXPERIMENT, join="outer").assign_coords(
        {EXPERIMENT: names, ARCH_NAME: (EXPERIMENT, archs)}
    )
    return xr.Dataset({STABLE_RANK: da})


@pytest.mark.skipif(
    not (DATA / "phase1").exists(), reason=f"shared Phase 1 data not found at {DATA}"
)
def test_real_phase1_heatmap_with_published_jumps(tmp_path: Path) -> None:
    names = ["cnn_deep_mnist", "mlp_narrow_mnist", "transformer_deep_mnist"]
    ds = _phase1_dataset(names)
    table = pd.read_csv(DATA / "phase1" / "all_jumps_detailed.csv").rename(columns={"step": INDEX})
    fig = metric_heatmap(ds, experiment="mlp_narrow_mnist", jumps=table, path=tmp_path / "m.png")
    _check_png(tmp_path / "m.png", fig)
    ax = fig.axes[0]
    expected = table[table[EXPERIMENT] == "mlp_narrow_mnist"]
    assert len(ax.collections[-1].get_offsets()) == len(expected)
    assert [t.get_text() for t in ax.get_yticklabels()] == sorted(set(expected[LAYER]))
    fig = experiment_overview(ds, path=tmp_path / "o.png")
    _check_png(tmp_path / "o.png", fig)


def test_metric_heatmap_flags_over_index_with_nan_and_experiment() -> None:
    da = phase1_da().expand_dims({EXPERIMENT: ["e1", "e2"]}).copy()
    # jumps over (experiment, layer, index) with len(step) - 1 indices, as detect_jumps gives
    is_jump = xr.DataArray(
        np.zeros((2, 3, 9), dtype=bool),
        dims=(EXPERIMENT, LAYER, INDEX),
        coords={EXPERIMENT: ["e1", "e2"], LAYER: ["network.0", "network.2", "fc"]},
    )
    is_jump[1, 2, 4] = True  # e2, fc, index 4 -> step 20
    is_jump[0, 0, 1] = True  # e1 only: must not show for e2
    # critical as 1.0 / 0.0 / NaN (no record), with an extra all-NaN layer absent here
    crit = xr.DataArray(
        np.full((4, 10), np.nan), dims=(LAYER, INDEX),
        coords={LAYER: ["network.0", "network.2", "fc", "other"]},
    )  # fmt: skip
    crit[0, :] = 0.0
    crit[0, 3] = 1.0
    ax = metric_heatmap(da, experiment="e2", jumps=is_jump, critical=crit).axes[0]
    np.testing.assert_allclose(ax.collections[-1].get_offsets(), [[20, 2]])
    boxes = [c for c in ax.collections if c.get_hatch()]
    assert len(boxes) == 1  # NaN counted as not critical: only network.0 index 3
    crit[3, 0] = 1.0
    with pytest.raises(InputError, match="other"):
        metric_heatmap(da, experiment="e2", critical=crit)
