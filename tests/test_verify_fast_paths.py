"""``verify`` finds the same damage on each of its fast paths.

The chunk pass describes arrays from their ``zarr.json`` without Zarr, checks
uncompressed chunks in place, decodes Blosc and string chunks itself, proves a
row is not all NaN from its first value, and searches for ``*.partial`` files only
where interrupted writes leave them (everywhere with ``strict=True``). Each test
damages one thing those paths handle and checks that the report names it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import zarr

import ndt_store
from ndt_store import store as store_module
from ndt_store._array_spec import ArraySpec
from ndt_store._integrity import verify_store
from ndt_store.testing import write_phase1_json

SNAP = "experiments/r/snapshots"


def _dense(seed: int = 0) -> np.ndarray:
    """Softmax attention that does not compress: stored uncompressed."""
    p = np.random.default_rng(seed).random((2, 2, 16, 16)).astype(np.float32)
    return p / p.sum(-1, keepdims=True)


def _store(tmp_path: Path, steps: int = 3) -> Path:
    path = tmp_path / "s.zarr"
    store = ndt_store.open_store(path)
    ndt_store.ingest_phase1(store, write_phase1_json(tmp_path / "r.json", n_records=20))
    for k in range(steps):
        store.write_snapshot(
            "r",
            10 * k,
            attention={"dense": _dense(k)},
            weights={"w": np.arange(64, dtype=np.float32).reshape(8, 8) + k},
        )
    store.write_table("t", pd.DataFrame({"a": np.arange(5), "b": list("vwxyz")}))
    return path


def _codecs(path: Path, array: str) -> list[str]:
    doc = json.loads((path / array / "zarr.json").read_text())
    return [c["name"] for c in doc["codecs"]]


def _verify(path: Path, **kw: Any) -> ndt_store.IntegrityReport:
    return verify_store(ndt_store.open_store(path, mode="r"), **kw)


def _paths(report: ndt_store.IntegrityReport, severity: str) -> list[str]:
    return [p.path for p in report.problems if p.severity == severity]


# ------------------------------------------------------------------ array descriptions
def test_array_documents_describe_arrays_as_zarr_does(tmp_path: Path) -> None:
    path = _store(tmp_path)
    root = zarr.open_group(path, mode="r")
    seen = set()
    for doc_path in path.rglob("zarr.json"):
        key = doc_path.parent.relative_to(path).as_posix()
        node = root[key] if key != "." else root
        if not isinstance(node, zarr.Array):
            continue
        light = ArraySpec.from_document(key, json.loads(doc_path.read_text()))
        ref = ArraySpec.from_zarr(node)
        if light is None:  # left to Zarr: layouts frames never write (tables, cache: zstd)
            assert ref.codec == "zarr" and not key.startswith("experiments/"), key
            continue
        for name in ("path", "shape", "chunks", "dimension_names"):
            assert getattr(light, name) == getattr(ref, name), (key, name)
        if light.codec == "vlen-utf8":  # Zarr decodes strings through its own codecs
            assert ref.codec == "zarr" and ref.dtype.kind in "OTU"
        else:
            assert (light.dtype, light.codec) == (ref.dtype, ref.codec), key
        assert (light.key_prefix, light.separator) == (ref.key_prefix, ref.separator)
        assert repr(light.fill_value) == repr(ref.fill_value) or light.dtype.kind == "O"
        coords = tuple(range(len(light.shape)))
        assert light.chunk_key(coords) == node.metadata.encode_chunk_key(coords)
        seen.add(light.codec)
    assert seen == {"raw", "blosc", "vlen-utf8"}


@pytest.mark.parametrize(
    "change",
    [
        {"codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd"}]},
        {"codecs": [{"name": "bytes", "configuration": {"endian": "big"}}]},
        {"fill_value": "0x7fc00000"},
        {"data_type": "complex64"},
        {"storage_transformers": [{"name": "x"}]},
        {"unknown_extension": {"must_understand": True}},
        {"chunk_grid": {"name": "rectilinear", "configuration": {}}},
        {"node_type": "group"},
    ],
)
def test_other_documents_are_left_to_zarr(change: dict[str, Any]) -> None:
    doc = {
        "shape": [4, 3],
        "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, 3]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": "NaN",
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": {},
        "dimension_names": ["step", "x"],
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }
    assert ArraySpec.from_document("a", doc) is not None
    assert ArraySpec.from_document("a", {**doc, **change}) is None


# ------------------------------------------------------------------ chunk damage
def _array_of(key: str) -> str:
    """The array directory of a chunk key (``.../c/0`` nested or ``.../c.0.0`` flat)."""
    head, _, tail = key.rpartition("/")
    return key.split("/c/")[0] if "/c/" in key else head if tail.startswith("c.") else key


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-7])


def _extend(p: Path) -> None:
    p.write_bytes(p.read_bytes() + b"\0" * 9)


def _scramble_body(p: Path) -> None:
    """Keep the 16-byte Blosc header (sizes right), garble what follows."""
    data = p.read_bytes()
    p.write_bytes(data[:16] + bytes(255 - b for b in data[16:]))


DAMAGE = {
    "raw truncated": (f"{SNAP}/attention/dense/c.1.0.0.0.0", "raw", _truncate),
    "raw too long": (f"{SNAP}/attention/dense/c.1.0.0.0.0", "raw", _extend),
    "raw deleted": (f"{SNAP}/attention/dense/c.1.0.0.0.0", "raw", Path.unlink),
    "blosc truncated": (f"{SNAP}/weights/w/c.2.0.0", "blosc", _truncate),
    "blosc too long": (f"{SNAP}/weights/w/c.2.0.0", "blosc", _extend),
    "blosc body garbled": (f"{SNAP}/weights/w/c.2.0.0", "blosc", _scramble_body),
    "blosc deleted": (f"{SNAP}/weights/w/c.2.0.0", "blosc", Path.unlink),
    "string garbage": ("experiments/r/phase1-*/layer/c/0", "vlen-utf8", _scramble_body),
}


@pytest.mark.parametrize("case", list(DAMAGE))
@pytest.mark.parametrize("workers", [1, 4])
def test_each_damaged_chunk_is_reported(tmp_path: Path, case: str, workers: int) -> None:
    path = _store(tmp_path)
    key, codec, damage = DAMAGE[case]
    (key,) = [p.relative_to(path).as_posix() for p in path.glob(key)] if "*" in key else [key]
    assert _verify(path, strict=True).problems == []
    assert (
        ArraySpec.from_document(
            _array_of(key), json.loads((path / _array_of(key) / "zarr.json").read_text())
        ).codec
        == codec
    )  # type: ignore[union-attr]
    damage(path / key)
    report = _verify(path, strict=True, workers=workers)
    assert _paths(report, "error") == [key], report.format()
    assert report.checked == _verify(path, strict=True, workers=1).checked


def test_the_report_words_each_damage(tmp_path: Path) -> None:
    path = _store(tmp_path)
    chunk = path / f"{SNAP}/attention/dense/c.1.0.0.0.0"
    size = chunk.stat().st_size
    _extend(chunk)
    (msg,) = [p.message for p in _verify(path).errors]
    assert msg == f"chunk is damaged ({size + 9} bytes stored, {size} expected)"
    blosc = path / f"{SNAP}/weights/w/c.2.0.0"
    _scramble_body(blosc)
    _truncate(path / f"{SNAP}/weights/w/c.1.0.0")
    messages = {p.path.rsplit("/", 1)[1]: p.message for p in _verify(path).errors}
    assert messages["c.2.0.0"].startswith("chunk does not decode (")
    assert messages["c.1.0.0"].startswith("chunk is damaged (Blosc frame of ")
    (path / f"{SNAP}/weights/w/c.0.0.0").unlink()
    absent = [p.message for p in _verify(path).errors if p.path.endswith("w/c.0.0.0")]
    assert absent == [
        "chunk absent: reads as the fill value np.float32(nan) (never written, or lost)"
    ]


# ------------------------------------------------------------------ all-NaN rows
def _rows_store(tmp_path: Path, rows: list[np.ndarray], kind: str) -> Path:
    path = tmp_path / "n.zarr"
    store = ndt_store.open_store(path)
    store.create_run("r", {}, [])
    for k, values in enumerate(rows):
        tensors = {"x": values.astype(np.float32)}
        store.write_snapshot("r", k, **{kind: tensors})  # type: ignore[arg-type]
    return path


def _nan_warnings(path: Path) -> list[str]:
    report = _verify(path)
    assert report.ok, report.format()
    return [p.path for p in report.warnings if "entirely as NaN" in p.message]


@pytest.mark.parametrize("kind", ["attention", "weights"])
def test_a_row_is_all_nan_only_when_every_value_is(tmp_path: Path, kind: str) -> None:
    shape = (2, 2, 16, 16) if kind == "attention" else (8, 8)
    base = _dense(3).reshape(shape) if kind == "attention" else np.ones(shape)
    first_nan = base.copy()
    first_nan.flat[0] = np.nan  # starts with NaN, the rest are numbers
    last_number = np.full(shape, np.nan)
    last_number.flat[-1] = 0.5  # NaN but for its last value
    all_nan = np.full(shape, np.nan)
    path = _rows_store(tmp_path, [base, first_nan, last_number, all_nan], kind)
    codec = "raw" if kind == "attention" else "blosc"
    assert (
        ArraySpec.from_document(
            "x", json.loads((path / SNAP / kind / "x/zarr.json").read_text())
        ).codec
        == codec
    )  # type: ignore[union-attr]
    assert _nan_warnings(path) == [f"{SNAP}/{kind}/x row 3"]


def test_rows_split_over_several_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "SNAPSHOT_CHUNK_BYTES", 1024)  # 4 chunks a row
    ok = _dense(1)
    half = ok.copy()
    half[1] = np.nan  # two of its four chunks all NaN
    path = _rows_store(tmp_path, [ok, half, np.full(ok.shape, np.nan)], "attention")
    chunks = json.loads((path / SNAP / "attention/x/zarr.json").read_text())["chunk_grid"]
    assert chunks["configuration"]["chunk_shape"] == [1, 1, 1, 16, 16]
    assert _nan_warnings(path) == [f"{SNAP}/attention/x row 2"]
    (path / SNAP / "attention/x/c.2.0.0.0.0").unlink()  # a lost chunk of the all-NaN row
    report = _verify(path)
    assert _paths(report, "error") == [f"{SNAP}/attention/x/c.2.0.0.0.0"]
    assert f"{SNAP}/attention/x row 2" in _paths(report, "warning")  # still read as NaN


# ------------------------------------------------------------------ leftovers
def _partial(path: Path, where: str) -> str:
    target = path / where
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"x")
    return where


@pytest.mark.parametrize(
    ("where", "default"),
    [
        ("experiments/r/zarr.0123.partial", True),  # metadata write
        (f"{SNAP}/weights/w/zarr.0123.partial", True),
        (f"{SNAP}/weights/w/c.3.0.0.0123.partial", True),  # an append past the committed rows
        ("experiments/new/snapshots/c/0.0123.partial", True),  # an experiment never committed
        (f"{SNAP}/weights/w/c.1.0.0.0123.partial", True),  # flat keys: in the array's directory
    ],
)
def test_leftovers_of_interrupted_writes(tmp_path: Path, where: str, default: bool) -> None:
    path = _store(tmp_path)
    _partial(path, ".locks/x.partial")  # lock files are not leftovers
    assert _verify(path, strict=True).problems == []
    _partial(path, where)
    found = [p for p in _verify(path).warnings if "leftover" in p.message]
    assert [p.path for p in found] == ([where] if default else [])
    strict = [p for p in _verify(path, strict=True).warnings if "leftover" in p.message]
    assert [p.path for p in strict] == [where]
    assert strict[0].message == "1 leftover *.partial file(s) of interrupted writes (harmless)"


def test_leftover_search_lists_every_directory_when_strict(tmp_path: Path) -> None:
    from ndt_store import _leftovers

    path = _store(tmp_path)
    every = []
    for dirpath, dirnames, _ in os.walk(path):
        dirnames[:] = [d for d in dirnames if d != ".locks"]
        every.append(_partial(Path(dirpath), "k.0123.partial"))
    found = _leftovers.find_partials(str(path), None)
    assert len(found) == len(every)


# ------------------------------------------------------------------ tables
@pytest.mark.parametrize("damage", ["garbled", "deleted"])
def test_the_current_version_of_a_table_is_checked(tmp_path: Path, damage: str) -> None:
    path = _store(tmp_path)
    report = _verify(path, strict=True)
    assert report.checked["tables"] == 1 and report.problems == []
    (chunk,) = path.glob("tables/t/v-*/a/c/0")
    key = chunk.relative_to(path).as_posix()
    if damage == "deleted":
        chunk.unlink()
        assert _paths(_verify(path), "warning") == [key]  # tables skip all-fill chunks
    else:
        chunk.write_bytes(b"\x01" * 40)
    assert _paths(_verify(path, strict=True), "error") == [key]
