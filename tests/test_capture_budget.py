"""Recording at scale, bounded: the estimate without a run, the snapshot budget, the
byte-bounded writer queue and snapshot chunks of at most 64 MiB."""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import ndt_store  # noqa: E402
import ndt_store.store as store_mod  # noqa: E402
from ndt_store import _dims as D  # noqa: E402
from ndt_store.capture import JumpPolicy, Recorder  # noqa: E402
from ndt_store.capture.writer import BackgroundWriter, PendingSnapshot, to_host  # noqa: E402
from ndt_store.cli import main  # noqa: E402


class Tied(nn.Module):
    """Embedding tied to the output layer, a Linear and attention (like a tiny LM)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.hidden = nn.Linear(8, 8)
        self.out = nn.Linear(8, 20, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        x = self.emb(ids)
        x = x + self.attn(x, x, x)[0]
        return self.out(torch.relu(self.hidden(x)))


def _probe() -> torch.Tensor:
    return torch.randint(0, 20, (3, 6), generator=torch.Generator().manual_seed(0))


def _stored_bytes(store, name: str, step: int) -> int:
    aliases = store.metadata(name).get(D.WEIGHT_ALIASES, {})
    total = sum(a.sel(step=step).nbytes for k, a in store.weights(name).items() if k not in aliases)
    total += sum(a.sel(step=step).nbytes for a in store.activations(name).values())
    total += sum(a.sel(step=step).nbytes for a in store.attention(name).values())
    return int(total)


def test_estimate_without_a_run_equals_the_recorder_and_the_bytes_written(tmp_path, caplog):
    model = Tied()
    opts = {"snapshot_steps": [0, 2], "total_steps": 4, "every": 2}
    est = Recorder.estimate(model, _probe(), **opts)
    assert est["snapshot"] == (
        est["snapshot_weights"] + est["snapshot_activations"] + est["snapshot_attention"]
    )
    # the tied embedding is counted once
    assert est["snapshot_weights"] == 4 * (20 * 8 + 3 * 8 * 8 + 3 * 8 + 8 * 8 + 8 + 8 * 8 + 8)
    assert est["snapshot_attention"] == 4 * 3 * 2 * 6 * 6
    assert est["total"] == 3 * est["phase1_record"] + 2 * est["snapshot"]
    assert "weights" in est["summary"] and "attention" in est["summary"]
    store = ndt_store.open_store(tmp_path / "s.zarr", mode="w")
    with caplog.at_level(logging.WARNING, logger="ndt_store.capture"):
        with Recorder(store, "tied", model, probe=_probe(), **opts) as rec:
            for step in range(4):
                rec.step(step)
    assert {k: v for k, v in est.items() if k != "summary"} == rec.estimate
    assert [r.levelname for r in caplog.records if "snapshot" in r.message] == ["WARNING"]
    for step in (0, 2):
        assert _stored_bytes(store, "tied", step) == est["snapshot"]
    w = store.weights("tied")
    assert w["out.weight"].attrs["alias_of"] == "emb.weight"
    np.testing.assert_array_equal(w["out.weight"].values, w["emb.weight"].values)


def test_max_bytes_covers_scheduled_and_jump_snapshots(tmp_path, caplog):
    model = Tied()
    snap = Recorder.estimate(model, _probe())["snapshot"]
    store = ndt_store.open_store(tmp_path / "s.zarr", mode="w")
    policy = JumpPolicy(threshold=0.5, window=3, floor_ulps=0, max_count=None)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    with caplog.at_level(logging.WARNING, logger="ndt_store.capture"):
        with Recorder(store, "b", model, probe=_probe(), every=1, snapshot_every=3,
                      jump_snapshots=policy, max_bytes=int(3.5 * snap)) as rec:  # fmt: skip
            for step in range(30):
                model(_probe()).logsumexp(-1).mean().backward()
                opt.step()
                rec.step(step)
                opt.zero_grad()
    stored = store.snapshot_steps("b")
    assert len(stored) == 3 and rec.budget.used_bytes == 3 * snap
    assert rec.skipped_snapshots  # scheduled ones and jump ones
    roles = {s["role"] for s in store.metadata("b")["capture"]["jump_snapshots"]}
    assert roles and rec.jumps is not None
    messages = [r.message for r in caplog.records if "budget reached" in r.message]
    assert len(messages) == 1 and f"max_bytes={int(3.5 * snap)}" in messages[0]
    budget = store.metadata("b")["capture"]["snapshot_budget"]
    assert budget["stored"] == 3 and budget["skipped_steps"] == rec.skipped_snapshots


class SlowStore:
    """Just enough of a store for the writer: snapshots take a while to write."""

    def __init__(self) -> None:
        self.written: list[int] = []

    def write_snapshot(self, experiment, step, **kw):
        time.sleep(0.05)
        self.written.append(step)

    def append_phase1(self, experiment, rows):  # pragma: no cover - not used
        pass


def test_writer_queue_is_bounded_in_bytes():
    mib = 2**20
    w = BackgroundWriter(SlowStore(), "x", ["a"], max_queue=100, max_queue_bytes=3 * mib)
    block = torch.zeros(mib // 4)  # 1 MiB
    t0 = time.perf_counter()
    for step in range(10):
        w.put(PendingSnapshot(step, {"weights": {"w": to_host(block)}}))
        assert w.queued_bytes <= 3 * mib
    elapsed = time.perf_counter() - t0
    w.close()
    assert w.store.written == list(range(10))
    assert w.peak_queued_bytes == 3 * mib
    assert elapsed > 0.25  # the training side waited for the disk (back-pressure)
    # an item larger than the bound is admitted alone
    w = BackgroundWriter(SlowStore(), "y", ["a"], max_queue_bytes=mib // 2)
    w.put(PendingSnapshot(0, {"weights": {"w": to_host(block)}}))
    w.close()
    assert w.peak_queued_bytes == mib and w.queued_bytes == 0


def test_writer_put_does_not_wait_forever_on_a_dead_writer():
    class Broken(SlowStore):
        def write_snapshot(self, experiment, step, **kw):
            raise OSError("disk full")

    w = BackgroundWriter(Broken(), "x", ["a"], max_queue_bytes=10)
    item = PendingSnapshot(0, {"weights": {"w": to_host(torch.zeros(8))}})
    w.put(item)
    done = threading.Event()

    def more():
        try:
            w.put(PendingSnapshot(1, {"weights": {"w": to_host(torch.zeros(8))}}))
            w.close()
        except Exception:
            pass
        done.set()

    threading.Thread(target=more, daemon=True).start()
    assert done.wait(5)


def test_large_snapshot_tensors_are_chunked_small_ones_are_one_chunk(tmp_path, monkeypatch):
    assert store_mod.snapshot_chunks((8, 12, 1024, 1024), 4) == (1, 1, 12, 1024, 1024)
    assert store_mod.snapshot_chunks((2, 12, 2048, 2048), 4) == (1, 1, 4, 2048, 2048)
    assert store_mod.snapshot_chunks((50257, 768), 4) == (1, 21845, 768)
    for shape in [(8, 12, 1024, 1024), (2, 12, 2048, 2048), (50257, 768), (3, 300000000)]:
        chunk = store_mod.snapshot_chunks(shape, 4)
        assert np.prod(chunk) * 4 <= 64 * 2**20
    monkeypatch.setattr(store_mod, "SNAPSHOT_CHUNK_BYTES", 1024)
    store = ndt_store.open_store(tmp_path / "s.zarr", mode="w")
    store.create_run("run", {"arch_name": "x"}, ["l"])
    big = np.random.default_rng(0).random((4, 2, 16, 16)).astype(np.float32)  # 8 KiB
    small = np.ones((2, 4), dtype=np.float32)
    store.write_snapshot("run", 0, attention={"l": big}, weights={"w": small})
    frame = store._snapshot_frame("run")
    assert frame.array("attention/l").chunks == (1, 1, 1, 16, 16)
    assert frame.array("weights/w").chunks == (1, 2, 4)
    np.testing.assert_array_equal(store.attention("run", "l").sel(step=0).values, big)


def test_estimate_command(tmp_path, capsys):
    src = tmp_path / "mymodel.py"
    src.write_text(
        "import torch, torch.nn as nn\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.zeros(5, 4)\n"
    )
    assert main(["estimate", f"{src}:build", "--snapshot-steps", "0,10", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    torch.manual_seed(0)  # the same weights: the on-disk estimate compresses them
    want = Recorder.estimate(
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
        torch.zeros(5, 4),
        snapshot_steps=[0, 10],
    )
    assert got == want and got["snapshot"] == 4 * (4 * 8 + 8 + 8 * 2 + 2) + 4 * 5 * (8 + 2)
    assert main(["estimate", f"{src}:build", "--total-steps", "100"]) == 0
    out = capsys.readouterr().out
    assert "snapshot weights: 232" in out and "total" in out
    assert main(["estimate", f"{src}:nothing"]) == 1
    assert "has no 'nothing'" in capsys.readouterr().err


def test_estimate_command_from_a_hugging_face_config(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=30, n_positions=12, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    cfg.save_pretrained(tmp_path / "cfg")
    assert main(["estimate", str(tmp_path / "cfg"), "--batch", "2", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["snapshot_attention"] == 4 * 2 * 2 * 12 * 12  # samples x heads x 12 x 12


def test_large_phase1_eigendecompositions_are_announced(monkeypatch, caplog):
    import ndt_store.capture.recorder as recorder_mod

    monkeypatch.setattr(recorder_mod, "_LARGE_GRAM", 10)
    model = nn.Sequential(nn.Linear(4, 12), nn.Linear(12, 3))
    with caplog.at_level(logging.WARNING, logger="ndt_store.capture"):
        Recorder.estimate(model, torch.zeros(2, 6, 4))  # 12 tokens x 12 features
    (msg,) = [r.message for r in caplog.records if "eigendecomposition" in r.message]
    assert "0 (12 x 12)" in msg and "1 (" not in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ndt_store.capture"):
        Recorder.estimate(model, torch.zeros(2, 6, 4), metric_samples=1)
    assert not [r for r in caplog.records if "eigendecomposition" in r.message]
