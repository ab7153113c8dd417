"""Checkpoint ingest: real CUDA-saved checkpoints, safetensors, state_dicts, refused pickles."""

from __future__ import annotations

import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import ndt_store
from ndt_store.errors import (
    ExperimentExistsError,
    InputError,
    MissingDependencyError,
    NdtStoreError,
    UnsafeCheckpointError,
)
from ndt_store.ingest.checkpoints import (
    ingest_checkpoints,
    ingest_state_dict,
    load_checkpoint,
    step_from_name,
)
from ndt_store.measures.weights import consecutive_weight_change

torch = pytest.importorskip("torch")
EXP = "mlp_narrow_mnist"


def torch_state(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in obj["model_state_dict"].items()}, obj


@pytest.fixture
def store(tmp_path: Path) -> ndt_store.Store:
    return ndt_store.open_store(tmp_path / "s.zarr")


def test_real_checkpoints_weight_changes(store, shared_checkpoints):
    files = sorted(shared_checkpoints.glob("*.pt"))
    assert ingest_checkpoints(store, shared_checkpoints, experiment=EXP) == {
        100: "created",
        1000: "created",
        2000: "created",
    }
    assert store.snapshot_steps(EXP, "weights") == [100, 1000, 2000]
    states = [torch_state(f) for f in files]
    snaps = store._entry(EXP)["snapshots"]
    assert [s["loss"] for s in snaps] == [obj["loss"] for _, obj in states]
    weights = store.weights(EXP)
    assert set(weights) == set(states[0][0])
    for name, w in weights.items():
        np.testing.assert_array_equal(w.values, np.stack([s[name] for s, _ in states]))
        ch = consecutive_weight_change(w).compute()
        for k in range(2):
            before, after = states[k][0][name], states[k + 1][0][name]
            d = (after - before).astype(np.float64)
            np.testing.assert_allclose(ch["l2_norm"].values[k], np.linalg.norm(d), rtol=1e-5)
            np.testing.assert_allclose(
                ch["relative_change"].values[k],
                np.linalg.norm(d) / np.linalg.norm(before),
                rtol=1e-5,
            )
            np.testing.assert_allclose(ch["max_change"].values[k], np.abs(d).max(), rtol=1e-6)
        assert ch["step"].values.tolist() == [1000, 2000]


def test_any_order_of_arrival(store, shared_checkpoints, tmp_path):
    files = sorted(shared_checkpoints.glob("*.pt"), reverse=True)
    for f in files:
        ingest_checkpoints(store, f, experiment=EXP)
    assert store.snapshot_steps(EXP) == [100, 1000, 2000]
    w = store.weights(EXP)["network.0.weight"]
    np.testing.assert_array_equal(
        w.sel(step=100).values, torch_state(files[-1])[0]["network.0.weight"]
    )
    # the same file again (e.g. rerunning an interrupted import) is a no-op ...
    assert ingest_checkpoints(store, files[1], experiment=EXP) == {1000: "unchanged"}
    # ... different weights at a stored step need overwrite
    other = {k: v + 1 for k, v in torch_state(files[1])[0].items()}
    with pytest.raises(ExperimentExistsError, match="1000"):
        ingest_state_dict(store, EXP, 1000, other)
    assert ingest_state_dict(store, EXP, 1000, other, overwrite=True) == "replaced"


def test_safetensors_and_state_dict(store, tmp_path):
    from safetensors.numpy import save_file

    a = {"fc.weight": np.arange(6.0, dtype=np.float32).reshape(2, 3)}
    save_file(a, str(tmp_path / "model-300.safetensors"))
    save_file(a, str(tmp_path / "x.safetensors"), metadata={"step": "400", "loss": "0.5"})
    assert ingest_checkpoints(store, [tmp_path / "x.safetensors"], experiment="r") == {
        400: "created"
    }
    assert ingest_checkpoints(store, tmp_path / "model-300.safetensors", experiment="r") == {
        300: "created"
    }
    ingest_state_dict(store, "r", 50, {"fc.weight": torch.zeros(2, 3, dtype=torch.bfloat16)})
    w = store.weights("r")["fc.weight"]
    assert w.step.values.tolist() == [50, 300, 400]
    np.testing.assert_array_equal(w.sel(step=300).values, a["fc.weight"])
    assert store._entry("r")["snapshots"][0]["loss"] == 0.5


def test_bare_state_dict_and_numpy_scalars(store, tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "checkpoint_step_00007.pt")
    torch.save(
        {"model_state_dict": {"w": torch.ones(3)}, "step": np.int64(9), "loss": np.float64(0.25)},
        tmp_path / "legacy.pt",
    )
    assert ingest_checkpoints(store, tmp_path, experiment="r") == {7: "created", 9: "created"}
    _, info = load_checkpoint(tmp_path / "legacy.pt")
    assert info == {"step": 9, "loss": 0.25}


class Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("force_unsafe_env", [False, True])
@pytest.mark.parametrize("fmt", ["zip", "raw_pickle"])
def test_malicious_pickle_refused_unrun(store, tmp_path, monkeypatch, force_unsafe_env, fmt):
    if force_unsafe_env:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "PWNED"
    path = tmp_path / "checkpoint_step_00010.pt"
    obj = {"model_state_dict": {"w": torch.ones(2)}, "extra": Payload(marker)}
    if fmt == "zip":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    shutil.copy(path, tmp_path / "copy.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"checkpoint_step_00010\.pt"):
        ingest_checkpoints(store, path, experiment="r")
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(tmp_path / "copy.pt")
    assert not marker.exists()
    assert "r" not in store.experiments()


def test_unsafe_file_in_directory_stops_before_writing(store, tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "checkpoint_step_00001.pt")
    torch.save({"x": Payload(tmp_path / "PWNED")}, tmp_path / "checkpoint_step_00002.pt")
    with pytest.raises(UnsafeCheckpointError):
        ingest_checkpoints(store, tmp_path, experiment="r")
    assert "r" not in store.experiments()
    assert not (tmp_path / "PWNED").exists()


def test_errors(store, tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "final.pt")
    with pytest.raises(InputError, match=r"final\.pt"):
        ingest_checkpoints(store, tmp_path / "final.pt", experiment="r")
    torch.save({"w": torch.ones(2), "step": 3}, tmp_path / "a_3.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "b_3.pt")
    with pytest.raises(InputError, match="step 3"):
        ingest_checkpoints(store, [tmp_path / "a_3.pt", tmp_path / "b_3.pt"], experiment="r")
    with pytest.raises(NdtStoreError, match="include_optimizer"):
        ingest_checkpoints(store, tmp_path / "a_3.pt", experiment="r", include_optimizer=True)
    with pytest.raises(InputError, match="no such"):
        ingest_checkpoints(store, tmp_path / "missing.pt", experiment="r")


def test_missing_torch_hint(store, tmp_path, monkeypatch):
    torch.save({"w": torch.ones(2)}, tmp_path / "step_1.pt")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'ndt-store\[torch\]'"):
        ingest_checkpoints(store, tmp_path / "step_1.pt", experiment="r")


def test_step_from_name():
    assert step_from_name("checkpoint_step_00100.pt") == 100
    assert step_from_name("step_20.pth") == 20
    assert step_from_name("ckpt-0042.safetensors") == 42
    assert step_from_name("final.pt") is None
