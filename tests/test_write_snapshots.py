"""``Store.write_snapshots``: several steps committed as one unit.

The references are independent of the batch path: the same steps written one by
one with ``write_snapshot`` (which is one step of the same code path, so the
values are also compared with the numpy arrays themselves), and the chunks read
back through zarr's own codec pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import ndt_store
from ndt_store import _frame
from ndt_store.errors import ExperimentExistsError, InputError, NdtStoreError
from ndt_store.testing import tree_snapshot

STEPS = [0, 10, 20, 30]
LABELS = np.arange(6) % 3


def _tensors(step: int) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng([3, step])
    attn = rng.random((6, 2, 5, 5)).astype(np.float32)
    return {
        "weights": {
            "fc.weight": rng.standard_normal((4, 3)).astype(np.float32),
            "fc.bias": rng.standard_normal(4),  # float64: its own dtype is kept
        },
        "activations": {"fc": rng.standard_normal((6, 4)).astype(np.float32)},
        "attention": {"attn": attn / attn.sum(-1, keepdims=True)},
    }


def _batch(steps: list[int]) -> dict[str, Any]:
    per = [_tensors(s) for s in steps]
    return {
        kind: {name: np.stack([t[kind][name] for t in per]) for name in per[0][kind]}
        for kind in ("weights", "activations", "attention")
    }


def _infos(steps: list[int]) -> list[dict[str, float]]:
    return [{"loss": 1.0 / (1 + s)} for s in steps]


def _store(path: Path) -> ndt_store.Store:
    store = ndt_store.open_store(path)
    store.create_run("run", {"arch_name": "toy"}, ["fc"])
    return store


def _reads(store: ndt_store.Store) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for kind in ("weights", "activations", "attention"):
        arrays = getattr(store, kind)("run")
        out[kind] = {name: arr.values for name, arr in arrays.items()}
        out[kind]["__steps__"] = {name: arr.step.values for name, arr in arrays.items()}
    return out


def test_batch_equals_single_writes(tmp_path: Path) -> None:
    one = _store(tmp_path / "one.zarr")
    for step, info in zip(STEPS, _infos(STEPS), strict=True):
        t = _tensors(step)
        one.write_snapshot("run", step, **t, labels=LABELS, probe_hash="p", info=info)
    batch = _store(tmp_path / "batch.zarr")
    done = batch.write_snapshots(
        "run", STEPS, **_batch(STEPS), labels=LABELS, probe_hash="p", infos=_infos(STEPS)
    )
    assert done == dict.fromkeys(STEPS, "created")
    one, batch = (ndt_store.open_store(tmp_path / n, mode="r") for n in ("one.zarr", "batch.zarr"))
    assert batch.snapshot_steps("run") == one.snapshot_steps("run") == STEPS
    assert batch.entries()["run"]["snapshots"] == one.entries()["run"]["snapshots"]
    got, want = _reads(batch), _reads(one)
    for kind in ("weights", "activations", "attention"):
        assert sorted(got[kind]) == sorted(want[kind])
        for name, values in got[kind].items():
            if name == "__steps__":
                continue
            np.testing.assert_array_equal(got[kind]["__steps__"][name], STEPS)
            np.testing.assert_array_equal(values, want[kind][name])
            ref = np.stack([_tensors(s)[kind][name] for s in STEPS])  # the arrays themselves
            assert values.dtype == ref.dtype
            np.testing.assert_array_equal(values, ref)
    np.testing.assert_array_equal(batch.activations("run", "fc").label.values, LABELS)
    assert batch.attention("run", "attn").attrs["probe_hash"] == "p"
    assert ndt_store.verify_store(batch, strict=True).ok


def test_batches_append_after_each_other_and_after_single_writes(tmp_path: Path) -> None:
    store = _store(tmp_path / "s.zarr")
    store.write_snapshot("run", 0, **_tensors(0))
    store.write_snapshots("run", [10, 20], **_batch([10, 20]))
    store.write_snapshots("run", [30], **_batch([30]))
    s = ndt_store.open_store(tmp_path / "s.zarr", mode="r")
    assert s.snapshot_steps("run") == STEPS
    w = s.weights("run")["fc.weight"].values
    np.testing.assert_array_equal(w, np.stack([_tensors(t)["weights"]["fc.weight"] for t in STEPS]))
    assert [e["row"] for e in s.entries()["run"]["snapshots"]] == [0, 1, 2, 3]


def test_overwrite_some_steps(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store = _store(path)
    store.write_snapshots("run", [0, 10, 20], **_batch([0, 10, 20]), infos=_infos([0, 10, 20]))
    new = {"weights": {"fc.weight": np.full((2, 4, 3), 7.0, np.float32)}}
    before = tree_snapshot(path)
    with pytest.raises(ExperimentExistsError, match=r"step 10 .*overwrite=True"):
        store.write_snapshots("run", [30, 10], **new)
    assert tree_snapshot(path) == before  # refused: nothing written
    done = store.write_snapshots("run", [30, 10], **new, infos=[{"loss": 0.5}, {"loss": 0.25}],
                                 overwrite=True)  # fmt: skip
    assert done == {30: "created", 10: "replaced"}
    s = ndt_store.open_store(path, mode="r")
    assert s.snapshot_steps("run") == [0, 10, 20, 30]
    w = s.weights("run")
    assert sorted(w) == ["fc.bias", "fc.weight"]  # steps 0 and 20 still have a bias
    bias = w["fc.bias"].values
    assert np.isnan(bias[[1, 3]]).all()  # the new steps 10 and 30 have none
    np.testing.assert_array_equal(bias[2], _tensors(20)["weights"]["fc.bias"])
    got = w["fc.weight"].values
    np.testing.assert_array_equal(got[0], _tensors(0)["weights"]["fc.weight"])
    np.testing.assert_array_equal(got[1], np.full((4, 3), 7.0))
    np.testing.assert_array_equal(got[2], _tensors(20)["weights"]["fc.weight"])
    np.testing.assert_array_equal(got[3], np.full((4, 3), 7.0))
    losses = {e["step"]: e["loss"] for e in s.entries()["run"]["snapshots"]}
    assert losses == {0: 1.0, 20: 1 / 21, 30: 0.5, 10: 0.25}
    # as with write_snapshot, a replaced step's whole snapshot goes: its activations too
    np.testing.assert_array_equal(s.activations("run", "fc").step.values, [0, 20])


@pytest.mark.parametrize(
    ("steps", "change", "match"),
    [
        ([0, 10, 10], {}, r"steps must be unique; \[10\] given more than once"),
        ([], {}, "steps is empty"),
        (5, {}, "steps must be a sequence"),
        ([0, 10], {}, r"weights 'fc.weight': needs a leading step axis of length 2"),
        (
            [0, 10, 20],
            {"attention": {"attn": np.ones((3, 6, 5, 5), np.float32)}},
            r"attention 'attn' must be \[sample, head, query, key\] per step; got shape \(6, 5",
        ),
        ([0, 10, 20], {"weights": {"w": np.ones(())}}, "needs a leading step axis of length 3"),
        ([0, 10, 20], {"weights": {"w": np.array(["a", "b", "c"])}}, "is not numeric"),
        ([0, 10, 20], {"infos": [{"loss": 1.0}]}, r"one mapping per step \(3\); got 1 entries"),
        ([0, 10, 20], {"infos": [{}, {}, 3]}, r"infos\[2\] must be a mapping"),
        ([0, 10, 20], {"weights": {"bad/name": np.ones((3, 2))}}, "bad/name"),
    ],
)
def test_bad_input_is_refused_and_nothing_changes(
    tmp_path: Path, steps: Any, change: dict[str, Any], match: str
) -> None:
    path = tmp_path / "s.zarr"
    store = _store(path)
    store.write_snapshots("run", [100, 110], **_batch([100, 110]))
    before = tree_snapshot(path)
    args = {**_batch([0, 10, 20]), "labels": LABELS, "probe_hash": "p", **change}
    with pytest.raises(NdtStoreError, match=match):  # InputError, InvalidNameError
        store.write_snapshots("run", steps, **args)
    assert tree_snapshot(path) == before
    assert ndt_store.open_store(path, mode="r").snapshot_steps("run") == [100, 110]


def test_shape_clash_with_a_stored_column_changes_nothing(tmp_path: Path) -> None:
    """Every column's shape is checked before any is resized or written.

    Before, the columns ahead of the clashing one (weights, activations) were resized
    and written first: invisible to readers, but the store's files had changed.
    """
    path = tmp_path / "s.zarr"
    store = _store(path)
    store.write_snapshot("run", 0, **_tensors(0))
    before = tree_snapshot(path)
    bad = {**_tensors(10), "attention": {"attn": np.ones((6, 2, 4, 4), np.float32)}}
    with pytest.raises(InputError, match=r"column 'attention/attn' has rows of shape"):
        store.write_snapshot("run", 10, **bad)
    assert tree_snapshot(path) == before


def test_probe_hash_clash_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store = _store(path)
    store.write_snapshots("run", [0], **_batch([0]), probe_hash="p1")
    before = tree_snapshot(path)
    with pytest.raises(InputError, match="probe batch hash p2 differs"):
        store.write_snapshots("run", [10, 20], **_batch([10, 20]), probe_hash="p2")
    assert tree_snapshot(path) == before


def test_snapshot_chunks_are_flat_files_zarr_reads(tmp_path: Path) -> None:
    """One file per step and tensor, beside each other (no directory per step), and the
    bytes written without zarr's codecs decode through them to the same values."""
    path = tmp_path / "s.zarr"
    _store(path).write_snapshots("run", STEPS, **_batch(STEPS))
    frame = path / "experiments" / "run" / "snapshots"
    col = frame / "attention" / "attn"
    assert sorted(p.name for p in col.iterdir()) == [
        *(f"c.{i}.0.0.0.0" for i in range(len(STEPS))),
        "zarr.json",
    ]
    group = zarr.open_group(frame, mode="r")
    for kind in ("weights", "activations", "attention"):
        for name in _tensors(0)[kind]:
            arr = group[f"{kind}/{name}"]
            assert isinstance(arr, zarr.Array)
            want = np.stack([_tensors(s)[kind][name] for s in STEPS])
            np.testing.assert_array_equal(arr[...], want)


@pytest.mark.parametrize("compressors", ["blosc", None])
def test_whole_chunk_writes_pad_edge_chunks_as_zarr_does(
    tmp_path: Path, compressors: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks split along a non-row axis (tensors over 64 MiB a step): the edge chunk is
    stored whole, padded; zarr's own read and the frame's fast read agree."""
    group = zarr.open_group(tmp_path / "f.zarr", mode="w")
    frame = _frame.Frame.create(group, "f")
    values = np.arange(3 * 10 * 3, dtype=np.float32).reshape(3, 10, 3)
    codecs = {"x": _frame.COMPRESSORS if compressors else None}
    fast: list[bool] = []
    real = _frame._whole_chunk_writes

    def spy(arr: Any, rows: np.ndarray, start: int) -> Any:
        out = real(arr, rows, start)
        fast.append(out is not None)
        return out

    monkeypatch.setattr(_frame, "_whole_chunk_writes", spy)
    frame.append({"x": values}, dims={"x": ("step", "a", "b")}, chunks={"x": (1, 4, 3)},
                 compressors=codecs)  # fmt: skip
    more = values[:2] + 1000
    frame.append({"x": more}, dims={"x": ("step", "a", "b")})
    assert fast == [True, True]  # both appends took the whole-chunk path
    arr = zarr.open_group(tmp_path / "f.zarr", mode="r")["f/x"]
    assert isinstance(arr, zarr.Array)
    want = np.concatenate([values, more])
    np.testing.assert_array_equal(arr[...], want)  # zarr's codec pipeline
    np.testing.assert_array_equal(_frame.Frame(group["f"]).read("x"), want)  # the fast read
    edge = (tmp_path / "f.zarr" / "f" / "x" / "c.4.2.0").read_bytes()
    raw = edge if not compressors else None
    if raw is not None:
        assert len(raw) == 4 * 3 * 4  # padded to the whole chunk
        np.testing.assert_array_equal(
            np.frombuffer(raw, np.float32).reshape(4, 3)[:2], more[1, 8:10]
        )


def test_columns_with_nested_chunk_keys_keep_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written before flat chunk keys appends with its own keys and reads whole."""
    path = tmp_path / "s.zarr"
    nested = {"name": "default", "separator": "/"}
    with monkeypatch.context() as m:
        m.setattr(_frame, "FLAT_CHUNK_KEYS", nested)
        _store(path).write_snapshots("run", [0, 10], **_batch([0, 10]))
    col = path / "experiments" / "run" / "snapshots" / "weights" / "fc.weight"
    assert (col / "c" / "1" / "0" / "0").is_file()
    store = ndt_store.open_store(path)
    store.write_snapshots("run", [20, 30], **_batch([20, 30]))
    assert (col / "c" / "3" / "0" / "0").is_file() and not list(col.glob("c.*"))
    got = _reads(ndt_store.open_store(path, mode="r"))
    for kind in ("weights", "activations", "attention"):
        for name in _tensors(0)[kind]:
            want = np.stack([_tensors(s)[kind][name] for s in STEPS])
            np.testing.assert_array_equal(got[kind][name], want)
    assert ndt_store.verify_store(ndt_store.open_store(path, mode="r"), strict=True).ok


def test_disk_full_while_writing_chunks_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed chunk write (local stores write them without zarr) raises the storage
    error, leaves no temporary file and commits none of the batch's steps."""
    import errno
    import os

    path = tmp_path / "s.zarr"
    store = _store(path)
    store.write_snapshots("run", [0], **_batch([0]))
    real = os.replace

    def full(src: Any, dst: Any) -> None:
        if "/c." in str(dst) and "attn" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match=r"[Nn]o space left"):
        store.write_snapshots("run", [10, 20], **_batch([10, 20]))
    monkeypatch.undo()
    assert not list(path.rglob("*.partial"))
    s = ndt_store.open_store(path, mode="r")
    assert s.snapshot_steps("run") == [0]
    assert ndt_store.verify_store(s, strict=True).ok
    store.write_snapshots("run", [10, 20], **_batch([10, 20]))  # the retry completes
    assert ndt_store.open_store(path, mode="r").snapshot_steps("run") == [0, 10, 20]
