"""Attention that does not compress is stored raw; what compresses keeps Blosc lz4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ndt_store
from ndt_store.errors import CorruptStoreError


def _attention(causal: bool) -> np.ndarray:
    rng = np.random.default_rng(1)
    p = rng.random((4, 2, 32, 32)).astype(np.float32)
    if causal:
        p = np.tril(p)
    return p / p.sum(-1, keepdims=True)


def test_codec_follows_compressibility_and_values_round_trip(tmp_path: Path) -> None:
    store = ndt_store.open_store(tmp_path / "s.zarr")
    store.create_run("r", {}, [])
    dense, causal = _attention(False), _attention(True)
    for step in (0, 5, 10):
        store.write_snapshot("r", step, attention={"dense": dense * 1, "causal": causal})
    group = store._snapshot_frame("r").group
    dense_codecs = [type(c).__name__ for c in group["attention/dense"].metadata.codecs]
    causal_codecs = [type(c).__name__ for c in group["attention/causal"].metadata.codecs]
    assert dense_codecs == ["BytesCodec"]
    assert causal_codecs == ["BytesCodec", "BloscCodec"]
    attn = ndt_store.open_store(tmp_path / "s.zarr", mode="r").attention("r")
    np.testing.assert_array_equal(attn["dense"].values, np.stack([dense] * 3))
    np.testing.assert_array_equal(attn["causal"].values, np.stack([causal] * 3))


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_damaged_raw_chunk_is_reported(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "s.zarr"
    store = ndt_store.open_store(path)
    store.create_run("r", {}, [])
    store.write_snapshot("r", 0, attention={"dense": _attention(False)})
    chunk = path / "experiments/r/snapshots/attention/dense/c.0.0.0.0.0"
    if damage == "deleted":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:100])
    lazy = ndt_store.open_store(path, mode="r").attention("r", "dense")
    with pytest.raises(CorruptStoreError, match="attention/dense"):
        lazy.values  # noqa: B018
    report = ndt_store.verify_store(ndt_store.open_store(path, mode="r"))
    assert not report.ok and any("attention/dense" in p.path for p in report.errors)
