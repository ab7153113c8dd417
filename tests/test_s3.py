"""Stores on object storage: a real S3-compatible HTTP server on loopback (moto server mode).

Every operation on an ``s3://bucket/prefix`` store must give exactly what the
same operations give on a local directory. Credentials and endpoint come from
the environment only (fake ones, set per test).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import ndt_store
from ndt_store import _dims as D
from ndt_store.synth import synth_store

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from s3server import NO_LEAKS, s3_env, s3_server

__all__ = ["s3_env", "s3_server"]

pytestmark = NO_LEAKS  # an unclosed HTTP session or socket fails the test


def _assert_catalog_equal(a: xr.Dataset, b: xr.Dataset) -> None:
    a = a.drop_attrs(deep=False)
    b = b.drop_attrs(deep=False)
    xr.testing.assert_identical(a.compute(), b.compute())


def test_real_phase1_on_s3_matches_local(s3_env: str, shared_phase1: Path, tmp_path: Path) -> None:
    from ndt_store.ingest.phase1 import export_phase1_json

    stores = {}
    for where, loc in (("s3", f"{s3_env}/runs.zarr"), ("local", tmp_path / "runs.zarr")):
        store = ndt_store.open_store(loc)
        created = ndt_store.ingest_phase1(store, shared_phase1)
        assert set(created.values()) == {"created"}
        # re-ingesting identical content is a no-op on both
        assert set(ndt_store.ingest_phase1(store, shared_phase1).values()) == {"unchanged"}
        stores[where] = ndt_store.open_store(loc, mode="r")
    s3, local = stores["s3"], stores["local"]
    assert (
        s3.experiments()
        == local.experiments()
        == sorted(p.stem for p in (shared_phase1 / "phase1_full").glob("*.json"))
    )
    for name in local.experiments():
        xr.testing.assert_identical(s3.phase1(name), local.phase1(name))
        assert s3.metadata(name) == local.metadata(name)
        for step in (0, 7, 1003, 10_000):
            assert s3.record(name, step) == local.record(name, step)
        assert export_phase1_json(s3, name) == export_phase1_json(local, name)
        # the record equals the source file's record (nearest step)
        src = json.loads((shared_phase1 / "phase1_full" / f"{name}.json").read_text())
        assert (
            s3.record(name, 1000)["layer_metrics"]
            == next(r for r in src["measurements"] if r["step"] == 1000)["layer_metrics"]
        )
    _assert_catalog_equal(s3.measurements(), local.measurements())
    # published tables on S3: see test_writes_deletes_and_tables_on_s3 (smaller, same code path)


def test_catalog_cache_on_s3_is_written_and_reused(s3_env: str, tmp_path: Path) -> None:
    loc = f"{s3_env}/syn.zarr"
    synth_store(loc, experiments=2, steps=0, records=30, kinds=("phase1",), seed=5)
    synth_store(tmp_path / "syn.zarr", experiments=2, steps=0, records=30, kinds=("phase1",),
                seed=5)  # fmt: skip
    writer = ndt_store.open_store(loc)
    first = writer.measurements().compute()  # builds the derived cache on S3
    reader = ndt_store.open_store(loc, mode="r")
    again = reader.measurements()
    assert isinstance(again[D.STABLE_RANK].data, type(writer.measurements()[D.STABLE_RANK].data))
    _assert_catalog_equal(first, again)
    local = ndt_store.open_store(tmp_path / "syn.zarr", mode="r")
    _assert_catalog_equal(again, local.measurements())
    # a point query on the cross-experiment view
    sel = again[D.STABLE_RANK].sel({D.STEP: 50}).compute()
    np.testing.assert_array_equal(sel.values, local.measurements()[D.STABLE_RANK].sel(
        {D.STEP: 50}).values)  # fmt: skip


def test_snapshots_and_measures_on_s3_match_local(s3_env: str, tmp_path: Path) -> None:
    from ndt_store.measures.attention import attention_entropy

    sizes = dict(experiments=1, steps=3, layers=1, heads=2, seq=5, samples=3, features=6,
                 records=20, seed=9)  # fmt: skip
    s3 = synth_store(f"{s3_env}/t.zarr", **sizes)
    local = synth_store(tmp_path / "t.zarr", **sizes)
    s3 = ndt_store.open_store(f"{s3_env}/t.zarr", mode="r")
    assert s3.experiments() == local.experiments()
    for name in local.experiments():
        assert s3.metadata(name) == local.metadata(name)
        for kind in D.TENSOR_KINDS:
            assert s3.snapshot_steps(name, kind) == local.snapshot_steps(name, kind)
        for layer, arr in local.attention(name).items():
            other = s3.attention(name, layer)
            xr.testing.assert_identical(other.compute(), arr.compute())
            ent_s3 = attention_entropy(other).mean((D.SAMPLE, D.QUERY))
            ent_local = attention_entropy(arr).mean((D.SAMPLE, D.QUERY))
            xr.testing.assert_identical(ent_s3.compute(), ent_local.compute())
        for layer, arr in local.activations(name).items():
            xr.testing.assert_identical(s3.activations(name, layer).compute(), arr.compute())
        w_s3, w_local = s3.weights(name), local.weights(name)
        assert w_s3.keys() == w_local.keys()
        for key in w_local:
            xr.testing.assert_identical(w_s3[key].compute(), w_local[key].compute())


def test_writes_deletes_and_tables_on_s3(s3_env: str) -> None:
    import pandas as pd

    loc = f"{s3_env}/w.zarr"
    store = synth_store(loc, experiments=2, steps=1, layers=1, heads=1, seq=3, samples=2,
                        records=10, kinds=("attention",))  # fmt: skip
    name = store.experiments()[0]
    rows = store.phase1(name).isel({D.STEP: slice(0, 3)})
    store.create_run("live", {"arch_name": "x"}, ["a", "b"])
    n = store.append_phase1("live", rows.assign_coords({D.LAYER: ["a", "b"]}).isel(
        {D.LAYER: slice(0, 2)}))  # fmt: skip
    assert n == 3
    store.update_metadata("live", final_accuracy=0.5)
    store.delete_experiment(name)
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert store.write_table("t", df) == "created"
    assert store.write_table("t", df.assign(a=[3, 4]), overwrite=True) == "replaced"
    fresh = ndt_store.open_store(loc, mode="r")
    assert name not in fresh.experiments() and "live" in fresh.experiments()
    assert fresh.metadata("live")["final_accuracy"] == 0.5
    assert fresh.phase1("live").sizes[D.STEP] == 3
    assert fresh.table("t")["a"].tolist() == [3, 4]
    assert fresh.table("t")["b"].tolist() == ["x", "y"]
    assert fresh.tables() == ["t"]
    # mode="w" starts over
    assert ndt_store.open_store(loc, mode="w").experiments() == []


def test_refresh_sees_another_writers_commit(s3_env: str) -> None:
    loc = f"{s3_env}/r.zarr"
    writer = ndt_store.open_store(loc, storage_options={"skip_instance_cache": True})
    synth_store(writer, experiments=1, steps=0, records=5, kinds=("phase1",), prefix="a")
    reader = ndt_store.open_store(loc, mode="r", storage_options={"skip_instance_cache": True})
    assert len(reader.experiments()) == 1
    synth_store(writer, experiments=1, steps=0, records=5, kinds=("phase1",), prefix="b")
    reader.refresh()
    assert len(reader.experiments()) == 2
