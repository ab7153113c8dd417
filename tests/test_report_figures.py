"""Every figure the report writes reads at realistic sizes (GPT-2-like).

50 parameters, 20 snapshots, 12 heads, 12 layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import xarray as xr

import ndt_store
from ndt_store.plot import entropy_evolution, loss_curve, metric_heatmap, weight_change_heatmap
from ndt_store.plot._common import readability_problems, series_colors, shorten_labels
from ndt_store.report import write_report
from ndt_store.testing import write_phase1_json

N_SNAPSHOTS = 20
PARAMETERS = [
    f"transformer.h.{block}.{part}"
    for block in range(6)
    for part in (
        "ln_1.weight",
        "ln_1.bias",
        "attn.c_attn.weight",
        "attn.c_attn.bias",
        "attn.c_proj.weight",
        "attn.c_proj.bias",
        "mlp.c_fc.weight",
        "mlp.c_fc.bias",
    )
] + ["transformer.wte.weight", "transformer.wpe.weight"]


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> ndt_store.Store:
    tmp = tmp_path_factory.mktemp("big")
    store = ndt_store.open_store(tmp / "s.zarr")
    layers = [f"transformer.h.{i}.mlp.c_fc" for i in range(12)]
    path = write_phase1_json(
        tmp / "gpt.json",
        n_records=200,
        layers=layers,
        jumps=[(layers[3], 60, 4.0), (layers[7], 120, -3.0)],
    )
    ndt_store.ingest_phase1(store, path)
    rng = np.random.default_rng(0)
    weights = {name: rng.normal(size=(8, 8)) for name in PARAMETERS}
    for k in range(N_SNAPSHOTS):
        step = 50 * k
        weights = {n: w + 0.1 * rng.normal(size=w.shape) for n, w in weights.items()}
        logits = rng.normal(size=(4, 12, 6, 6))
        store.write_snapshot(
            "gpt",
            step,
            weights=weights,
            attention={
                "transformer.h.0.attn": np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
            },
        )
    return store


def capture(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every figure the plot modules finish."""
    import ndt_store.plot._common as common

    figures: list[Any] = []
    real = common.finish

    def keep(fig: Any, path: Any, **kw: Any) -> Any:
        figures.append(fig)
        return real(fig, path, **kw)

    for module in ("phase1", "weights", "attention", "activations", "overview"):
        monkeypatch.setattr(f"ndt_store.plot.{module}.finish", keep)
    return figures


def test_report_figures_are_readable_at_real_size(big_store, tmp_path, monkeypatch):
    assert len(PARAMETERS) == 50
    figures = capture(monkeypatch)
    written = write_report(big_store, "gpt", tmp_path / "r", num_jumps=2)
    names = sorted(n for n in written if n.endswith(".png"))
    assert "gpt_weight_change.png" in names and "gpt_entropy_evolution.png" in names
    assert len(figures) == len(names)
    for name, fig in zip(names, figures, strict=False):
        assert readability_problems(fig) == [], name
    # the weight-change heatmap: one row per parameter, one column per interval
    heat = next(f for f in figures if "per parameter" in f.axes[0].get_title())
    assert heat.axes[0].get_xlim() == (0.0, N_SNAPSHOTS - 1)
    assert heat.axes[0].get_ylim() == (50.0, 0.0)


def test_readability_check_catches_the_old_problems():
    """A legend over the data, labels outside the figure, a colour used twice: all found."""
    from ndt_store.plot._common import new_figure

    fig, axes = new_figure((4, 3))
    ax = axes[0, 0]
    for k in range(12):  # the default 10-colour cycle repeats
        ax.plot([0, 1], [k, k + 1], label=f"interval {k}")
    ax.legend(loc="center")
    problems = readability_problems(fig)
    assert any("share a colour" in p for p in problems)
    assert any("legend covers" in p for p in problems)
    fig, axes = new_figure((2, 2))
    axes[0, 0].set_xticks(range(30), ["a_very_long_parameter_name_indeed"] * 30, rotation=90)
    assert readability_problems(fig)


@pytest.mark.parametrize("n", [12, 25, 60])
def test_series_colours_never_repeat(n):
    for ordered in (True, False):
        colours = series_colors(n, ordered=ordered)
        assert len({tuple(np.round(c, 4)) for c in colours}) == n


def test_long_names_shortened_with_a_key():
    short, key = shorten_labels(PARAMETERS)
    assert len(set(short)) == len(short) and max(map(len, short)) <= 28
    assert "transformer." in key


@pytest.mark.parametrize("n_heads", [4, 12, 25])
def test_entropy_lines_distinct_and_legend_outside(n_heads):
    e = xr.DataArray(
        np.random.default_rng(0).random((20, n_heads)),
        dims=("step", "head"),
        coords={"step": np.arange(20) * 50},
    )
    fig = entropy_evolution(e, jump_steps=[100, 500])
    assert readability_problems(fig) == []


def test_heatmap_and_loss_readable_with_many_layers_and_moments():
    rng = np.random.default_rng(1)
    layers = [f"model.encoder.layers.{i}.self_attention.output.dense" for i in range(40)]
    da = xr.DataArray(
        rng.random((300, 40)),
        dims=("step", "layer"),
        coords={"step": np.arange(300) * 5, "layer": layers},
        name="participation_ratio",
    )
    import pandas as pd

    jumps = pd.DataFrame(
        {
            "layer": layers[:10],
            "train_step": np.arange(10) * 100.0,
            "significant": [True, False] * 5,
        }
    )
    assert readability_problems(metric_heatmap(da, "participation_ratio", jumps=jumps)) == []
    loss = xr.DataArray(rng.random(300), dims="step", coords={"step": np.arange(300) * 5})
    moments = [
        {"step": s, "moment_type": t}
        for s in (100, 200)
        for t in ("before_jump", "during_jump", "after_jump")
    ]
    assert readability_problems(loss_curve(loss, moments=moments)) == []
    wide = xr.DataArray(
        rng.random((120, 25)),
        dims=("parameter", "interval"),
        coords={"parameter": [f"{n}.{i}" for i, n in enumerate(PARAMETERS * 3)][:120]},
    )
    assert readability_problems(weight_change_heatmap(wide)) == []


def test_significant_and_not_marked_apart():
    import pandas as pd

    da = xr.DataArray(
        np.zeros((10, 2)),
        dims=("step", "layer"),
        coords={"step": np.arange(10), "layer": ["a", "b"]},
        name="m",
    )
    jumps = pd.DataFrame(
        {"layer": ["a", "b"], "train_step": [2.0, 5.0], "significant": [True, False]}
    )
    fig = metric_heatmap(da, "m", jumps=jumps)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["not significant (1)", "significant jump (1)"]


@pytest.mark.parametrize("n_par", [1, 3, 50, 150])
@pytest.mark.parametrize("n_int", [1, 25])
def test_weight_change_heatmap_readable_at_any_size(n_par, n_int):
    rng = np.random.default_rng(n_par)
    names = [f"{n}.{i}" for i, n in enumerate(PARAMETERS * 3)][:n_par]
    da = xr.DataArray(
        np.exp(2 * rng.normal(size=(n_par, n_int))),
        dims=("parameter", "interval"),
        coords={"parameter": names, "interval": [f"{50 * i}→{50 * i + 50}" for i in range(n_int)]},
        name="relative weight change",
    )
    assert readability_problems(weight_change_heatmap(da)) == []
