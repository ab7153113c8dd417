"""The Recorder on a CUDA device: what it stores equals direct forwards on that device,
its Phase 1 metrics (computed on the device) equal the numpy kernels, and recording never
changes training (parameters, buffers and the CUDA RNG stream, bit for bit under
deterministic algorithms).

These tests run only where a CUDA device is present; elsewhere they skip with that
reason (CI has no GPU). Run them on a GPU machine with::

    python -m pytest tests/test_capture_cuda.py -q
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

# cuBLAS needs this before its first handle for deterministic GEMMs (training-unchanged test)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
nn = torch.nn

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device (none is visible to torch)", allow_module_level=True)

import ndt_store  # noqa: E402
from ndt_store import _dims as D  # noqa: E402
from ndt_store._kernels.dimensionality import dimensionality_metrics  # noqa: E402
from ndt_store.capture import JumpPolicy, Recorder  # noqa: E402

CUDA = torch.device("cuda")
VOCAB, SEQ, N_LAYER, N_HEAD, WIDTH = 64, 16, 2, 4, 32


def _gpt2(attn: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        n_layer=N_LAYER,
        n_embd=WIDTH,
        n_head=N_HEAD,
        vocab_size=VOCAB,
        n_positions=SEQ,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation=attn,
    )
    return transformers.GPT2LMHeadModel(cfg).to(CUDA)


class _ConvNet(nn.Module):
    """Conv, batch norm, in-place ReLU and dropout: buffers and the RNG are exercised."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.drop(self.relu(self.bn(self.conv(x))).mean((2, 3))))


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))


def _reference(model: nn.Module, state, ids, layers):
    """Outputs of ``layers`` and attentions of an eager no-grad forward at ``state`` on CUDA."""
    ref = copy.deepcopy(model)
    ref.load_state_dict(state)
    ref.set_attn_implementation("eager")
    ref.eval()
    got: dict[str, np.ndarray] = {}
    mods = dict(ref.named_modules())
    hooks = [
        mods[n].register_forward_hook(
            lambda m, a, o, n=n: got.__setitem__(
                n, (o[0] if isinstance(o, tuple) else o).detach().cpu().numpy()
            )
        )
        for n in layers
    ]
    with torch.no_grad():
        out = ref(ids.to(CUDA), output_attentions=True)
    for h in hooks:
        h.remove()
    return got, [a.cpu().numpy() for a in out.attentions]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gpt2_on_cuda_stores_what_direct_forwards_give(tmp_path, attn):
    model = _gpt2(attn)
    ids = _ids(3, seed=1)  # a CPU probe: the Recorder moves it to the model's device
    train = _ids(4, seed=2).to(CUDA)
    store = ndt_store.open_store(tmp_path / "s.zarr", mode="w")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    snaps = [0, 4]
    states = {}
    with Recorder(store, "gpt2", model, probe=(ids, ids), every=2, snapshot_steps=snaps,
                  metrics_from="probe") as rec:  # fmt: skip
        for step in range(6):
            out = model(train, labels=train)
            out.loss.backward()
            opt.step()
            if step in snaps:
                states[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            rec.step(step, loss=out.loss)
            opt.zero_grad()
    assert store.metadata("gpt2")["capture"]["device"].startswith("cuda")
    assert model.config._attn_implementation == attn

    meta = store.metadata("gpt2")
    weights = store.weights("gpt2")
    assert set(weights) == set(model.state_dict())
    for step in snaps:
        for name, arr in weights.items():
            want = states[step][name]
            if name in meta["capture"]["transposed_weights"]:
                want = want.T
            np.testing.assert_array_equal(arr.sel(step=step).values, want.cpu().numpy())

    acts, attn_store = store.activations("gpt2"), store.attention("gpt2")
    ds = store.phase1("gpt2")
    for step in snaps:
        want_acts, want_attn = _reference(model, states[step], ids, rec.layers)
        for name in rec.layers:
            got = acts[name].sel(step=step).values
            # the same kernels on the same device: equal up to GEMM ordering at most
            np.testing.assert_allclose(got, want_acts[name], rtol=1e-5, atol=1e-6)
            a = got.astype(np.float64)
            want = dimensionality_metrics(a.reshape(-1, a.shape[-1]))  # tokens as samples
            metrics = [ds[m].sel(step=step, layer=name).item() for m in D.PHASE1_METRICS]
            np.testing.assert_allclose(metrics, want, rtol=2e-4)
        for i in range(N_LAYER):
            t = attn_store[f"transformer.h.{i}.attn"].sel(step=step).values
            assert t.shape == (3, N_HEAD, SEQ, SEQ)
            np.testing.assert_allclose(t, want_attn[i], rtol=1e-5, atol=1e-6)
    # every step measured; losses are the training losses (host scalars)
    assert ds[D.STEP].values.tolist() == [0, 2, 4]
    assert np.isfinite(ds["loss"].values).all()
    # on a GPU the spectra are computed on the training thread, and timed there
    # (step 0 is the warm-up, counted apart: steps 1-5 and the records at 2 and 4 count)
    cost = meta["capture"]["training_thread_cost"]
    assert cost["phase1_records"] == 2 and cost["steps"] == 5 and cost["warmup_seconds"] > 0
    assert 0 < cost["phase1_seconds"] <= cost["recorder_seconds"]


def _train(make, batches, loss_fn, *, record=None, store=None, probe=None, steps=6):
    torch.manual_seed(123)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(7)  # the training RNG (dropout), CPU and CUDA
    rec = None
    if record is not None:
        rec = Recorder(store, "run", model, probe=probe, snapshot_steps=[0, 3], **record)
        rec.__enter__()
    try:
        for step in range(steps):
            loss = loss_fn(model, batches[step % len(batches)])
            loss.backward()
            opt.step()
            if rec is not None:
                rec.step(step, loss=loss)
            opt.zero_grad()
    finally:
        if rec is not None:
            rec.__exit__(None, None, None)
    return model, rec, torch.rand(3, device=CUDA).cpu()


def _same_state(a: nn.Module, b: nn.Module) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


MODES = {
    "defaults": {},
    "train_mode_probe": {"eval_probe": False},
    "probe_metrics": {"metrics_from": "probe"},
    "jumps": {
        "jump_snapshots": JumpPolicy(threshold=0.5, window=3, floor_ulps=0),
        "eval_probe": False,
        "every": 1,
    },
}


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("net", ["gpt2", "convnet"])
def test_recording_never_changes_cuda_training(tmp_path, deterministic, mode, net):
    if net == "gpt2":
        make = lambda: _gpt2("eager")  # noqa: E731  (dropout 0.1 everywhere: the CUDA RNG)
        batches = [_ids(4, seed=s).to(CUDA) for s in range(3)]
        probe = _ids(2, seed=9)

        def loss_fn(model, ids):
            return model(ids, labels=ids).loss

    else:
        make = lambda: _ConvNet().to(CUDA)  # noqa: E731
        g = torch.Generator().manual_seed(0)
        batches = [
            (torch.randn(8, 1, 6, 6, generator=g).to(CUDA), torch.randint(0, 3, (8,)).to(CUDA))
            for _ in range(3)
        ]
        probe = torch.randn(4, 1, 6, 6, generator=g)

        def loss_fn(model, batch):
            return nn.functional.cross_entropy(model(batch[0]), batch[1])

    plain, _, rng_plain = _train(make, batches, loss_fn)
    again, _, _ = _train(make, batches, loss_fn)
    assert _same_state(plain, again) == []  # the comparison below can fail only by recording
    store = ndt_store.open_store(tmp_path / "s.zarr", mode="w")
    recorded, rec, rng_rec = _train(
        make, batches, loss_fn, record=MODES[mode], store=store, probe=probe
    )
    assert _same_state(plain, recorded) == []
    assert torch.equal(rng_plain, rng_rec)  # the CUDA RNG stream is where it was
    assert store.snapshot_steps("run")  # snapshots were written from the device
    if mode == "jumps":
        assert rec.jumps is not None
