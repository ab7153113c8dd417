"""Hostile and broken input: malicious checkpoints, escaping names, corrupt stores, fuzzing.

Every refusal must leave the store byte-for-byte unchanged
(:func:`ndt_store.testing.tree_snapshot`) and create nothing outside it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ndt_store
from ndt_store import _dims as D
from ndt_store._integrity import verify_store
from ndt_store.errors import (
    CorruptStoreError,
    InputError,
    InvalidNameError,
    NdtStoreError,
    UnsafeCheckpointError,
)
from ndt_store.testing import make_phase1_obj, tree_snapshot, write_phase1_json


def _all_files(root: Path, store: Path) -> set[str]:
    """Every path under ``root`` except the store's lock directory."""
    locks = store / ".locks"
    return {
        str(p.relative_to(root)) for p in root.rglob("*") if locks not in p.parents and p != locks
    }


def _rows(steps: list[int], layers: list[str]) -> xr.Dataset:
    data = {m: ((D.STEP, D.LAYER), np.ones((len(steps), len(layers)))) for m in D.PHASE1_METRICS}
    data[D.LOSS] = (D.STEP, np.ones(len(steps)))
    return xr.Dataset(data, coords={D.STEP: steps, D.LAYER: layers})


# ------------------------------------------------------------ malicious pickles
class _Exploit:
    """Unpickling this runs ``exec`` (writes a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class _NumpyExploit:
    """Same, through a numpy global (``numpy.testing``'s ``runstring`` calls ``exec``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        from numpy.testing._private.utils import runstring

        return (runstring, (f"open({str(self.marker)!r}, 'w').write('pwned')", {}))


def _evil_checkpoints(tmp: Path, marker: Path) -> dict[str, Path]:
    torch = pytest.importorskip("torch")
    out = {}
    tmp.mkdir(parents=True, exist_ok=True)
    state = {"fc.weight": torch.ones(2, 3)}
    for label, payload in (("exec", _Exploit(marker)), ("numpy", _NumpyExploit(marker))):
        obj = {"model_state_dict": state, "step": 5, "extra": payload}
        out[f"zip-{label}"] = tmp / f"zip_{label}_step_5.pt"
        torch.save(obj, out[f"zip-{label}"])
        out[f"legacy-{label}"] = tmp / f"legacy_{label}_step_5.pt"
        torch.save(obj, out[f"legacy-{label}"], _use_new_zipfile_serialization=False)
    out["raw-pickle"] = tmp / "raw_step_5.pt"
    out["raw-pickle"].write_bytes(pickle.dumps({"model_state_dict": {}, "x": _Exploit(marker)}))
    assert not marker.exists()
    return out


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "kind", ["zip-exec", "zip-numpy", "legacy-exec", "legacy-numpy", "raw-pickle"]
)
def test_code_executing_checkpoints_are_refused_unrun(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ndt_store.ingest.checkpoints import ingest_checkpoints, load_checkpoint

    marker = tmp_path / "marker.txt"
    files = _evil_checkpoints(tmp_path / "ckpt", marker)
    # proof that the payload is live: an unrestricted load runs it
    import torch

    if kind != "raw-pickle":
        torch.load(files[kind], weights_only=False)
        assert marker.read_text() == "pwned"
        marker.unlink()
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    store = ndt_store.open_store(tmp_path / "s.zarr")
    store.create_run("run", {}, ["fc"])
    before = tree_snapshot(store.location)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        ingest_checkpoints(store, files[kind], experiment="run")
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(files[kind])
    assert not marker.exists(), "the checkpoint's code ran"
    assert tree_snapshot(store.location) == before


@pytest.mark.torch
def test_one_evil_file_in_a_directory_refuses_all(tmp_path: Path, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    from ndt_store.ingest.checkpoints import ingest_checkpoints

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker.txt"
    d = tmp_path / "ckpts"
    d.mkdir()
    torch.save({"fc.weight": torch.zeros(2, 2)}, d / "checkpoint_step_1.pt")
    torch.save(
        {"model_state_dict": {"fc.weight": torch.ones(2, 2)}, "p": _Exploit(marker)},
        d / "checkpoint_step_2.pt",
    )
    store = ndt_store.open_store(tmp_path / "s.zarr")
    before = tree_snapshot(store.location)
    with pytest.raises(UnsafeCheckpointError, match="checkpoint_step_2"):
        ingest_checkpoints(store, d, experiment="run")
    assert not marker.exists()
    assert tree_snapshot(store.location) == before
    # and a safe checkpoint still round-trips exactly
    (d / "checkpoint_step_2.pt").unlink()
    assert ingest_checkpoints(store, d, experiment="run") == {1: "created"}
    np.testing.assert_array_equal(store.weights("run")["fc.weight"].values, np.zeros((1, 2, 2)))


# ----------------------------------------------------------------- escaping names
BAD_NAMES = [
    "../escape",
    "../../escape",
    "/tmp/abs",
    "a/b",
    "..",
    ".",
    "",
    "a\\b",
    ".hidden",
    "__x",
    "nul\x00x",
    "C:evil",
]


def _name_attempts(store: ndt_store.Store, bad: str) -> dict[str, Callable[[], Any]]:
    return {
        "write_experiment": lambda: store.write_experiment(bad, _rows([0], ["x"]), {}),
        "create_run": lambda: store.create_run(bad, {}, ["x"]),
        "create_run layer": lambda: store.create_run("ok", {}, ["x", bad]),
        "write_experiment layer": lambda: store.write_experiment("ok", _rows([0], [bad]), {}),
        "snapshot parameter": lambda: store.write_snapshot("e", 1, weights={bad: np.ones(2)}),
        "snapshot activation": lambda: store.write_snapshot(
            "e", 1, activations={bad: np.ones((2, 2))}
        ),
        "snapshot attention": lambda: store.write_snapshot(
            "e", 1, attention={bad: np.ones((1, 1, 2, 2))}
        ),
        "write_table": lambda: store.write_table(bad, pd.DataFrame({"a": [1]})),
        "delete_experiment": lambda: store.delete_experiment(bad),
    }


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_escaping_names_are_refused_and_store_unchanged(bad: str, tmp_path: Path) -> None:
    path = tmp_path / "deep" / "s.zarr"
    store = ndt_store.open_store(path)
    store.create_run("e", {}, ["x"])
    before, outside = tree_snapshot(path), _all_files(tmp_path, path)
    for what, attempt in _name_attempts(store, bad).items():
        with pytest.raises(InvalidNameError):
            attempt()
        assert tree_snapshot(path) == before, what
        assert _all_files(tmp_path, path) == outside, f"{what} created files"


@pytest.mark.parametrize("bad", ["../escape", "../../layer", "/abs", "a/b", "..", ".x"])
def test_escaping_names_inside_json_are_refused(bad: str, tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store = ndt_store.open_store(path)
    obj = make_phase1_obj(n_records=3, layers=("ok",))
    for rec in obj["measurements"]:
        rec["layer_metrics"][bad] = dict(rec["layer_metrics"]["ok"])
    src = tmp_path / "src" / "exp.json"
    src.parent.mkdir()
    src.write_text(json.dumps(obj))
    before, outside = tree_snapshot(path), _all_files(tmp_path, path)
    with pytest.raises(InputError, match="layer name"):
        ndt_store.ingest_phase1(store, src)
    with pytest.raises(InputError):
        ndt_store.read_phase1_json(tmp_path / "src" / "exp.json", name=bad)
    assert tree_snapshot(path) == before and _all_files(tmp_path, path) == outside


@pytest.mark.torch
def test_escaping_parameter_names_in_checkpoints_are_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from ndt_store.ingest.checkpoints import ingest_checkpoints

    torch.save({"../../evil": torch.ones(2)}, tmp_path / "checkpoint_step_3.pt")
    store = ndt_store.open_store(tmp_path / "s.zarr")
    store.create_run("run", {}, [])
    before = tree_snapshot(store.location)
    with pytest.raises(InvalidNameError):
        ingest_checkpoints(store, tmp_path / "checkpoint_step_3.pt", experiment="run")
    with pytest.raises(InvalidNameError):
        ingest_checkpoints(store, tmp_path / "checkpoint_step_3.pt", experiment="../x")
    assert tree_snapshot(store.location) == before


@pytest.mark.torch
def test_refused_checkpoint_does_not_create_the_experiment(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from ndt_store.ingest.checkpoints import ingest_checkpoints

    torch.save({"../../evil": torch.ones(2)}, tmp_path / "checkpoint_step_3.pt")
    store = ndt_store.open_store(tmp_path / "s.zarr")
    before = tree_snapshot(store.location)
    with pytest.raises(InvalidNameError):
        ingest_checkpoints(store, tmp_path / "checkpoint_step_3.pt", experiment="new")
    assert tree_snapshot(store.location) == before


@pytest.mark.parametrize("method", ["append_phase1", "update_metadata", "writer"])
def test_lock_files_never_escape_the_store(method: str, tmp_path: Path) -> None:
    path = tmp_path / "deep" / "s.zarr"
    store = ndt_store.open_store(path)
    victim = tmp_path / "victim.lock"
    victim.write_text("precious")
    outside = _all_files(tmp_path, path)
    attempt = {
        "append_phase1": lambda: store.append_phase1("../../escaped", _rows([0], ["x"])),
        "update_metadata": lambda: store.update_metadata("../../escaped", x=1),
        "writer": lambda: store.writer("../../victim").__enter__(),
    }[method]
    with pytest.raises(NdtStoreError):
        attempt()
    assert _all_files(tmp_path, path) == outside
    assert victim.read_text() == "precious"


# ------------------------------------------------------------- corrupted stores
def _corrupt_store(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    path = tmp_path / "s.zarr"
    src = write_phase1_json(tmp_path / "toy.json", n_records=30, layers=("fc1", "fc2"))
    store = ndt_store.open_store(path)
    ndt_store.ingest_phase1(store, src)
    w = np.arange(6.0).reshape(3, 2)
    store.write_snapshot("toy", 10, weights={"w": w})
    frame = next((path / "experiments" / "toy").glob("phase1-*"))
    return path, frame, w


def _truncate(p: Path, keep: float = 0.5) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])


CORRUPTIONS: dict[str, Callable[[Path, Path], str]] = {
    "metrics chunk truncated": lambda s, f: (_truncate(f / "metrics/c/0/0/0"), "metrics")[1],
    "metrics chunk garbage": lambda s, f: (
        (f / "metrics/c/0/0/0").write_bytes(os.urandom(64)),
        "metrics",
    )[1],
    "metrics metadata truncated": lambda s, f: (_truncate(f / "metrics/zarr.json"), "metrics")[1],
    "loss chunk zeroed": lambda s, f: (
        (f / "loss/c/0").write_bytes(bytes(len((f / "loss/c/0").read_bytes()))),
        "loss",
    )[1],
    "metrics chunk deleted": lambda s, f: ((f / "metrics/c/0/0/0").unlink(), "metrics")[1],
    "step chunk deleted": lambda s, f: ((f / "step/c/0").unlink(), "step")[1],
}
_RAW_OR_SILENT = {  # cases where the store currently surfaces a raw error or a wrong number
    "metrics chunk truncated",
    "metrics chunk garbage",
    "metrics metadata truncated",
    "loss chunk zeroed",
    "metrics chunk deleted",
    "step chunk deleted",
}


_CORRUPT_REASON = (
    "Frame.read/Frame.array pass raw zarr/numcodecs/json errors through (RuntimeError "
    "'error during blosc decompression', JSONDecodeError) and a deleted chunk silently "
    "reads as NaN/0; fix: wrap reads in CorruptStoreError naming the array, store chunks "
    "with write_empty_chunks=True and check chunk presence (see report)"
)


@pytest.mark.parametrize(
    "case",
    [c for c in CORRUPTIONS],
)
def test_corrupt_phase1_gives_a_clear_error_naming_the_array(case: str, tmp_path: Path) -> None:
    path, frame, _ = _corrupt_store(tmp_path)
    array = CORRUPTIONS[case](path, frame)
    store = ndt_store.open_store(path, mode="r")
    with pytest.raises(CorruptStoreError, match=rf"{frame.name}/{array}"):
        store.phase1("toy")


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_verify_store_finds_each_corruption(case: str, tmp_path: Path) -> None:
    path, frame, _ = _corrupt_store(tmp_path)
    assert verify_store(ndt_store.open_store(path, mode="r"), strict=True).ok
    array = CORRUPTIONS[case](path, frame)
    report = verify_store(ndt_store.open_store(path, mode="r"), strict=True)
    assert not report.ok
    assert any(f"{frame.name}/{array}" in p.path for p in report.errors), report.format()


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_corrupt_snapshot_chunk_is_found(damage: str, tmp_path: Path) -> None:
    path, _, _ = _corrupt_store(tmp_path)
    chunk = path / "experiments/toy/snapshots/weights/w/c.0.0.0"
    chunk.unlink() if damage == "deleted" else _truncate(chunk, 0.2)
    report = verify_store(ndt_store.open_store(path, mode="r"), strict=True)
    assert any("weights/w/c.0.0.0" in p.path for p in report.errors), report.format()
    lazy = ndt_store.open_store(path, mode="r").weights("toy")["w"]  # building stays lazy
    with pytest.raises(NdtStoreError, match="weights/w"):
        lazy.values  # noqa: B018


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_corrupt_snapshot_read_raises_corrupt_store_error(damage: str, tmp_path: Path) -> None:
    path, _, _ = _corrupt_store(tmp_path)
    chunk = path / "experiments/toy/snapshots/weights/w/c.0.0.0"
    chunk.unlink() if damage == "deleted" else _truncate(chunk, 0.2)
    with pytest.raises(CorruptStoreError, match="weights/w"):
        ndt_store.open_store(path, mode="r").weights("toy")["w"].values  # noqa: B018


def test_corrupt_experiment_and_root_metadata_are_clear(tmp_path: Path) -> None:
    path, _, _ = _corrupt_store(tmp_path)
    meta = path / "experiments/toy/zarr.json"
    good = meta.read_bytes()
    meta.write_bytes(good[: len(good) // 3])
    with pytest.raises(CorruptStoreError, match="experiment 'toy' is not valid JSON"):
        ndt_store.open_store(path, mode="r").experiments()
    report = verify_store(ndt_store.open_store(path, mode="r"))
    assert [p.path for p in report.errors] == ["experiments/toy/zarr.json"]
    meta.write_bytes(good)
    _truncate(path / "zarr.json", 0.3)
    with pytest.raises(CorruptStoreError, match="unreadable root metadata"):
        ndt_store.open_store(path, mode="r")


def test_verify_store_on_a_healthy_store_counts_everything(tmp_path: Path) -> None:
    path, _, _ = _corrupt_store(tmp_path)
    report = verify_store(ndt_store.open_store(path, mode="r"), strict=True)
    assert report.ok and report.problems == []
    assert report.checked["experiments"] == 1 and report.checked["snapshots"] == 1
    assert report.checked["frames"] == 2
    assert report.checked["arrays"] == 6 + 3  # phase1: 6 columns + layer; snapshots: 3
    assert "OK" in report.format()


# ------------------------------------------------------------- fuzzed Phase 1 JSON
_WEIRD = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(
        [
            math.nan,
            math.inf,
            -math.inf,
            1e308,
            -1e308,
            10**30,
            2**62,
            2**63,
            10**400,
            -1,
            0,
            5e-324,
            1.5,
        ]
    ),
)
_LAYER = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def phase1_inputs(draw: st.DrawFn) -> dict[str, Any]:
    n_layers = draw(st.integers(1, 3))
    layers = draw(st.lists(_LAYER, min_size=n_layers, max_size=n_layers, unique=True))
    n = draw(st.integers(1, 4))
    steps = sorted(draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n, unique=True)))
    num = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**6), 10**6)
    obj: dict[str, Any] = {
        "measurements": [
            {
                "step": s,
                "epoch": draw(st.integers(0, 50)),
                "loss": draw(num),
                "grad_norm": draw(num),
                "layer_metrics": {la: {m: draw(num) for m in D.PHASE1_METRICS} for la in layers},
            }
            for s in steps
        ],
        "arch_name": draw(st.sampled_from(["mlp", "ü-net", "x"])),
        "dataset_name": "d",
        "num_steps": draw(st.integers(0, 10**6)),
    }
    for _ in range(draw(st.integers(0, 2))):
        paths = _paths(obj)[1:]
        where = draw(st.sampled_from(paths))
        parent = obj
        for key in where[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "duplicate_step"]))
        if action == "delete":
            del parent[where[-1]]
        elif action == "duplicate_step" and _duplicable(obj.get("measurements")):
            obj["measurements"][1]["step"] = obj["measurements"][0]["step"]
        else:
            parent[where[-1]] = draw(_WEIRD)
    return obj


def _duplicable(records: Any) -> bool:
    """Whether an earlier mutation left two record objects whose steps can be made equal."""
    return (
        isinstance(records, list)
        and len(records) > 1
        and all(isinstance(r, dict) for r in records[:2])
        and "step" in records[0]
    )


def _assert_roundtrip(store: ndt_store.Store, obj: dict[str, Any]) -> None:
    ds = store.phase1("fuzz")
    recs = obj["measurements"]
    layers = list(recs[0]["layer_metrics"])
    assert ds[D.LAYER].values.tolist() == layers
    assert ds[D.STEP].values.tolist() == [int(r["step"]) for r in recs]
    assert ds[D.EPOCH].values.tolist() == [int(r["epoch"]) for r in recs]
    assert ds[D.LOSS].values.tolist() == [float(r["loss"]) for r in recs]
    assert ds[D.GRAD_NORM].values.tolist() == [float(r["grad_norm"]) for r in recs]
    for m in D.PHASE1_METRICS:
        want = [[float(r["layer_metrics"][la][m]) for la in layers] for r in recs]
        assert ds[m].values.tolist() == want
    assert store.metadata("fuzz")[D.ARCH_NAME] == obj["arch_name"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(obj=phase1_inputs())
def test_fuzzed_phase1_json_is_stored_exactly_or_refused_cleanly(
    obj: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    src = tmp / "fuzz.json"
    src.write_text(json.dumps(obj, allow_nan=True))
    path = tmp / "s.zarr"
    store = ndt_store.open_store(path)
    before = tree_snapshot(path)
    try:
        ndt_store.ingest_phase1(store, src)
    except InputError as exc:
        assert str(src) in str(exc), f"the message does not name the file: {exc}"
        assert tree_snapshot(path) == before
        return
    _assert_roundtrip(ndt_store.open_store(path, mode="r"), copy.deepcopy(obj))
    shutil.rmtree(tmp)


@pytest.mark.parametrize(
    "field,value",
    [("step", 2**63), ("epoch", 2**64), ("loss", 10**400)],
    ids=["step-2**63", "epoch-2**64", "loss-10**400"],
)
def test_huge_integers_are_refused_with_input_error(field: str, value: int, tmp_path: Path) -> None:
    obj = make_phase1_obj(n_records=2, layers=("a",))
    obj["measurements"][-1][field] = value
    src = tmp_path / "huge.json"
    src.write_text(json.dumps(obj))
    store = ndt_store.open_store(tmp_path / "s.zarr")
    before = tree_snapshot(store.location)
    with pytest.raises(InputError, match=field):
        ndt_store.ingest_phase1(store, src)
    assert tree_snapshot(store.location) == before


@pytest.mark.parametrize("text", [b"", b"{", b"[]", b"\xff\xfe\x00", b"null", b'{"a": NaN'])
def test_malformed_json_files(text: bytes, tmp_path: Path) -> None:
    src = tmp_path / "bad.json"
    src.write_bytes(text)
    store = ndt_store.open_store(tmp_path / "s.zarr")
    before = tree_snapshot(store.location)
    with pytest.raises(InputError, match=r"bad\.json"):
        ndt_store.ingest_phase1(store, src)
    assert tree_snapshot(store.location) == before


# ------------------------------------------------------------------ fuzzed CSV
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cells=st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, width=32),
            st.integers(-1000, 1000),
            st.sampled_from(["", "abc", "nan", "1e999", "ü"]),
        ),
        min_size=1,
        max_size=6,
    ),
    drop=st.sampled_from([None, "step", "layer"]),
)
def test_fuzzed_jump_table_csv(cells: list[Any], drop: str | None, tmp_path_factory) -> None:
    from ndt_store.ingest.tables import JUMP_COLUMNS, JUMPS_TABLE, ingest_tables

    tmp = tmp_path_factory.mktemp("csv")
    n = len(cells)
    df = pd.DataFrame({c: [f"{c}{i}" for i in range(n)] for c in JUMP_COLUMNS})
    for c in ("magnitude", "speed", "phase"):
        df[c] = np.arange(n) + 0.5
    df["step"] = cells
    if drop:
        df = df.drop(columns=drop)
    csv = tmp / "jumps.csv"
    df.to_csv(csv, index=False)
    store = ndt_store.open_store(tmp / "s.zarr")
    before = tree_snapshot(store.location)
    try:
        ingest_tables(store, jumps=csv)
    except InputError as exc:
        assert "jumps.csv" in str(exc)
        assert tree_snapshot(store.location) == before
        return
    assert drop is None
    got = store.table(JUMPS_TABLE)
    want = pd.to_numeric(pd.read_csv(csv)["step"], errors="raise")
    np.testing.assert_array_equal(got["step"].to_numpy(float), want.to_numpy(float))
    assert list(got["layer"]) == [f"layer{i}" for i in range(n)]
