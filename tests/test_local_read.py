"""The Zarr-free reader of ``ndt-store jumps`` reads what the store reads, or steps aside.

:class:`~ndt_store._local_read.LocalReader` reads a local store's entries, Phase 1
frames and tables straight from the files. It is compared here with
:class:`~ndt_store.store.Store` on stores generated to vary (ragged runs, an empty
run, published tables, uncommitted rows past the committed count), and each way it
must refuse (a URL, a foreign or newer root, an unknown name, a layout only Zarr
reads, a missing or damaged chunk) is checked to raise
:class:`~ndt_store._local_read.LayoutUnsupported`, after which the CLI answers
exactly as the store does.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

import ndt_store
from ndt_store import _dims as D
from ndt_store._jumps import store_jump_columns
from ndt_store._local_read import LayoutUnsupported, LocalReader
from ndt_store.cli import main
from ndt_store.moments import store_jumps

FIELDS = (D.STEP, D.LAYER, "metrics", D.LOSS)


def _run(rng: np.random.Generator, steps: np.ndarray, layers: list[str]) -> xr.Dataset:
    n = steps.size
    data = {
        m: ((D.STEP, D.LAYER), np.cumsum(rng.normal(size=(n, len(layers))), axis=0) + 5.0)
        for m in D.PHASE1_METRICS
    }
    for m in D.PHASE1_METRICS:
        data[m][1][n // 2 :] += 40.0  # a planted jump: significant at any level tested
    data[D.LOSS] = (D.STEP, np.linspace(2.0, 0.1, n))
    return xr.Dataset(data, coords={D.STEP: steps, D.LAYER: layers})


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lr") / "s.zarr"
    store = ndt_store.open_store(path)
    rng = np.random.default_rng(11)
    store.write_experiment(
        "run_b", _run(rng, np.arange(0, 1500, 2), ["z.fc", "a,b c", "é"]), {"arch_name": "mlp"}
    )  # more rows than one chunk, layer names a CSV must quote
    store.write_experiment("run_a", _run(rng, np.arange(0, 60, 3), ["fc1"]), {"num_steps": 60})
    store.create_run("run_c", {"arch_name": "cnn"}, ["fc1", "fc2"])  # a run with no records yet
    pub = store_jumps(store, ["run_b"])[["experiment", "layer", "step"]].iloc[::3].copy()
    pub["cluster"] = np.arange(len(pub)) % 4
    store.write_table(D.JUMPS_TABLE, pub)
    store.write_snapshot("run_b", 40, weights={"w": np.ones((3, 2))})
    store.write_snapshot("run_b", 80, weights={"w": np.zeros((3, 2))})
    store.write_table("zeros", pd.DataFrame({"n": np.zeros(5, np.int64), "s": ["x"] * 5}))
    return path


@pytest.fixture
def copy(source, tmp_path) -> Path:
    dest = tmp_path / "s.zarr"
    shutil.copytree(source, dest)
    return dest


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.dtype.kind in "OUT" or y.dtype.kind in "OUT":
            assert [str(v) for v in x.tolist()] == [str(v) for v in y.tolist()], k
        else:
            assert x.dtype == y.dtype, k
            np.testing.assert_array_equal(x, y, err_msg=k)


def _cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(args)
        except SystemExit as exc:
            status = int(exc.code or 0)
    return status, out.getvalue(), err.getvalue()


def test_reads_what_the_store_reads(source):
    store = ndt_store.open_store(source, mode="r")
    reader = LocalReader.open(source)
    assert reader.experiments() == store.experiments() == ["run_a", "run_b", "run_c"]
    assert dict(reader.entries()) == dict(store.entries())
    for name in store.experiments():
        assert reader.metadata(name) == store.metadata(name)
        _assert_same(
            reader._phase1_arrays([name], FIELDS)[name], store._phase1_arrays([name], FIELDS)[name]
        )
    columns = ["experiment", "layer", "step", "cluster"]
    _assert_same(
        reader._table_arrays(D.JUMPS_TABLE, columns), store._table_arrays(D.JUMPS_TABLE, columns)
    )
    assert reader._table_arrays(D.JUMPS_TABLE, ["no_such_column"]) is None
    zeros = reader._table_arrays("zeros", ["n", "s"])  # chunks of the fill value are not written
    _assert_same(zeros, store._table_arrays("zeros", ["n", "s"]))
    assert zeros["n"].tolist() == [0] * 5
    assert reader._table_arrays("no_such_table", columns) is None


@pytest.mark.parametrize(
    "options",
    [{}, {"alpha": 0.01, "phase": "index"}, {"metric": "participation_ratio", "threshold": 1.0}],
)
def test_jump_columns_equal_the_store_path(source, options):
    light = store_jump_columns(LocalReader.open(source), **options)
    full = store_jump_columns(ndt_store.open_store(source, mode="r"), **options)
    _assert_same(light, full)
    assert light["experiment"].size > 0 and (light["cluster"] >= 0).any() == (
        "metric" not in options
    )


def test_ls_rows_equal_the_store_path(source, copy):
    from ndt_store.cli._store_cmds import _ls_rows

    for path in (source, copy):
        light = _ls_rows(LocalReader.open(path))
        assert light == _ls_rows(ndt_store.open_store(path, mode="r"))
    by_name = {r["experiment"]: r for r in light}
    assert by_name["run_b"]["snapshots"] == 2 and by_name["run_c"]["steps"] == "-"
    assert by_name["run_a"]["records"] == 20 and by_name["run_b"]["layers"] == 3
    status, out, _ = _cli(["ls", "--store", str(source), "--format", "json"])
    assert status == 0 and [json.loads(line) for line in out.splitlines()] == light


def test_rows_written_past_the_committed_count_stay_unseen(copy):
    """A writer writes chunks first and commits the row count last: read only committed rows."""
    entry = ndt_store.open_store(copy, mode="r").entries()["run_b"]
    doc_path = copy / "experiments" / "run_b" / entry["phase1"] / "zarr.json"
    doc = json.loads(doc_path.read_text())
    doc["attributes"]["ndt_frame"]["rows"] = 700  # of 750 written
    doc_path.write_text(json.dumps(doc))
    light = LocalReader.open(copy)._phase1_arrays(["run_b"], FIELDS)["run_b"]
    full = ndt_store.open_store(copy, mode="r")._phase1_arrays(["run_b"], FIELDS)["run_b"]
    _assert_same(light, full)
    assert light[D.STEP].shape == (700,) and light["metrics"].shape[0] == 700


def test_refuses_what_it_does_not_read(source, tmp_path):
    with pytest.raises(LayoutUnsupported, match="not a local path"):
        LocalReader.open("s3://bucket/s.zarr")
    with pytest.raises(LayoutUnsupported):
        LocalReader.open(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "plain.zarr", mode="w", zarr_format=3)  # a group, not a store
    with pytest.raises(LayoutUnsupported, match="no plain ndt_store root"):
        LocalReader.open(tmp_path / "plain.zarr")
    newer = tmp_path / "newer.zarr"
    shutil.copytree(source, newer)
    doc = json.loads((newer / "zarr.json").read_text())
    doc["attributes"]["ndt_store"]["format"] = 99
    (newer / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(LayoutUnsupported, match="format 99"):
        LocalReader.open(newer)
    with pytest.raises(LayoutUnsupported, match="no experiment"):
        LocalReader.open(source).metadata("nope")


def _frame_dir(path: Path, name: str) -> Path:
    return (
        path / "experiments" / name / ndt_store.open_store(path, mode="r").entries()[name]["phase1"]
    )


def test_a_layout_only_zarr_reads_falls_back_to_the_store(copy, source):
    """Rewrite one run's metrics with gzip: the reader steps aside, the CLI answers the same."""
    frame = zarr.open_group(_frame_dir(copy, "run_a"), mode="r+")
    values = frame["metrics"][...]
    dims = frame["metrics"].metadata.dimension_names
    frame.create_array(
        "metrics", data=values, chunks=values.shape, compressors=zarr.codecs.GzipCodec(),
        dimension_names=dims, overwrite=True,
    )  # fmt: skip
    with pytest.raises(LayoutUnsupported, match="a layout Zarr reads"):
        LocalReader.open(copy)._phase1_arrays(["run_a"], ("metrics",))
    status, out, _ = _cli(["jumps", "--store", str(copy), "--format", "csv"])
    _, want, _ = _cli(["jumps", "--store", str(source), "--format", "csv"])
    assert status == 0 and out == want


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_damaged_chunk_is_reported_by_the_store(copy, damage):
    chunks = sorted(p for p in (_frame_dir(copy, "run_b") / "metrics").rglob("*") if p.is_file()
                    and p.name != "zarr.json")  # fmt: skip
    if damage == "missing":
        chunks[0].unlink()
    else:
        chunks[0].write_bytes(chunks[0].read_bytes()[:40])
    with pytest.raises(LayoutUnsupported, match="chunk"):
        LocalReader.open(copy)._phase1_arrays(["run_b"], ("metrics",))
    status, out, err = _cli(["jumps", "--store", str(copy)])
    assert status != 0 and out == ""
    assert "metrics" in err and "chunk" in err  # the store's CorruptStoreError, naming the array


def test_unknown_and_unnormalised_names_get_the_store_answer(source):
    status, _, err = _cli(["jumps", "--store", str(source), "-e", "nope"])
    assert status != 0 and "'nope'" in err and "known: run_a, run_b, run_c" in err
