"""A failing checkpoint ingest leaves the store exactly as before, with a one-line error."""

from __future__ import annotations

import errno
import zipfile
from pathlib import Path

import numpy as np
import pytest

import ndt_store
from ndt_store.cli import main
from ndt_store.errors import InputError
from ndt_store.ingest import checkpoints as ck
from ndt_store.store import Store
from ndt_store.testing import tree_snapshot

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torch's quantization notice


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = ndt_store.open_store(tmp_path / "s.zarr")
    s.create_run("other", {}, [])  # the store is not empty: nothing of it may change
    return s


def _unchanged(store: Store, before: dict[str, bytes]) -> None:
    assert tree_snapshot(store.location) == before
    fresh = ndt_store.open_store(store.location, mode="r")
    assert fresh.experiments() == ["other"]


def _good(folder: Path) -> None:
    torch.save({"fc.weight": torch.ones(2, 3)}, folder / "checkpoint_step_1.pt")


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("complex", r"checkpoint_step_2\.pt: tensor 'w': complex tensor"),
        ("float8", r"checkpoint_step_2\.pt: tensor 'w': float8 tensor \(torch\.float8_e4m3fn\)"),
        ("quantized", r"tensor 'w': quantized tensor \(torch\.qint8\)"),
        ("sparse", r"tensor 'w' is sparse \(torch\.sparse_coo\)"),
        ("string-leaf", r"state dict entry 'sub\.name' is a str, not a tensor"),
    ],
)
def test_unstorable_tensors_are_refused_before_anything_is_written(store, tmp_path, case, match):
    src = tmp_path / "ckpts"
    src.mkdir()
    _good(src)
    w = {
        "complex": lambda: torch.ones(2, dtype=torch.complex64),
        "float8": lambda: torch.ones(2).to(torch.float8_e4m3fn),
        "quantized": lambda: torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8),
        "sparse": lambda: torch.ones(2).to_sparse(),
        "string-leaf": lambda: None,
    }[case]()
    state = {"w": w} if w is not None else {"sub": {"name": "x"}}
    torch.save({"model_state_dict": state, "step": 2}, src / "checkpoint_step_2.pt")
    before = tree_snapshot(store.location)
    with pytest.raises(InputError, match=match):
        ck.ingest_checkpoints(store, src, experiment="victim")
    _unchanged(store, before)


def test_step_beyond_int64_is_refused(store, tmp_path):
    src = tmp_path / "ckpts"
    src.mkdir()
    _good(src)
    torch.save({"fc.weight": torch.ones(2, 3)}, src / f"checkpoint_step_{2**70}.pt")
    before = tree_snapshot(store.location)
    with pytest.raises(
        InputError, match=r"outside 0 \.\. 2\*\*63-1 \(got 1180591620717411303424\)"
    ):
        ck.ingest_checkpoints(store, src, experiment="victim")
    _unchanged(store, before)


def test_non_numeric_safetensors_step_is_a_one_line_error(store, tmp_path, capsys):
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": np.ones(3, np.float32)}, str(path), metadata={"step": "final"})
    before = tree_snapshot(store.location)
    with pytest.raises(InputError, match=r"model\.safetensors: field 'step': .*not an integer"):
        ck.ingest_checkpoints(store, path, experiment="victim")
    code = main(["ingest", "checkpoints", str(path), "--store", str(store.location), "-e", "v"])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("ndt-store: error:") and err.count("\n") == 1
    assert "Traceback" not in err
    _unchanged(store, before)


def test_float8_safetensors_is_a_one_line_error(store, tmp_path, capsys):
    from safetensors.torch import save_file

    path = tmp_path / "checkpoint_step_3.safetensors"
    save_file({"w": torch.ones(2).to(torch.float8_e5m2)}, str(path))
    before = tree_snapshot(store.location)
    code = main(["ingest", "checkpoints", str(path), "--store", str(store.location), "-e", "v"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1
    assert "tensor 'w': float8 tensor (F8_E5M2) is not supported" in err
    _unchanged(store, before)


@pytest.mark.parametrize("failure", ["disk-full", "memory"])
def test_failure_while_writing_removes_the_new_experiment(store, tmp_path, monkeypatch, failure):
    src = tmp_path / "ckpts"
    src.mkdir()
    _good(src)
    torch.save({"fc.weight": torch.zeros(2, 3)}, src / "checkpoint_step_2.pt")
    before = tree_snapshot(store.location)
    if failure == "disk-full":
        real = Store.write_snapshot
        calls = []

        def write_snapshot(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 2:  # the second checkpoint: the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Store, "write_snapshot", write_snapshot)
        expected: type[BaseException] = OSError
    else:
        real_load = ck.load_checkpoint

        def load(path):
            if "step_2" in str(path):
                raise MemoryError
            return real_load(path)

        monkeypatch.setattr(ck, "load_checkpoint", load)
        expected = MemoryError
    with pytest.raises(expected):
        ck.ingest_checkpoints(store, src, experiment="victim")
    monkeypatch.undo()
    _unchanged(store, before)


def _zip_bomb(path: Path, inflated: int) -> None:
    """A .pt whose tensor record is stored deflated: tiny on disk, ``inflated`` bytes read."""
    torch.save({"w": torch.zeros(4)}, path)
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for info, data in entries:
            if info.filename.endswith("/data/0"):
                dst.writestr(info.filename, bytes(inflated), compress_type=zipfile.ZIP_DEFLATED)
            else:
                dst.writestr(info, data)


def test_size_guard_refuses_a_zip_bomb_before_inflating(store, tmp_path, monkeypatch, capsys):
    bomb = tmp_path / "checkpoint_step_5.pt"
    _zip_bomb(bomb, 64 * 2**20)
    assert bomb.stat().st_size < 2**20
    loads = []
    monkeypatch.setattr(ck, "_load_pt", lambda *a, **k: loads.append(a))  # must not be reached
    before = tree_snapshot(store.location)
    with pytest.raises(
        InputError, match=r"declares 67,109,\d+ bytes .* over the limit of 16,777,216"
    ):
        ck.ingest_checkpoints(store, bomb, experiment="victim", max_bytes=16 * 2**20)
    code = main(["ingest", "checkpoints", str(bomb), "--store", str(store.location), "-e", "v",
                 "--max-bytes", str(2**24)])  # fmt: skip
    assert code != 0 and "over the limit" in capsys.readouterr().err
    assert loads == []
    _unchanged(store, before)


def test_size_guard_counts_safetensors_header_bytes(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "step_1.safetensors"
    save_file({"w": np.ones(1000, np.float32)}, str(path))
    assert ck.scan_checkpoints(path).nbytes == 4000
    with pytest.raises(InputError, match="over the limit of 3,999"):
        ck.scan_checkpoints(path, max_bytes=3999)


def test_nested_state_dicts_are_flattened_with_dotted_names(tmp_path):
    store = ndt_store.open_store(tmp_path / "s.zarr")
    inner = torch.arange(6.0).reshape(2, 3)
    torch.save(
        {"model_state_dict": {"sub": {"inner.weight": inner}, "fc.bias": torch.ones(2)}},
        tmp_path / "checkpoint_step_1.pt",
    )
    torch.save({"sub": {"inner": {"weight": inner}}}, tmp_path / "checkpoint_step_2.pt")
    ck.ingest_checkpoints(store, tmp_path, experiment="r")
    assert sorted(store.weights("r", steps=[1])) == ["fc.bias", "sub.inner.weight"]
    np.testing.assert_array_equal(
        store.weights("r", steps=[2])["sub.inner.weight"].values[0], inner.numpy()
    )
    ck.ingest_state_dict(store, "m", 3, {"block": {"lin.weight": inner}})
    assert list(store.weights("m")) == ["block.lin.weight"]


def test_failing_state_dict_ingest_removes_the_new_experiment(store, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    before = tree_snapshot(store.location)
    monkeypatch.setattr(Store, "write_snapshot", full)
    with pytest.raises(OSError):
        ck.ingest_state_dict(store, "victim", 1, {"w": np.ones(2)})
    monkeypatch.undo()
    _unchanged(store, before)
