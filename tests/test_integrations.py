"""Training-framework callbacks: transformers.Trainer and PyTorch Lightning runs recorded."""

from __future__ import annotations

import math
import sys

import pytest

import ndt_store
from ndt_store.errors import MissingDependencyError

torch = pytest.importorskip("torch")


# --------------------------------------------------------------- lazy imports
@pytest.mark.parametrize(
    ("attr", "module", "framework", "extra"),
    [
        ("TrainerRecorder", "ndt_store.integrations.hf_trainer", "transformers", "hf"),
        ("LightningRecorder", "ndt_store.integrations.lightning", "lightning", "lightning"),
    ],
)
def test_missing_framework_gives_an_install_hint(monkeypatch, attr, module, framework, extra):
    import ndt_store.integrations as integrations

    monkeypatch.delitem(sys.modules, module, raising=False)
    for name in [framework, "pytorch_lightning"] if framework == "lightning" else [framework]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail
    if framework == "lightning":
        monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    with pytest.raises(MissingDependencyError, match=rf"pip install 'ndt-store\[{extra}\]'"):
        getattr(integrations, attr)


def test_importing_the_package_imports_no_framework():
    code = (
        "import sys, ndt_store, ndt_store.integrations;"
        "print(any(m in sys.modules for m in ('transformers', 'lightning', 'pytorch_lightning')))"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------- transformers
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")


def _gpt2(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2, attn_implementation="eager"
    )
    return transformers.GPT2LMHeadModel(cfg)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, length: int = 8) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 40, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_grad_norm=0.05,  # small, so clipping really happens
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    base.update(kw)
    return transformers.TrainingArguments(**base)


def _logged(trainer, key):
    return {h["step"]: h[key] for h in trainer.state.log_history if key in h}


def _records(store, name):
    ds = store.phase1(name)
    return {
        int(s): (float(lo), float(g))
        for s, lo, g in zip(
            ds["step"].values, ds["loss"].values, ds["grad_norm"].values, strict=True
        )
    }


def test_trainer_run_records_loss_and_pre_clipping_grad_norm(tmp_path):
    from ndt_store.integrations import TrainerRecorder

    store = ndt_store.open_store(tmp_path / "s.zarr")
    data = _Tokens()
    with TrainerRecorder(store, "gpt", probe=data.ids[:4], every=2, snapshot_steps=[4]) as cb:
        trainer = transformers.Trainer(
            model=_gpt2(), args=_args(tmp_path, max_steps=6), train_dataset=data, callbacks=[cb]
        )
        trainer.train()
    rec = _records(store, "gpt")
    assert sorted(rec) == [2, 4, 6]
    norms, losses = _logged(trainer, "grad_norm"), _logged(trainer, "loss")
    for step, (loss, norm) in rec.items():
        # the Trainer's own logged grad_norm is the clip_grad_norm_ return: pre-clipping
        assert norm == pytest.approx(norms[step], rel=1e-5)
        assert norm > 0.05 * 2  # clipping happened: a clipped norm would be <= 0.05
        assert loss == pytest.approx(losses[step], rel=1e-4)
    assert store.snapshot_steps("gpt") == [4]
    assert store.metadata("gpt")["capture"]["status"] == "complete"


def test_trainer_grad_norm_with_gradient_accumulation(tmp_path):
    from ndt_store.integrations import TrainerRecorder

    store = ndt_store.open_store(tmp_path / "s.zarr")
    data = _Tokens()
    args = _args(tmp_path, max_steps=4, gradient_accumulation_steps=2)
    with TrainerRecorder(store, "acc", probe=data.ids[:4], every=2) as cb:
        trainer = transformers.Trainer(model=_gpt2(), args=args, train_dataset=data, callbacks=[cb])
        trainer.train()
    rec = _records(store, "acc")
    norms, losses = _logged(trainer, "grad_norm"), _logged(trainer, "loss")
    assert sorted(rec) == [2, 4]
    for step, (loss, norm) in rec.items():
        assert norm == pytest.approx(norms[step], rel=1e-5)
        assert loss == pytest.approx(losses[step], rel=1e-4)


class _Boom(transformers.TrainerCallback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise RuntimeError("simulated crash")


def test_trainer_crash_closes_the_run_and_resume_continues_it(tmp_path):
    from ndt_store.integrations import TrainerRecorder

    path = tmp_path / "s.zarr"
    data = _Tokens()
    args = _args(tmp_path, max_steps=12, save_strategy="steps", save_steps=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        with TrainerRecorder(path, "run", probe=data.ids[:4], every=2) as cb:
            trainer = transformers.Trainer(
                model=_gpt2(), args=args, train_dataset=data, callbacks=[_Boom(10), cb]
            )
            trainer.train()
    store = ndt_store.open_store(path, mode="r")
    assert store.metadata("run")["capture"]["status"] == "interrupted (RuntimeError)"
    assert sorted(_records(store, "run")) == [2, 4, 6, 8]  # step 10 crashed before recording
    with ndt_store.open_store(path).writer("run"):  # the writer lock was released
        pass

    with TrainerRecorder(path, "run", probe=data.ids[:4], every=2) as cb:
        trainer = transformers.Trainer(model=_gpt2(), args=args, train_dataset=data, callbacks=[cb])
        trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-8"))
    store = ndt_store.open_store(path, mode="r")
    rec = _records(store, "run")
    assert sorted(rec) == [2, 4, 6, 8, 10, 12]
    norms = _logged(trainer, "grad_norm")
    for step in (10, 12):
        assert rec[step][1] == pytest.approx(norms[step], rel=1e-5)
    assert store.metadata("run")["capture"]["status"] == "complete"


def test_trainer_run_left_open_is_closed_when_the_next_run_begins(tmp_path):
    from ndt_store.integrations import TrainerRecorder

    data = _Tokens()
    cb = TrainerRecorder(tmp_path / "s.zarr", "run", probe=data.ids[:4], every=2)
    args = _args(tmp_path, max_steps=4)
    with pytest.raises(RuntimeError):
        transformers.Trainer(
            model=_gpt2(), args=args, train_dataset=data, callbacks=[_Boom(3), cb]
        ).train()
    assert cb.recorder is not None  # no exception event in the Trainer: still open
    transformers.Trainer(model=_gpt2(), args=args, train_dataset=data, callbacks=[cb]).train()
    assert cb.recorder is None
    assert sorted(_records(ndt_store.open_store(tmp_path / "s.zarr", mode="r"), "run")) == [2, 4]


# --------------------------------------------------------------- Lightning
L = pytest.importorskip("lightning.pytorch")


class _Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        )
        self.pre_clip: dict[int, float] = {}
        self.fail_at: int | None = None

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError("simulated crash")
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, **kw):
        # independent reference: the norm just before Lightning clips
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        total = (
            torch.nn.utils.get_total_norm(grads)
            if hasattr(torch.nn.utils, "get_total_norm")
            else torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        )
        self.pre_clip[self.global_step + 1] = float(total)
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val)
        after = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        assert float(after) < float(total)  # clipping really happened

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _pl_trainer(**kw):
    base = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=0.01,
    )
    base.update(kw)
    return L.Trainer(**base)


def test_lightning_run_records_loss_and_pre_clipping_grad_norm(tmp_path):
    from ndt_store.integrations import LightningRecorder

    store = ndt_store.open_store(tmp_path / "s.zarr")
    probe = torch.randn(8, 6)
    model = _Net()
    cb = LightningRecorder(store, "pl", probe=probe, every=2, snapshot_steps=[4])
    _pl_trainer(max_steps=6, callbacks=[cb]).fit(model, _loader())
    rec = _records(store, "pl")
    assert sorted(rec) == [2, 4, 6]
    for step, (loss, norm) in rec.items():
        assert norm == pytest.approx(model.pre_clip[step], rel=1e-6)
        assert norm > 0.01 and math.isfinite(loss)
    assert store.snapshot_steps("pl") == [4]
    assert store.metadata("pl")["capture"]["status"] == "complete"
    # the recorded loss at a step is that step's training loss (replayed independently)
    ref = _Net()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for i, (x, y) in enumerate(_loader(), start=1):
        loss = torch.nn.functional.cross_entropy(ref(x), y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.01)
        opt.step()
        opt.zero_grad()
        if i in rec:
            assert rec[i][0] == pytest.approx(float(loss.detach()), rel=1e-5)
            assert rec[i][1] == pytest.approx(float(norm), rel=1e-5)
        if i == 6:
            break


def test_lightning_crash_closes_the_run_and_resume_continues_it(tmp_path):
    from ndt_store.integrations import LightningRecorder

    path = tmp_path / "s.zarr"
    probe = torch.randn(8, 6)
    model = _Net()
    trainer = _pl_trainer(
        max_steps=6, callbacks=[LightningRecorder(path, "pl", probe=probe, every=2)]
    )
    trainer.fit(model, _loader())
    ckpt = tmp_path / "six.ckpt"
    trainer.save_checkpoint(ckpt)

    model.fail_at = 8  # crash at the 9th step
    cb = LightningRecorder(path, "pl", probe=probe, every=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _pl_trainer(max_steps=12, callbacks=[cb]).fit(model, _loader(), ckpt_path=ckpt)
    assert cb.recorder is None  # on_exception closed it
    store = ndt_store.open_store(path, mode="r")
    assert store.metadata("pl")["capture"]["status"] == "interrupted (RuntimeError)"
    assert sorted(_records(store, "pl")) == [2, 4, 6, 8]

    model = _Net()
    cb = LightningRecorder(path, "pl", probe=probe, every=2)
    _pl_trainer(max_steps=12, callbacks=[cb]).fit(model, _loader(), ckpt_path=ckpt)
    rec = _records(ndt_store.open_store(path, mode="r"), "pl")
    assert sorted(rec) == [2, 4, 6, 8, 10, 12]
    for step in (10, 12):
        assert rec[step][1] == pytest.approx(model.pre_clip[step], rel=1e-6)
