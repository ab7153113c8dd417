"""The Recorder on tiny models: stored dims, steps and values, scoping, resume, errors."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import ndt_store  # noqa: E402
from ndt_store import _dims as D  # noqa: E402
from ndt_store._kernels.dimensionality import dimensionality_metrics  # noqa: E402
from ndt_store.capture import JumpPolicy, Recorder, probe_hash  # noqa: E402
from ndt_store.capture.hooks import capture_attention, select_layers  # noqa: E402
from ndt_store.errors import ExperimentExistsError, InputError, NdtStoreError  # noqa: E402


class TinyTransformer(nn.Module):
    def __init__(self, d: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.input_proj = nn.Linear(8, d)
        layer = nn.TransformerEncoderLayer(d, heads, 32, dropout=0.1, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(d, 10)

    def forward(self, x):
        return self.fc(self.transformer(self.input_proj(x)).mean(1))


def _data(n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _no_state_left(model: nn.Module) -> None:
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert "forward" not in vars(m)
    assert torch.backends.mha.get_fastpath_enabled()


@pytest.fixture
def store(tmp_path):
    return ndt_store.open_store(tmp_path / "runs.zarr")


def _attention_reference(model: TinyTransformer, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Ask each attention module directly, on the input it sees in eval mode."""
    inputs: dict[str, torch.Tensor] = {}
    handles = [
        layer.self_attn.register_forward_pre_hook(
            lambda m, args, i=i: inputs.__setitem__(i, args[0].detach())
        )
        for i, layer in enumerate(model.transformer.layers)
    ]
    was = model.training
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            model(x)
            out = {}
            for i, layer in enumerate(model.transformer.layers):
                q = inputs[i]
                _, w = layer.self_attn(q, q, q, need_weights=True, average_attn_weights=False)
                out[f"transformer.layers.{i}.self_attn"] = w.numpy()
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
        model.train(was)
        for h in handles:
            h.remove()
    return out


def test_recorder_stores_expected_dims_steps_and_values(store) -> None:
    torch.manual_seed(0)
    model = TinyTransformer()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    xp, yp = x[:12], y[:12]
    snap_steps = [0, 10, 25]
    expected_weights: dict[int, dict[str, np.ndarray]] = {}
    expected_attn: dict[int, dict[str, np.ndarray]] = {}
    losses: dict[int, float] = {}
    grad_norms: dict[int, float] = {}
    with Recorder(
        store,
        "tiny",
        model,
        probe=(xp, yp),
        every=5,
        snapshot_steps=snap_steps,
        metrics_from="probe",
        dataset="random",
        total_steps=30,
        seed=0,
        flush_every=3,
    ) as rec:
        assert rec.layers == [
            "input_proj",
            "transformer.layers.0.linear1",
            "transformer.layers.0.linear2",
            "transformer.layers.1.linear1",
            "transformer.layers.1.linear2",
            "fc",
        ]
        assert rec.attention_layers == [f"transformer.layers.{i}.self_attn" for i in range(2)]
        for step in range(30):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if step % 5 == 0:
                losses[step] = loss.item()
                grad_norms[step] = float(
                    torch.linalg.vector_norm(
                        torch.stack([p.grad.norm() for p in model.parameters()])
                    )
                )
            if step in snap_steps:
                expected_weights[step] = {
                    k: v.clone().numpy() for k, v in model.state_dict().items()
                }
                expected_attn[step] = _attention_reference(model, xp)
            rec.step(step, loss=loss)
            opt.zero_grad()
        _no_state_left(model)
    _no_state_left(model)

    ds = store.phase1("tiny")
    assert ds[D.STEP].values.tolist() == list(range(0, 30, 5))
    assert ds[D.LAYER].values.tolist() == rec.layers
    np.testing.assert_allclose(ds[D.LOSS].values, [losses[s] for s in range(0, 30, 5)], rtol=1e-6)
    np.testing.assert_allclose(
        ds[D.GRAD_NORM].values, [grad_norms[s] for s in range(0, 30, 5)], rtol=1e-5
    )
    assert store.snapshot_steps("tiny") == snap_steps

    weights = store.weights("tiny")
    assert set(weights) == set(model.state_dict())
    w = weights["transformer.layers.0.linear1.weight"]
    assert w.dims == (D.STEP, "out", "in") and w[D.STEP].values.tolist() == snap_steps
    for step in snap_steps:
        for name, arr in weights.items():
            np.testing.assert_array_equal(arr.sel(step=step).values, expected_weights[step][name])

    acts = store.activations("tiny")
    assert set(acts) == set(rec.layers)
    assert rec.token_layers == rec.layers[:-1]  # all but fc have a position axis
    a1 = acts["transformer.layers.0.linear1"]
    assert a1.dims == (D.STEP, D.SAMPLE, "position", D.FEATURE)
    assert a1.shape == (3, 12, 8, 32)
    assert a1[D.LABEL].values.tolist() == yp.tolist()
    assert a1.attrs[D.PROBE_HASH] == probe_hash(xp)
    # Phase 1 metrics at a snapshot step equal the numpy kernels on the stored activations
    for layer, act in acts.items():
        for step in (10, 25):
            if step % 5:
                continue
            a = act.sel(step=step).values.astype(np.float64)
            # (sample, position, feature) outputs are measured over tokens by default
            rows = a.shape[0] * a.shape[1] if layer in rec.token_layers else a.shape[0]
            want = np.array(dimensionality_metrics(a.reshape(rows, -1)))
            got = np.array([ds[m].sel(step=step, layer=layer).item() for m in D.PHASE1_METRICS])
            np.testing.assert_allclose(got, want, rtol=2e-4)

    attn = store.attention("tiny")
    assert set(attn) == set(rec.attention_layers)
    for name, arr in attn.items():
        assert arr.dims == (D.STEP, D.SAMPLE, D.HEAD, D.QUERY, D.KEY)
        assert arr.shape == (3, 12, 4, 8, 8)
        np.testing.assert_allclose(arr.sum(D.KEY).values, 1.0, rtol=1e-5)
        for step in snap_steps:
            np.testing.assert_allclose(
                arr.sel(step=step).values, expected_attn[step][name], rtol=1e-5, atol=1e-7
            )

    meta = store.metadata("tiny")
    cap = meta["capture"]
    assert meta[D.ARCH_NAME] == "tinytransformer" and meta[D.DATASET] == "random"
    assert meta[D.NUM_STEPS] == 30 and meta[D.MEASUREMENT_INTERVAL] == 5
    assert cap["num_params"] == sum(p.numel() for p in model.parameters())
    assert cap["model_class"].endswith("TinyTransformer")
    assert cap[D.PROBE_HASH] == probe_hash(xp) and cap["layers"] == rec.layers
    assert cap["seed"] == 0 and "torch" in cap["versions"] and cap["status"] == "complete"
    est = cap["estimate_bytes"]
    assert est["phase1_records"] == 7 and est["scheduled_snapshots"] == 3
    stored = sum(int(np.prod(v.shape)) * 4 for v in acts.values()) // 3
    assert est["snapshot_activations"] == stored
    # downstream works unchanged: the cross-experiment view and the legacy record
    assert "tiny" in store.measurements()[D.EXPERIMENT].values
    assert store.record("tiny", 11)[D.STEP] == 10


class InplaceMLP(nn.Module):
    """A ReLU that overwrites the tracked layer's output in place."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.act = nn.ReLU(inplace=True)
        self.b = nn.Linear(16, 10)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


def test_batch_metrics_come_from_the_training_forward(store, caplog) -> None:
    torch.manual_seed(1)
    model = InplaceMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(3)
    batches = [
        (torch.randn(24, 8, generator=g), torch.randint(0, 10, (24,), generator=g))
        for _ in range(20)
    ]
    probe = torch.randn(6, 8, generator=g)
    seen: dict[int, dict[str, np.ndarray]] = {}
    current: dict[str, np.ndarray] = {}
    # the test's own reference hooks (registered first, so they run before the ReLU)
    for name in ("a", "b"):
        getattr(model, name).register_forward_hook(
            lambda m, args, out, name=name: current.__setitem__(name, out.detach().clone().numpy())
        )
    with Recorder(store, "batch", model, probe=probe, every=4, metric_samples=10) as rec:
        assert rec.metrics_from == "batch"
        for step, (x, y) in enumerate(batches):
            with torch.no_grad():  # an evaluation forward is not a training forward
                model.eval()
                model(probe)
                model.train()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            seen[step] = dict(current)
            rec.step(step, loss=loss)
            opt.zero_grad()
            armed = (step + 1) % 4 == 0
            # hooks of the recorder exist only for the forward of a measurement step
            assert (len(model.a._forward_hooks) == 2) is armed
        # a measurement step without a training forward falls back to the probe
        with caplog.at_level("WARNING", logger="ndt_store.capture"):
            rec.step(20, loss=0.0)
        assert "no training forward" in caplog.text
    assert not model.a._forward_hooks.keys() - {min(model.a._forward_hooks)}
    ds = store.phase1("batch")
    assert ds[D.STEP].values.tolist() == [0, 4, 8, 12, 16, 20]
    for step in (0, 4, 8, 12, 16):
        for layer in ("a", "b"):
            # before the in-place ReLU, first metric_samples rows of the training batch
            want = dimensionality_metrics(seen[step][layer][:10].astype(np.float64))
            got = [ds[m].sel(step=step, layer=layer).item() for m in D.PHASE1_METRICS]
            np.testing.assert_allclose(got, want, rtol=2e-4)
    with torch.no_grad():
        model.eval()
        ref = {"a": model.a(probe[:10]).numpy()}
    want = dimensionality_metrics(ref["a"].astype(np.float64))
    got = [ds[m].sel(step=20, layer="a").item() for m in D.PHASE1_METRICS]
    np.testing.assert_allclose(got, want, rtol=2e-4)
    cap = store.metadata("batch")["capture"]
    assert cap["batch_metric_fallbacks"] == 1 and cap["metrics_from"].startswith("training")


def test_metrics_from_is_checked(store) -> None:
    with pytest.raises(InputError, match="metrics_from"):
        Recorder(store, "x", nn.Linear(2, 2), probe=torch.zeros(1, 2), metrics_from="train")


def test_hooks_and_patches_removed_on_exception(store) -> None:
    model = TinyTransformer()
    x, y = _data(8)
    with pytest.raises(RuntimeError, match="boom"):
        with Recorder(store, "crash", model, probe=(x, y), every=1, snapshot_steps=[2]) as rec:
            for step in range(4):
                rec.step(step, loss=1.0)
            raise RuntimeError("boom")
    _no_state_left(model)
    # what was recorded before the exception is committed
    assert store.phase1("crash")[D.STEP].values.tolist() == [0, 1, 2, 3]
    assert store.snapshot_steps("crash") == [2]
    assert store.metadata("crash")["capture"]["status"] == "interrupted (RuntimeError)"
    # an exception inside a probe forward also leaves nothing behind
    model.fc.register_forward_hook(lambda *a: (_ for _ in ()).throw(ValueError("probe")))
    with pytest.raises(ValueError, match="probe"):
        with Recorder(store, "crash2", model, probe=x):
            pass
    model.fc._forward_hooks.clear()
    _no_state_left(model)


def test_capture_attention_matches_direct_call_and_keeps_callers_result() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=False, dropout=0.0).eval()
    x = torch.randn(5, 3, 8)  # (seq, batch, d)
    with torch.no_grad():
        plain = layer(x)
        with capture_attention({"a": layer.self_attn}) as got:
            patched = layer(x)
        _, want = layer.self_attn(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(patched, plain)
    torch.testing.assert_close(got["a"], want)
    assert got["a"].shape == (3, 2, 5, 5)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    q = torch.randn(2, 4, 8)
    with capture_attention({"m": mha}) as got:
        _, w = mha(q, q, q)  # caller asks for averaged weights
    assert w.shape == (2, 4, 4) and got["m"].shape == (2, 2, 4, 4)
    torch.testing.assert_close(w, got["m"].mean(1))


class ReturnsAttentions(nn.Module):
    """A model that returns its attention maps when asked (output_attentions style)."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)
        self.k = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x, output_attentions: bool = False):
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / 2.0
        p = scores.softmax(-1)
        y = self.out((p @ x).mean(1))
        if output_attentions:
            return {"logits": y, "attentions": (p.unsqueeze(1),)}
        return y


def test_models_returning_attentions(store) -> None:
    model = ReturnsAttentions()
    x = torch.randn(6, 5, 4)
    with Recorder(
        store,
        "hf",
        model,
        probe=x,
        every=2,
        snapshot_steps=[0],
        attention_kwargs={"output_attentions": True},
        attention_from_output=lambda out: out["attentions"],
    ) as rec:
        for step in range(3):
            rec.step(step, loss=0.5)
    att = store.attention("hf", "attentions.0")
    assert att.shape == (1, 6, 1, 5, 5)
    with torch.no_grad():
        want = model(x, output_attentions=True)["attentions"][0].numpy()
    np.testing.assert_allclose(att.sel(step=0).values, want, rtol=1e-6)
    assert store.phase1("hf")[D.LAYER].values.tolist() == ["q", "k", "out"]


def test_resume_appends_after_last_stored_step(store) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(10, 6)
    with Recorder(store, "res", model, probe=x, every=5, snapshot_every=10) as rec:
        assert rec.start_step == 0
        for step in range(23):
            rec.step(step, loss=float(step))
    assert store.phase1("res")[D.STEP].values.tolist() == [0, 5, 10, 15, 20]
    with Recorder(store, "res", model, probe=x, every=5, snapshot_every=10) as rec:
        assert rec.last_stored_step == 20 and rec.start_step == 21
        for step in range(18, 41):  # overlapping steps are ignored
            rec.step(step, loss=float(step))
    ds = store.phase1("res")
    assert ds[D.STEP].values.tolist() == list(range(0, 41, 5))
    assert ds[D.LOSS].values.tolist() == [float(s) for s in range(0, 41, 5)]
    assert store.snapshot_steps("res") == [0, 10, 20, 30, 40]
    with pytest.raises(InputError, match="probe batch"):
        with Recorder(store, "res", model, probe=x + 1):
            pass
    with pytest.raises(ExperimentExistsError):
        with Recorder(store, "res", model, probe=x, layers=["0"]):
            pass


def test_layer_selection() -> None:
    model = TinyTransformer()
    assert list(select_layers(model, ["transformer.layers.*.linear1"])) == [
        "transformer.layers.0.linear1",
        "transformer.layers.1.linear1",
    ]
    got = select_layers(model, [nn.MultiheadAttention, "fc"])
    assert list(got) == [
        "transformer.layers.0.self_attn",
        "transformer.layers.1.self_attn",
        "fc",
    ]
    assert "transformer.layers.0.self_attn.out_proj" not in select_layers(model)
    with pytest.raises(InputError, match="no module"):
        select_layers(model, ["nothing.*"])


def test_jump_triggered_snapshots_in_a_run(store) -> None:
    """A planted jump (a layer's weight made rank one at step 60) gets before/during/after."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 4, bias=False))
    model[0].weight.data = torch.eye(8)
    x = torch.randn(64, 8)
    policy = JumpPolicy(window=8, before=1, after=2, max_count=3)
    with Recorder(store, "jump", model, probe=x, every=5, jump_snapshots=policy) as rec:
        for step in range(120):
            with torch.no_grad():
                model[0].weight.mul_(1.0 + 1e-3)  # slow smooth drift
                if step in (60, 95):
                    model[0].weight.copy_(torch.ones(8, 8) * 0.3 if step == 60 else torch.eye(8))
            rec.step(step, loss=1.0)
    assert store.snapshot_steps("jump") == [55, 60, 70]
    cap = store.metadata("jump")["capture"]
    assert [j["step"] for j in cap["online_jumps"]][:1] == [60]
    assert len(cap["online_jumps"]) >= 2  # the second jump fired but did not fit the budget
    assert cap["jump_snapshots"] == [
        {"step": 55, "role": "before"},
        {"step": 60, "role": "during"},
        {"step": 70, "role": "after"},
    ]
    w = store.weights("jump")["0.weight"]
    np.testing.assert_allclose(w.sel(step=60).values, 0.3, rtol=1e-6)
    assert np.linalg.matrix_rank(w.sel(step=55).values) == 8
    sr = store.phase1("jump")[D.STABLE_RANK].sel(layer="0")
    assert float(sr.sel(step=55)) > 3 and float(sr.sel(step=60)) == pytest.approx(1.0)


def test_jump_snapshots_are_made_from_the_kept_state(store) -> None:
    """Jump snapshots come from the state kept at their step (one probe forward each,
    made later on the training thread); the model trains on unchanged in between."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 4, bias=False))
    model[0].weight.data = torch.eye(8)
    x = torch.randn(64, 8)
    data = torch.randn(32, 8)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    forwards = []
    model.register_forward_hook(lambda m, i, o: forwards.append(torch.is_grad_enabled()))
    policy = JumpPolicy(window=8, before=1, after=2, max_count=3)
    with Recorder(store, "jd", model, probe=x, every=5, jump_snapshots=policy) as rec:
        probes_at_entry = forwards.count(False)
        for step in range(120):
            if step == 60:  # the planted jump: layer 0 made rank one
                with torch.no_grad():
                    model[0].weight.copy_(torch.ones(8, 8) * 0.3)
            opt.zero_grad()
            model(data).pow(2).mean().backward()
            opt.step()
            state = {k: v.clone() for k, v in model.state_dict().items()}
            rec.step(step, loss=1.0)
            for k, v in model.state_dict().items():  # a deferred snapshot put it back
                assert torch.equal(v, state[k]), (step, k)
        final = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in model.state_dict().items():  # the snapshots made at exit put it back too
        assert torch.equal(v, final[k])
    steps = store.snapshot_steps("jd")
    assert steps == [55, 60, 70]
    # no probe forward at the 24 measurements: only the entry's and one per snapshot
    assert forwards.count(False) - probes_at_entry == len(steps)
    weights = store.weights("jd")
    acts = store.activations("jd")
    for s in steps:  # activations = the probe through the weights stored for that step
        w0 = weights["0.weight"].sel(step=s).values
        w2 = weights["2.weight"].sel(step=s).values
        h = x.numpy() @ w0.T
        np.testing.assert_allclose(acts["0"].sel(step=s).values, h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            acts["2"].sel(step=s).values, np.maximum(h, 0) @ w2.T, rtol=1e-5, atol=1e-6
        )
    assert np.linalg.matrix_rank(weights["0.weight"].sel(step=60).values, tol=1e-3) == 1
    assert np.linalg.matrix_rank(weights["0.weight"].sel(step=55).values) == 8


def test_writer_error_reaches_the_training_thread(store, monkeypatch) -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    x = torch.randn(4, 3)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    with pytest.raises(NdtStoreError, match="disk full"):
        with Recorder(store, "err", model, probe=x, every=1, flush_every=1) as rec:
            monkeypatch.setattr(store, "append_phase1", broken)
            for step in range(50):
                rec.step(step, loss=1.0)
                rec.flush()


def test_step_outside_context_and_decreasing_steps(store) -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    rec = Recorder(store, "out", model, probe=torch.randn(4, 3))
    with pytest.raises(NdtStoreError, match="outside"):
        rec.step(0)
    with rec:
        rec.step(3)
        with pytest.raises(InputError, match="increase"):
            rec.step(3)


def test_importing_ndt_store_does_not_import_torch() -> None:
    code = "import sys, ndt_store, ndt_store.capture; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resume_with_a_snapshot_but_no_phase1_record_starts_at_step_zero(
    store, monkeypatch
) -> None:
    # a run killed after its step-0 snapshot committed but before record 0 was written
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(10, 6)
    with monkeypatch.context() as m:
        m.setattr(store, "append_phase1", lambda *a, **k: None)
        with Recorder(store, "snap0", model, probe=x, every=1, snapshot_steps=[0]) as rec:
            rec.step(0, loss=1.0)
    assert store.phase1("snap0")[D.STEP].size == 0
    assert store.snapshot_steps("snap0") == [0]
    before = store.weights("snap0")["0.weight"].sel(step=0).values.copy()

    with Recorder(store, "snap0", model, probe=x, every=1, snapshot_steps=[0]) as rec:
        assert rec.start_step == 0
        for step in range(3):
            rec.step(step, loss=1.0)
    assert store.phase1("snap0")[D.STEP].values.tolist() == [0, 1, 2]
    assert store.snapshot_steps("snap0") == [0]
    np.testing.assert_array_equal(store.weights("snap0")["0.weight"].sel(step=0).values, before)


class _Sleepy(nn.Module):
    """A linear model that sleeps in train mode (training) or eval mode (the probe)."""

    def __init__(self, train_s: float, probe_s: float) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.train_s, self.probe_s = train_s, probe_s

    def forward(self, x):
        time.sleep(self.train_s if self.training else self.probe_s)
        return self.fc(x)


def _run_sleepy(tmp_path, name: str, train_s: float, probe_s: float, steps: int = 6):
    model = _Sleepy(train_s, probe_s)
    store = ndt_store.open_store(tmp_path / "s.zarr")
    x = torch.randn(5, 4)
    with Recorder(store, name, model, probe=x, every=1, metrics_from="probe") as rec:
        for step in range(steps):
            model.train()
            model(x).sum().backward()
            rec.step(step)
    return rec, store.metadata(name)["capture"]["training_thread_cost"]


def test_recording_that_holds_training_back_is_reported_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ndt_store.capture"):
        rec, cost = _run_sleepy(tmp_path, "slow", train_s=0.0, probe_s=0.03)
    warned = [r.message for r in caplog.records if "to the training time" in r.message]
    assert len(warned) == 1, warned  # once, not at every step
    assert "slow:" in warned[0] and "every=" in warned[0] and "tokens=False" in warned[0]
    # each step() held the thread >= 30 ms (the probe) against ~0 ms of training; the
    # first record is the warm-up, counted apart
    assert cost["recorder_seconds"] >= 5 * 0.03 and cost["warmup_seconds"] >= 0.03
    assert cost["share"] > 1.0
    assert cost["steps"] == cost["records"] == cost["phase1_records"] == 5
    assert cost == rec.cost.as_dict()


def test_cheap_recording_is_not_reported(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ndt_store.capture"):
        _, cost = _run_sleepy(tmp_path, "fast", train_s=0.1, probe_s=0.0)
    assert not [r for r in caplog.records if "to the training time" in r.message]
    # five gaps of >= 100 ms of training between six step() calls (a probe forward of a
    # linear layer takes a few ms even on a loaded machine)
    assert cost["training_seconds"] >= 5 * 0.1 and 0 <= cost["share"] < 0.25


def test_writer_spectra_run_numpy_blas_on_one_thread_only(tmp_path, monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from ndt_store.capture import writer

    def numpy_blas() -> list[int]:
        return [
            i["num_threads"]
            for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas" and "numpy" in i["filepath"]
        ]

    before = numpy_blas()
    if not before:
        pytest.skip("threadpoolctl finds no BLAS bundled with numpy in this install")
    seen: list[list[int]] = []
    kernel = writer._kd.gram_singular_values

    def spy(mats):
        seen.append(numpy_blas())
        return kernel(mats)

    monkeypatch.setattr(writer._kd, "gram_singular_values", spy)
    model = TinyTransformer()
    x, _ = _data(8)
    store = ndt_store.open_store(tmp_path / "s.zarr")
    with Recorder(store, "blas", model, probe=x, every=1, metrics_from="probe") as rec:
        for step in range(3):
            rec.step(step)
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert numpy_blas() == before  # restored after each batch
    assert np.isfinite(store.phase1("blas")[D.STABLE_RANK].values).all()
