"""Arrays created with one metadata write match what zarr writes itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.api.asynchronous import create_array
from zarr.codecs import BloscCodec
from zarr.core.sync import sync

from ndt_store._fast_create import create_local_array
from ndt_store._frame import COMPRESSORS, FLAT_CHUNK_KEYS

SPECS: list[dict[str, Any]] = [
    {"shape": (5, 8, 16), "dtype": "float32", "chunks": (1, 8, 16),
     "dimension_names": ("step", "a", "b"), "compressors": COMPRESSORS,
     "fill_value": float("nan"), "chunk_key_encoding": FLAT_CHUNK_KEYS},
    {"shape": (3, 4), "dtype": "float64", "chunks": (3, 2),
     "dimension_names": ("step", "x"), "compressors": None, "fill_value": float("nan")},
    {"shape": (7,), "dtype": "int64", "chunks": (4,), "dimension_names": ("step",),
     "compressors": (BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),),
     "fill_value": -1},
    {"shape": (2, 3, 4, 5), "dtype": "uint8", "chunks": (1, 3, 4, 5),
     "dimension_names": ("step", "s", "h", "q"), "fill_value": 0},
    {"shape": (4, 2), "dtype": "bool", "chunks": (1, 2), "dimension_names": ("step", "f"),
     "fill_value": False},
    {"shape": (6, 2), "dtype": "float16", "chunks": (2, 2), "fill_value": 0.0},
]  # fmt: skip


def _doc(path: Path) -> dict[str, Any]:
    return json.loads((path / "zarr.json").read_text())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['dtype']}-{len(s['shape'])}d")
def test_metadata_equals_zarrs_own(tmp_path: Path, spec: dict[str, Any]) -> None:
    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    sync(create_array(group.store_path, name="by_zarr", **spec))
    # a first array of the kind makes the template; a second differs in shape only
    other = {**spec, "shape": tuple(n + 3 for n in spec["shape"])}
    for name, s in (("fast", spec), ("fast_other", other)):
        arr = sync(create_local_array(group.store_path, name, s))
        assert arr is not None
    assert _doc(tmp_path / "s.zarr" / "fast") == _doc(tmp_path / "s.zarr" / "by_zarr")
    sync(create_array(group.store_path, name="other_by_zarr", **other))
    want = _doc(tmp_path / "s.zarr" / "other_by_zarr")
    assert _doc(tmp_path / "s.zarr" / "fast_other") == want
    assert (tmp_path / "s.zarr" / "fast" / "zarr.json").read_bytes() == (
        tmp_path / "s.zarr" / "by_zarr" / "zarr.json"
    ).read_bytes()


def test_array_reads_and_writes_like_zarrs(tmp_path: Path) -> None:
    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    spec = SPECS[0]
    sync(create_local_array(group.store_path, "x", spec, config={"write_empty_chunks": True}))
    values = np.random.default_rng(0).normal(size=spec["shape"]).astype(np.float32)
    opened = zarr.open_array(tmp_path / "s.zarr" / "x", mode="r+")
    opened[:] = values
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "s.zarr" / "x")[:], values)
    assert tuple(opened.metadata.dimension_names) == spec["dimension_names"]


def test_overwrite_drops_what_was_there(tmp_path: Path) -> None:
    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    old = group.create_array("x", shape=(4, 3), dtype="int32", chunks=(1, 3))
    old[:] = 7
    leftover = group.create_group("y")  # a group where the new array goes
    leftover.attrs["k"] = 1
    for name in ("x", "y"):
        spec = {"shape": (2, 3), "dtype": "float32", "chunks": (1, 3), "fill_value": 0.0}
        assert sync(create_local_array(group.store_path, name, spec)) is not None
        arr = zarr.open_array(tmp_path / "s.zarr" / name)
        assert arr.shape == (2, 3) and arr.dtype == np.float32
        np.testing.assert_array_equal(arr[:], 0.0)  # no chunk of the old array survives
    assert sorted(p.name for p in (tmp_path / "s.zarr" / "x").iterdir()) == ["zarr.json"]


def test_falls_back_where_it_does_not_apply(tmp_path: Path) -> None:
    spec = {"shape": (2,), "dtype": "float32", "chunks": (1,)}
    memory = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    assert sync(create_local_array(memory.store_path, "x", spec)) is None
    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    text = {"shape": (2,), "dtype": np.dtypes.StringDType(), "chunks": (1,)}
    assert sync(create_local_array(group.store_path, "x", text)) is None
    assert sync(create_local_array(group.store_path, "x", {**spec, "shards": (2,)})) is None
    no_group = group.store_path / "missing"  # zarr writes parent groups; this does not
    assert sync(create_local_array(no_group, "x", spec)) is None
    assert not (tmp_path / "s.zarr" / "missing").exists()
    read_only = zarr.open_group(
        zarr.storage.LocalStore(tmp_path / "s.zarr", read_only=True), mode="r"
    )
    assert sync(create_local_array(read_only.store_path, "x", spec)) is None


def test_nested_name_writes_the_groups_zarr_writes(tmp_path: Path) -> None:
    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    spec = SPECS[0]
    sync(create_array(group.store_path, name="zarr_side/mid/x", **spec))

    async def both() -> list[Any]:  # two arrays under the same new groups, at once
        import asyncio

        return list(
            await asyncio.gather(
                create_local_array(group.store_path, "fast_side/mid/x", spec),
                create_local_array(group.store_path, "fast_side/mid/y", spec),
            )
        )

    assert all(a is not None for a in sync(both()))
    root = tmp_path / "s.zarr"
    for sub in ("", "mid/"):
        assert (root / f"fast_side/{sub}zarr.json").read_bytes() == (
            root / f"zarr_side/{sub}zarr.json"
        ).read_bytes()
    assert _doc(root / "fast_side/mid/x") == _doc(root / "zarr_side/mid/x")
    opened = zarr.open_group(root / "fast_side")
    assert sorted(opened["mid"].array_keys()) == ["x", "y"]
    assert not list(root.rglob("*.partial"))
    for bad in ("../x", "a//b", "a/./b"):
        assert sync(create_local_array(group.store_path, bad, spec)) is None
