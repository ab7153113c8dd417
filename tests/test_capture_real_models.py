"""The Recorder on model code it did not write: Hugging Face GPT-2 (SDPA and eager) and
a BERT encoder built from configs, and a ResNet-style CNN with batch norm and in-place
ReLU. Stored tensors are checked against direct forwards at the stored weights."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
nn = torch.nn

import ndt_store  # noqa: E402
from ndt_store import _dims as D  # noqa: E402
from ndt_store._kernels.dimensionality import dimensionality_metrics  # noqa: E402
from ndt_store.capture import JumpPolicy, Recorder  # noqa: E402
from ndt_store.errors import InputError, NdtStoreWarning  # noqa: E402

VOCAB, SEQ, N_LAYER, N_HEAD = 40, 8, 2, 4


def _gpt2(attn: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        n_layer=N_LAYER,
        n_embd=16,
        n_head=N_HEAD,
        vocab_size=VOCAB,
        n_positions=SEQ,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation=attn,
    )
    return transformers.GPT2LMHeadModel(cfg)


def _bert(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        num_hidden_layers=N_LAYER,
        hidden_size=16,
        num_attention_heads=N_HEAD,
        intermediate_size=32,
        vocab_size=VOCAB,
        max_position_embeddings=SEQ,
        pad_token_id=0,
    )
    return transformers.BertForMaskedLM(cfg)


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class TinyResNet(nn.Module):
    def __init__(self, c: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.block = Block(c)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.block(self.relu(self.bn(self.stem(x))))
        return self.fc(self.drop(x.mean((2, 3))))


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _direct_outputs(model: nn.Module, names, run) -> dict[str, np.ndarray]:
    """Outputs of ``names`` in one eval, no-grad forward (copies: ReLU is in place)."""
    got: dict[str, np.ndarray] = {}
    mods = dict(model.named_modules())
    hooks = [
        mods[n].register_forward_hook(
            lambda m, a, o, n=n: got.__setitem__(n, (o[0] if isinstance(o, tuple) else o).clone())
        )
        for n in names
    ]
    try:
        model.eval()
        with torch.no_grad():
            out = run(model)
    finally:
        for h in hooks:
            h.remove()
    return {k: v.numpy() for k, v in got.items()}, out


def _hf_reference(model: nn.Module, state, ids, layers):
    """Activations and attentions of an eager forward at ``state`` (a model copy)."""
    ref = copy.deepcopy(model)
    ref.load_state_dict(state)
    ref.set_attn_implementation("eager")
    acts, out = _direct_outputs(ref, layers, lambda m: m(ids, output_attentions=True))
    return acts, [a.numpy() for a in out.attentions]


# ------------------------------------------------------------------------------- GPT-2
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gpt2_is_recorded_by_default_with_module_attention_tied_weights_and_tokens(
    tmp_path, attn, caplog
):
    model = _gpt2(attn)
    ids = _ids(3, seed=1)
    train = _ids(4, seed=2)
    store = ndt_store.open_store(tmp_path / "s.zarr", mode="w")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    snaps = [0, 4]
    states = {}
    with (
        caplog.at_level(logging.WARNING, logger="ndt_store.capture"),
        Recorder(store, "gpt2", model, probe=(ids, ids), every=2, snapshot_steps=snaps,
                 metrics_from="probe") as rec,
    ):  # fmt: skip
        for step in range(6):
            out = model(train, labels=train)
            out.loss.backward()
            opt.step()
            if step in snaps:
                states[step] = {k: v.clone() for k, v in model.state_dict().items()}
            rec.step(step, loss=out.loss)
            opt.zero_grad()
    assert model.config._attn_implementation == attn  # switched back after the probes
    # the estimate was shown at WARNING before training
    assert any("snapshot" in r.message and "weights" in r.message for r in caplog.records)

    conv1d = [f"transformer.h.{i}.{m}" for i in range(N_LAYER) for m in
              ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]  # fmt: skip
    assert rec.layers == [*conv1d, "lm_head"]
    assert rec.token_layers == rec.layers
    assert rec.attention_layers == [f"transformer.h.{i}.attn" for i in range(N_LAYER)]

    # weights: Conv1D (in, out) stored as (out, in); tied lm_head stored once, served twice
    meta = store.metadata("gpt2")
    assert meta[D.WEIGHT_ALIASES] == {"lm_head.weight": "transformer.wte.weight"}
    stored_cols = store._snapshot_frame("gpt2").columns
    assert "weights/transformer.wte.weight" in stored_cols
    assert "weights/lm_head.weight" not in stored_cols
    weights = store.weights("gpt2")
    assert set(weights) == set(model.state_dict())
    for step in snaps:
        for name, arr in weights.items():
            want = states[step][name]
            if name in meta["capture"]["transposed_weights"]:
                want = want.T
            np.testing.assert_array_equal(arr.sel(step=step).values, want.numpy())
    c_attn = weights["transformer.h.0.attn.c_attn.weight"]
    assert c_attn.dims == (D.STEP, "out", "in") and c_attn.shape[1:] == (48, 16)
    np.testing.assert_array_equal(
        weights["lm_head.weight"].values, weights["transformer.wte.weight"].values
    )

    # activations and attention equal an eager forward at the stored weights, exactly
    acts = store.activations("gpt2")
    attn_store = store.attention("gpt2")
    for step in snaps:
        want_acts, want_attn = _hf_reference(model, states[step], ids, rec.layers)
        for name in rec.layers:
            a = acts[name]
            assert a.dims == (D.STEP, D.SAMPLE, "position", D.FEATURE)
            np.testing.assert_array_equal(a.sel(step=step).values, want_acts[name])
        for i in range(N_LAYER):
            t = attn_store[f"transformer.h.{i}.attn"]
            assert t.dims == (D.STEP, D.SAMPLE, D.HEAD, D.QUERY, D.KEY)
            assert t.shape[1:] == (3, N_HEAD, SEQ, SEQ)
            np.testing.assert_array_equal(t.sel(step=step).values, want_attn[i])
    # per-token labels are a (sample, position) coordinate
    assert acts["lm_head"][D.LABEL].dims == (D.SAMPLE, "position")
    np.testing.assert_array_equal(acts["lm_head"][D.LABEL].values, ids.numpy())

    # Phase 1 metrics are over tokens: (sample*position) x feature
    ds = store.phase1("gpt2")
    for step in snaps:
        for name in rec.layers:
            a = acts[name].sel(step=step).values.astype(np.float64)
            want = dimensionality_metrics(a.reshape(-1, a.shape[-1]))
            got = [ds[m].sel(step=step, layer=name).item() for m in D.PHASE1_METRICS]
            np.testing.assert_allclose(got, want, rtol=2e-4)
            # and not the sequence view (rank capped at 3 sequences)
            seq_view = dimensionality_metrics(a.reshape(a.shape[0], -1))
            assert not np.allclose(got, seq_view, rtol=1e-2)


def test_tokens_off_measures_whole_sequences(tmp_path):
    model = _gpt2("sdpa")
    ids = _ids(3, seed=1)
    store = ndt_store.open_store(tmp_path / "s.zarr", mode="w")
    with Recorder(store, "seq", model, probe=ids, tokens=False, metrics_from="probe",
                  snapshot_steps=[0], attention=False) as rec:  # fmt: skip
        rec.step(0)
    assert rec.token_layers == []
    a = store.activations("seq", "lm_head").sel(step=0).values.astype(np.float64)
    got = [store.phase1("seq")[m].sel(step=0, layer="lm_head").item() for m in D.PHASE1_METRICS]
    np.testing.assert_allclose(got, dimensionality_metrics(a.reshape(3, -1)), rtol=2e-4)
    assert store.metadata("seq")["capture"]["phase1_samples"]["lm_head"] == "sequences"


def test_probe_label_shape_mismatch_is_refused_at_entry(tmp_path):
    model = _gpt2("sdpa")
    ids = _ids(3, seed=1)
    store = ndt_store.open_store(tmp_path / "s.zarr", mode="w")
    with pytest.raises(InputError, match=r"labels have shape \(3, 7\).*\(3, 8\)"):
        with Recorder(store, "bad", model, probe=(ids, ids[:, :7])):
            pass
    assert "bad" not in store.experiments()


def test_attention_subset_is_labelled_in_the_store(tmp_path):
    model = _gpt2("sdpa")
    ids = _ids(2, seed=1)
    store = ndt_store.open_store(tmp_path / "s.zarr", mode="w")
    with Recorder(store, "sub", model, probe=ids, snapshot_steps=[0], attention_heads=[1, 3],
                  attention_queries=[0, 5, 7], attention_layers=["*.h.1.attn"]) as rec:  # fmt: skip
        rec.step(0)
    attn = store.attention("sub")
    assert list(attn) == ["transformer.h.1.attn"]
    t = attn["transformer.h.1.attn"]
    assert t[D.HEAD].values.tolist() == [1, 3] and t[D.QUERY].values.tolist() == [0, 5, 7]
    _, full = _hf_reference(model, model.state_dict(), ids, [])
    np.testing.assert_array_equal(t.sel(step=0).values, full[1][:, [1, 3]][:, :, [0, 5, 7]])
    est = rec.estimate
    assert est["snapshot_attention"] == 2 * 2 * 3 * SEQ * 4


# ------------------------------------------------------------------------------- BERT
def test_bert_encoder_attention_named_by_producing_module(tmp_path):
    model = _bert()
    ids = _ids(3, seed=1)
    store = ndt_store.open_store(tmp_path / "s.zarr", mode="w")
    with Recorder(store, "bert", model, probe=ids, snapshot_steps=[0]) as rec:
        rec.step(0)
    names = [f"bert.encoder.layer.{i}.attention.self" for i in range(N_LAYER)]
    assert rec.attention_layers == names
    assert model.config._attn_implementation == "sdpa"
    acts, want = _hf_reference(model, model.state_dict(), ids, rec.layers)
    attn = store.attention("bert")
    for i, name in enumerate(names):
        np.testing.assert_array_equal(attn[name].sel(step=0).values, want[i])
    for name in rec.layers:
        np.testing.assert_array_equal(
            store.activations("bert", name).sel(step=0).values, acts[name]
        )
    aliases = store.metadata("bert")[D.WEIGHT_ALIASES]
    assert aliases["cls.predictions.decoder.weight"] == "bert.embeddings.word_embeddings.weight"
    assert set(store.weights("bert")) == set(model.state_dict())


def test_attention_asked_but_not_capturable_warns_at_entry(tmp_path):
    class SelfAttention(nn.Module):  # returns no weights
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x):
            return self.proj(x)

    model = nn.Sequential(SelfAttention(), nn.Linear(4, 2))
    store = ndt_store.open_store(tmp_path / "s.zarr", mode="w")
    with pytest.warns(NdtStoreWarning, match="attention was asked for.*0"):
        with Recorder(store, "noattn", model, probe=torch.zeros(3, 5, 4)):
            pass
    # a model without any attention module gets no warning
    with Recorder(store, "cnn", TinyResNet(), probe=_images(4, 0)[0]):
        pass


# ------------------------------------------------------------------------------- vision
def test_resnet_with_batchnorm_and_inplace_relu_stores_exact_tensors(tmp_path):
    torch.manual_seed(0)
    model = TinyResNet()
    x, y = _images(16, seed=1)
    xp, yp = _images(5, seed=2)
    store = ndt_store.open_store(tmp_path / "s.zarr", mode="w")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    states = {}
    with Recorder(store, "resnet", model, probe=(xp, yp), snapshot_steps=[1, 3]) as rec:
        for step in range(4):
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if step in (1, 3):
                states[step] = {k: v.clone() for k, v in model.state_dict().items()}
            rec.step(step)
            opt.zero_grad()
    assert rec.layers == ["stem", "block.conv1", "block.conv2", "fc"]
    assert rec.token_layers == []
    weights = store.weights("resnet")
    acts = store.activations("resnet")
    for step in (1, 3):
        ref = TinyResNet()
        ref.load_state_dict(states[step])
        want, _ = _direct_outputs(ref, rec.layers, lambda m: m(xp))
        for name in rec.layers:
            np.testing.assert_array_equal(acts[name].sel(step=step).values, want[name])
        for name, arr in weights.items():
            np.testing.assert_array_equal(arr.sel(step=step).values, states[step][name].numpy())
    assert acts["stem"].dims == (D.STEP, D.SAMPLE, "channel", "height", "width")
    assert acts["fc"][D.LABEL].values.tolist() == yp.tolist()


# ------------------------------------------------------------------ training unchanged
MODES = {
    "defaults": {},
    "probe_metrics": {"metrics_from": "probe"},
    "train_mode_probe": {"eval_probe": False},
    "train_mode_probe_metrics": {"eval_probe": False, "metrics_from": "probe"},
    "metric_samples": {"metric_samples": 2, "eval_probe": False},
    "snapshot_every": {"snapshot_every": 2, "eval_probe": False},
    "jumps": {
        "jump_snapshots": JumpPolicy(threshold=0.5, window=3, floor_ulps=0),
        "eval_probe": False,
        "every": 1,
    },
    "budget_and_tokens_off": {"max_bytes": 1, "tokens": False, "snapshot_every": 1},
}


def _train(make, batches, loss_fn, *, record=None, store=None, probe=None, steps=6):
    torch.manual_seed(123)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(7)  # the training RNG (dropout)
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
                if step == 5 and rec.jumps is None:
                    rec.snapshot(step)  # a manual snapshot
            opt.zero_grad()
    finally:
        if rec is not None:
            rec.__exit__(None, None, None)
    return model, rec, torch.rand(3)


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(keep_vars=False), b.state_dict(keep_vars=False)
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert [m.training for m in a.modules()] == [m.training for m in b.modules()]


@pytest.mark.parametrize("mode", list(MODES))
def test_recording_never_changes_resnet_training(tmp_path, mode):
    batches = [_images(8, seed=s) for s in range(3)]

    def loss_fn(model, batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    plain, _, rng_plain = _train(TinyResNet, batches, loss_fn)
    store = ndt_store.open_store(tmp_path / "s.zarr", mode="w")
    recorded, rec, rng_rec = _train(
        TinyResNet, batches, loss_fn, record=MODES[mode], store=store, probe=_images(4, 9)[0]
    )
    _assert_same_state(plain, recorded)
    assert torch.equal(rng_plain, rng_rec)  # the training RNG stream is where it was
    assert int(recorded.bn.num_batches_tracked) == 6
    if mode == "jumps":
        assert rec.jumps is not None and rec.jumps.written  # jump snapshots were made
    if mode == "budget_and_tokens_off":
        assert store.snapshot_steps("run") == [] and rec.skipped_snapshots


@pytest.mark.parametrize("mode", ["defaults", "train_mode_probe", "jumps"])
def test_recording_never_changes_gpt2_training(tmp_path, mode):
    batches = [_ids(4, seed=s) for s in range(3)]

    def loss_fn(model, ids):
        return model(ids, labels=ids).loss

    plain, _, rng_plain = _train(lambda: _gpt2("sdpa"), batches, loss_fn)
    store = ndt_store.open_store(tmp_path / "s.zarr", mode="w")
    recorded, _, rng_rec = _train(
        lambda: _gpt2("sdpa"), batches, loss_fn, record=MODES[mode], store=store, probe=_ids(2, 9)
    )
    _assert_same_state(plain, recorded)
    assert torch.equal(rng_plain, rng_rec)
    assert recorded.config._attn_implementation == "sdpa"


def _du(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_estimated_bytes_on_disk_match_what_a_snapshot_adds(tmp_path, attn):
    model = _gpt2(attn)
    probe = _ids(8, seed=1)
    est = Recorder.estimate(model, probe)
    store = ndt_store.open_store(tmp_path / "s.zarr")
    with Recorder(store, "g", model, probe=probe, every=10**9) as rec:
        assert rec.estimate["snapshot_stored"] == est["snapshot_stored"]
        rec.snapshot(0)
        rec.flush()
        before = _du(tmp_path / "s.zarr")
        with torch.no_grad():  # the weights move as in training
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        rec.snapshot(1)
        rec.flush()
        added = _du(tmp_path / "s.zarr") - before
    assert est["snapshot_attention"] > 0
    assert abs(added / est["snapshot_stored"] - 1) <= 0.04, (added, est)  # raw: 6% off
    # the store compresses weights and activations: the raw estimate is an upper bound
    assert est["snapshot_stored"] < est["snapshot"]
