"""`ingest checkpoints` on the folder layouts researchers have (Trainer output, steps, shards)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ndt_store
from ndt_store.cli import main
from ndt_store.errors import InputError
from ndt_store.ingest.checkpoint_layout import folder_step
from ndt_store.ingest.checkpoints import ingest_checkpoints, scan_checkpoints

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from safetensors.numpy import load_file  # noqa: E402


def _gpt2(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(cfg)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.ids = torch.randint(0, 40, (32, 8), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


@pytest.fixture(scope="module")
def trainer_output(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A real Trainer output: checkpoint-2/, checkpoint-4/ and the final model at the root."""
    out = tmp_path_factory.mktemp("hf") / "out"
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=4,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        max_grad_norm=0.1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=_gpt2(), args=args, train_dataset=_Tokens())
    trainer.train()
    trainer.save_model()  # config.json + model.safetensors at the root, no step
    return out, trainer.state.log_history


def test_folder_step_names():
    assert folder_step("checkpoint-500") == 500
    assert folder_step("step_1000") == 1000
    assert folder_step("step143000") == 143000
    assert folder_step("global_step20") == 20
    assert folder_step("step0") == 0
    assert folder_step("final") is None


def test_trainer_output_folder(tmp_path, trainer_output):
    out, log_history = trainer_output
    assert (out / "checkpoint-2" / "optimizer.pt").is_file()  # never opened (not weights)
    store = ndt_store.open_store(tmp_path / "s.zarr")
    assert ingest_checkpoints(store, out, experiment="hf") == {2: "created", 4: "created"}
    assert store.snapshot_steps("hf") == [2, 4]  # from folder names; root final model skipped
    for step in (2, 4):
        saved = load_file(out / f"checkpoint-{step}" / "model.safetensors")
        got = store.weights("hf", steps=[step])
        assert set(got) == set(saved)
        for name, arr in saved.items():
            np.testing.assert_array_equal(got[name].values[0], arr)
    # loss history from trainer_state.json as Phase 1 records
    ds = store.phase1("hf")
    logged = [h for h in log_history if "loss" in h]
    assert list(ds["step"].values) == [h["step"] for h in logged] == [1, 2, 3, 4]
    np.testing.assert_allclose(ds["loss"].values, [h["loss"] for h in logged])
    np.testing.assert_allclose(ds["grad_norm"].values, [h["grad_norm"] for h in logged])
    # config.json as run metadata
    meta = store.metadata("hf")
    config = json.loads((out / "config.json").read_text())
    assert meta["model_config"] == config
    assert meta["arch_name"] == "GPT2LMHeadModel"
    # a rerun is a no-op
    assert ingest_checkpoints(store, out, experiment="hf") == {2: "unchanged", 4: "unchanged"}
    assert store.phase1("hf").sizes["step"] == 4


def test_dry_run_lists_and_writes_nothing(tmp_path, trainer_output, capsys):
    out, _ = trainer_output
    path = tmp_path / "s.zarr"
    assert main(["ingest", "checkpoints", str(out), "--store", str(path), "-e", "hf",
                 "--dry-run"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert not path.exists()
    plan = scan_checkpoints(out)
    lines = text.splitlines()
    for ck in plan.checkpoints:
        assert any(
            line.split()[:3] == [str(ck.step), str(len(ck.tensors)), f"{ck.nbytes:,}"]
            for line in lines
        )
    assert ck.nbytes == sum(a.nbytes for a in load_file(ck.files[0]).values())
    assert "loss history: 4 records" in text
    assert "skipped" in text and "no training step" in text  # the root's final model
    # and the real import prints what it stored
    assert main(["ingest", "checkpoints", str(out), "--store", str(path), "-e", "hf"]) == 0
    assert "created   hf step 4" in capsys.readouterr().out


def test_sharded_safetensors_in_step_folders(tmp_path):
    root = tmp_path / "suite"
    models = {}
    for step in (100, 2000):
        model = _gpt2(seed=step)
        folder = root / ("step_100" if step == 100 else "step2000")
        model.save_pretrained(folder, max_shard_size="20KB")
        models[step] = model
    assert (root / "step_100" / "model.safetensors.index.json").is_file()
    assert len(list((root / "step_100").glob("model-*.safetensors"))) > 1
    store = ndt_store.open_store(tmp_path / "s.zarr")
    assert ingest_checkpoints(store, root, experiment="suite") == {100: "created", 2000: "created"}
    for step, model in models.items():
        got = store.weights("suite", steps=[step])
        state = model.state_dict()
        assert "transformer.h.1.attn.c_attn.weight" in got
        for name in got:
            np.testing.assert_array_equal(got[name].values[0], state[name].numpy())
    assert store.metadata("suite")["arch_name"] == "GPT2LMHeadModel"


def test_pytorch_model_bin_and_loose_step_files(tmp_path):
    root = tmp_path / "runs"
    model = _gpt2()
    (root / "checkpoint-10").mkdir(parents=True)
    torch.save(model.state_dict(), root / "checkpoint-10" / "pytorch_model.bin")
    model.config.to_json_file(root / "checkpoint-10" / "config.json")
    nested = root / "extra" / "deeper"
    nested.mkdir(parents=True)
    torch.save({"fc.weight": torch.ones(2, 2)}, nested / "step_20.pt")
    store = ndt_store.open_store(tmp_path / "s.zarr")
    assert sorted(ingest_checkpoints(store, root, experiment="r")) == [10, 20]
    w = store.weights("r", steps=[10])["transformer.wte.weight"].values[0]
    np.testing.assert_array_equal(w, model.state_dict()["transformer.wte.weight"].numpy())


def test_a_model_folder_without_a_step_alone_is_refused(tmp_path):
    _gpt2().save_pretrained(tmp_path / "final")
    store = ndt_store.open_store(tmp_path / "s.zarr")
    with pytest.raises(InputError, match=r"final: no training step"):
        ingest_checkpoints(store, tmp_path / "final", experiment="r")
    assert store.experiments() == []


def test_missing_shard_is_refused(tmp_path):
    folder = tmp_path / "step_5"
    _gpt2().save_pretrained(folder, max_shard_size="20KB")
    next(folder.glob("model-*.safetensors")).unlink()
    with pytest.raises(InputError, match=r"model\.safetensors\.index\.json: shard .* is missing"):
        scan_checkpoints(tmp_path)


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("where", ["checkpoint-7/pytorch_model.bin", "step_7/weights.pt"])
def test_unsafe_pickles_in_folders_stay_refused(tmp_path, where, monkeypatch):
    from ndt_store.errors import UnsafeCheckpointError
    from ndt_store.testing import tree_snapshot

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    root, marker = tmp_path / "runs", tmp_path / "PWNED"
    (root / "checkpoint-3").mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, root / "checkpoint-3" / "pytorch_model.bin")
    torch.save({"w": torch.ones(2)}, root / "checkpoint-3" / "training_args.bin")
    torch.save({"x": _Payload(marker)}, root / "checkpoint-3" / "optimizer.pt")  # never opened
    (root / where).parent.mkdir(parents=True)
    torch.save({"w": torch.ones(2), "p": _Payload(marker)}, root / where)
    store = ndt_store.open_store(tmp_path / "s.zarr")
    before = tree_snapshot(store.location)
    with pytest.raises(UnsafeCheckpointError, match=where.split("/")[-1]):
        ingest_checkpoints(store, root, experiment="r")
    with pytest.raises(UnsafeCheckpointError):
        scan_checkpoints(root)  # the dry run refuses too
    assert not marker.exists()
    assert tree_snapshot(store.location) == before
    (root / where).unlink()
    assert sorted(ingest_checkpoints(store, root, experiment="r")) == [3]
    assert not marker.exists()
