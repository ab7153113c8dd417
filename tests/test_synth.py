"""Synthetic stores: shapes, determinism, planted structure (checked with plain numpy), CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ndt_store
from ndt_store import _dims as D
from ndt_store.cli import main
from ndt_store.errors import InputError
from ndt_store.synth import phase1_layer_names, synth_nbytes, synth_store

SIZES = dict(experiments=3, steps=9, layers=2, heads=3, seq=6, samples=4, features=10, records=60)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ndt_store.Store:
    return synth_store(tmp_path_factory.mktemp("synth") / "s.zarr", **SIZES, seed=3)


def _np_entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(-1)


def test_layout_and_shapes(store: ndt_store.Store) -> None:
    names = store.experiments()
    assert len(names) == 3
    assert {store.metadata(n)[D.ARCH_NAME].split("_")[0] for n in names} == {
        "mlp",
        "cnn",
        "transformer",
    }
    name = names[0]
    attn = store.attention(name, "layers.1")
    assert attn.dims == (D.STEP, D.SAMPLE, D.HEAD, D.QUERY, D.KEY)
    assert attn.shape == (9, 4, 3, 6, 6)
    assert list(attn[D.STEP].values) == list(range(0, 90, 10))
    assert attn.chunks[0] == (1,) * 9  # one step per chunk
    p = attn.values
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    assert (p >= 0).all()
    assert store.activations(name, "layers.0").shape == (9, 4, 10)
    assert store.weights(name)["layers.0.weight"].shape == (9, 10, 10)
    for arr in (attn, store.activations(name, "layers.0"), store.weights(name)["layers.0.weight"]):
        assert arr.dtype == np.float32
    # Phase 1 layer sets differ between architectures; the catalog takes their union
    ds = store.measurements()
    assert ds.sizes[D.EXPERIMENT] == 3 and ds.sizes[D.STEP] == 60
    per_exp = [store.phase1(n).sizes[D.LAYER] for n in names]
    assert ds.sizes[D.LAYER] > max(per_exp)


def test_planted_attention_jump(store: ndt_store.Store) -> None:
    for name in store.experiments():
        jump = store.metadata(name)["synth"]["snapshot_jump_step"]
        p = store.attention(name, "layers.0").values.astype(np.float64)
        mean_ent = _np_entropy(p).mean(axis=(1, 2, 3))
        steps = store.snapshot_steps(name, D.ATTENTION)
        biggest = int(np.argmax(np.abs(np.diff(mean_ent)))) + 1
        assert steps[biggest] == jump
        assert mean_ent[biggest] < mean_ent[biggest - 1]  # sharper after the jump


def test_planted_phase1_jumps(store: ndt_store.Store) -> None:
    for name in store.experiments():
        sr = store.phase1(name)[D.STABLE_RANK]
        for layer, index, size in store.metadata(name)["synth"]["phase1_jumps"]:
            x = sr.sel({D.LAYER: layer}).values
            v = np.diff(x)
            assert int(np.argmax(np.abs(v))) == index - 1
            assert np.sign(v[index - 1]) == np.sign(size)


def test_activation_spectrum_decays_faster_over_training(store: ndt_store.Store) -> None:
    act = store.activations(store.experiments()[0], "layers.0").values
    s_first = np.linalg.svd(act[0], compute_uv=False)
    s_last = np.linalg.svd(act[-1], compute_uv=False)
    assert np.all(np.diff(s_first) <= 1e-4)
    assert s_last[-1] / s_last[0] < s_first[-1] / s_first[0]


def test_weights_jump_at_planted_step(store: ndt_store.Store) -> None:
    name = store.experiments()[1]
    w = store.weights(name)["layers.1.weight"].values
    change = np.linalg.norm(np.diff(w, axis=0).reshape(w.shape[0] - 1, -1), axis=1)
    steps = store.snapshot_steps(name, D.WEIGHTS)
    assert steps[int(np.argmax(change)) + 1] == store.metadata(name)["synth"]["snapshot_jump_step"]


def test_deterministic_and_seeded(tmp_path: Path) -> None:
    small = dict(experiments=1, steps=3, layers=1, heads=2, seq=4, samples=2, records=20)
    a = synth_store(tmp_path / "a.zarr", **small, seed=1, kinds=("attention",))
    b = synth_store(tmp_path / "b.zarr", **small, seed=1, kinds=("attention",))
    c = synth_store(tmp_path / "c.zarr", **small, seed=2, kinds=("attention",))
    name = a.experiments()[0]
    xa = a.attention(name, "layers.0").values
    np.testing.assert_array_equal(xa, b.attention(name, "layers.0").values)
    assert not np.array_equal(xa, c.attention(name, "layers.0").values)
    assert a.snapshot_steps(name, D.WEIGHTS) == []


def test_causal_attention_is_lower_triangular(tmp_path: Path) -> None:
    s = synth_store(
        tmp_path / "c.zarr", experiments=1, steps=2, layers=1, heads=2, seq=5, samples=2,
        records=10, kinds=("attention",), causal=True,
    )  # fmt: skip
    p = s.attention(s.experiments()[0], "layers.0").values
    assert np.all(p[..., np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] == 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)


def test_nbytes_matches_stored_arrays(store: ndt_store.Store) -> None:
    name = store.experiments()[0]
    stored = sum(a.nbytes for a in store.attention(name).values())
    stored += sum(a.nbytes for a in store.activations(name).values())
    stored += sum(a.nbytes for a in store.weights(name).values())
    assert synth_nbytes(**SIZES) == 3 * stored


def test_phase1_only_and_names() -> None:
    assert phase1_layer_names("mlp", 3) == ["network.0", "network.2", "network.4"]
    assert phase1_layer_names("cnn", 3) == ["conv_layers.0", "conv_layers.1", "fc_layers.0"]
    assert len(set(phase1_layer_names("transformer", 7))) == 7


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="kinds"):
        synth_store(tmp_path / "x.zarr", kinds=("bogus",))
    with pytest.raises(InputError, match="heads"):
        synth_store(tmp_path / "x.zarr", heads=0)


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cli.zarr"
    argv = ["synth", "--store", str(path), "--experiments", "2", "--steps", "2", "--layers", "1"]
    argv += ["--records", "15", "--kinds", "phase1,attention", "--no-progress"]
    assert main(argv) == 0
    assert "wrote 2 experiments" in capsys.readouterr().out
    s = ndt_store.open_store(path, mode="r")
    assert len(s.experiments()) == 2
    assert s.snapshot_steps(s.experiments()[0], D.ATTENTION) == [0, 10]
    assert main(["synth", "--store", str(path), "--kinds", "nope", "--no-progress"]) == 1


def test_scale_doc_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    page = Path(__file__).resolve().parents[1] / "docs" / "scale.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
    assert namespace["total"] == 10
    assert len(namespace["store"].experiments()) == 2
