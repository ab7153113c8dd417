"""Store API unit tests: modes, names, listing, delete, read-only, catalog, snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import ndt_store
from ndt_store import _dims as D
from ndt_store import store as store_module
from ndt_store._names import validate_name
from ndt_store.errors import (
    ConflictError,
    CorruptStoreError,
    ExperimentExistsError,
    InputError,
    InvalidNameError,
    NdtStoreError,
    NotFoundError,
    ReadOnlyError,
)
from ndt_store.testing import (
    make_phase1_obj,
    raise_if_computed,
    tree_snapshot,
    write_phase1_json,
)


def _rows(steps: list[int], layers: list[str], offset: float = 0.0) -> xr.Dataset:
    s = np.asarray(steps, dtype=np.float64)[:, None]
    layer = np.arange(len(layers))[None, :]
    data = {
        m: ((D.STEP, D.LAYER), s * 0.5 + layer + k + offset) for k, m in enumerate(D.PHASE1_METRICS)
    }
    data[D.LOSS] = (D.STEP, 1.0 / (1.0 + s[:, 0]))
    data[D.GRAD_NORM] = (D.STEP, s[:, 0] * 0.1)
    data[D.EPOCH] = (D.STEP, np.asarray(steps, dtype=np.int64) // 10)
    return xr.Dataset(data, coords={D.STEP: steps, D.LAYER: layers})


@pytest.fixture
def store(tmp_path: Path) -> ndt_store.Store:
    return ndt_store.open_store(tmp_path / "s.zarr")


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, dict]:
    """A store with two ingested experiments; returns (path, {name: source object})."""
    objs = {}
    for i, name in enumerate(("alpha", "beta")):
        layers = ("l1", "l2") if i == 0 else ("l2", "l3", "l4")
        write_phase1_json(tmp_path / "src" / f"{name}.json", n_records=12, seed=i, layers=layers)
        objs[name] = make_phase1_obj(n_records=12, seed=i, layers=layers)
    path = tmp_path / "s.zarr"
    ndt_store.ingest_phase1(ndt_store.open_store(path), tmp_path / "src")
    return path, objs


# ------------------------------------------------------------------------ modes
def test_modes_on_missing_store(tmp_path: Path) -> None:
    for mode in ("r", "r+"):
        with pytest.raises(NotFoundError, match="no ndt_store store"):
            ndt_store.open_store(tmp_path / "missing.zarr", mode=mode)  # type: ignore[arg-type]
    assert not (tmp_path / "missing.zarr" / "zarr.json").exists()
    s = ndt_store.open_store(tmp_path / "new.zarr", mode="w-")
    assert s.experiments() == [] and not s.read_only
    with pytest.raises(ExperimentExistsError, match="already exists"):
        ndt_store.open_store(tmp_path / "new.zarr", mode="w-")
    with pytest.raises(NdtStoreError, match="mode must be one of"):
        ndt_store.open_store(tmp_path / "new.zarr", mode="x")  # type: ignore[arg-type]


def test_mode_w_wipes_and_a_keeps(filled: tuple[Path, dict]) -> None:
    path, objs = filled
    assert ndt_store.open_store(path, mode="a").experiments() == sorted(objs)
    assert ndt_store.open_store(path, mode="r+").experiments() == sorted(objs)
    assert ndt_store.open_store(path, mode="w").experiments() == []
    assert ndt_store.open_store(path, mode="r").experiments() == []


def test_foreign_zarr_group_and_newer_format_are_refused(tmp_path: Path) -> None:
    zarr.open_group(tmp_path / "plain.zarr", mode="w").attrs["x"] = 1
    with pytest.raises(CorruptStoreError, match="not an ndt_store store"):
        ndt_store.open_store(tmp_path / "plain.zarr", mode="r")
    ndt_store.open_store(tmp_path / "future.zarr")
    zarr.open_group(tmp_path / "future.zarr", mode="r+").attrs["ndt_store"] = {"format": 99}
    with pytest.raises(NdtStoreError, match="format 99, newer"):
        ndt_store.open_store(tmp_path / "future.zarr", mode="r")


# ------------------------------------------------------------------------ names
@pytest.mark.parametrize("name", ["cnn_deep_mnist", "a.b-c", "layer 1", "ü", "x" * 200, "net.0"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "a\\b",
        "/abs",
        "C:x",
        ".hidden",
        "__dunder",
        " pad",
        "pad ",
        "x" * 201,
        "nul\x00",
        "tab\tx",
        "a*b",
        'q"',
        "a|b",
        "new\nline",
        3,
        None,
    ],
)
def test_invalid_names(name: object) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(name)


# ---------------------------------------------------------------------- listing
def test_listing_metadata_and_values(filled: tuple[Path, dict]) -> None:
    path, objs = filled
    s = ndt_store.open_store(path, mode="r")
    assert s.experiments() == ["alpha", "beta"]
    assert "alpha" in s and "gamma" not in s and 3 not in s
    meta = s.metadata("beta")
    assert meta[D.ARCH_NAME] == objs["beta"]["arch_name"]
    assert meta[D.DATASET] == objs["beta"]["dataset_name"]
    assert meta[D.NUM_STEPS] == objs["beta"]["num_steps"]
    ds = s.phase1("beta")
    assert ds[D.LAYER].values.tolist() == ["l2", "l3", "l4"]
    recs = objs["beta"]["measurements"]
    assert ds[D.STEP].values.tolist() == [r["step"] for r in recs]
    assert ds[D.INDEX].values.tolist() == list(range(len(recs)))
    assert ds[D.LOSS].values.tolist() == [r["loss"] for r in recs]
    want = [
        [r["layer_metrics"][la][D.NUCLEAR_NORM_RATIO] for la in ("l2", "l3", "l4")] for r in recs
    ]
    assert ds[D.NUCLEAR_NORM_RATIO].values.tolist() == want
    with pytest.raises(NotFoundError, match="known: alpha, beta"):
        s.phase1("gamma")


def test_record_is_nearest_with_ties_to_earlier(filled: tuple[Path, dict]) -> None:
    path, objs = filled
    s = ndt_store.open_store(path, mode="r")
    recs = objs["alpha"]["measurements"]  # steps 0, 5, 10, ...
    assert s.record("alpha", 7) == recs[1]  # 5 is nearer than 10
    assert s.record("alpha", 13) == recs[3]  # 15 is nearer than 10
    assert s.record("alpha", 10_000) == recs[-1]
    w = ndt_store.open_store(path)
    w.create_run("even", {}, ["x"])
    w.append_phase1("even", _rows([0, 4], ["x"]))
    assert w.record("even", 2)["step"] == 0  # a tie goes to the earlier record
    assert w.record("even", 3)["step"] == 4


def test_write_experiment_statuses(store: ndt_store.Store) -> None:
    a, b = _rows([0, 1, 2], ["x", "y"]), _rows([0, 1, 2], ["x", "y"], offset=1.0)
    assert store.write_experiment("e", a, {"arch_name": "m"}, content_hash="h1") == "created"
    assert store.write_experiment("e", b, {"arch_name": "m"}, content_hash="h1") == "unchanged"
    np.testing.assert_array_equal(store.phase1("e")[D.STABLE_RANK], a[D.STABLE_RANK])
    with pytest.raises(ExperimentExistsError, match="overwrite=True"):
        store.write_experiment("e", b, {"arch_name": "m"}, content_hash="h2")
    assert (
        store.write_experiment("e", b, {"arch_name": "n"}, content_hash="h2", overwrite=True)
        == "replaced"
    )
    reopened = ndt_store.open_store(store.location, mode="r")
    np.testing.assert_array_equal(reopened.phase1("e")[D.STABLE_RANK], b[D.STABLE_RANK])
    assert reopened.metadata("e") == {"arch_name": "n"}


def test_create_run_append_and_resume(store: ndt_store.Store) -> None:
    store.create_run("run", {"arch_name": "m"}, ["x", "y"])
    assert store.phase1("run").sizes == {D.STEP: 0, D.LAYER: 2}
    with pytest.raises(NotFoundError, match="no Phase 1 records"):
        store.record("run", 0)
    assert store.append_phase1("run", _rows([0, 5], ["x", "y"])) == 2
    store.create_run("run", {"arch_name": "m"}, ["x", "y"])  # resume: keeps the rows
    with pytest.raises(ExperimentExistsError, match="cannot resume"):
        store.create_run("run", {"arch_name": "m"}, ["x", "z"])
    before = tree_snapshot(store.location)
    with pytest.raises(InputError, match="steps must increase"):
        store.append_phase1("run", _rows([5, 6], ["x", "y"]))
    assert tree_snapshot(store.location) == before
    # layers may come in another order; they are matched by label
    assert store.append_phase1("run", _rows([10], ["x", "y"]).sel({D.LAYER: ["y", "x"]})) == 3
    ds = ndt_store.open_store(store.location, mode="r").phase1("run")
    want = xr.concat([_rows([0, 5], ["x", "y"]), _rows([10], ["x", "y"])], D.STEP)
    for v in (*D.PHASE1_METRICS, D.LOSS, D.GRAD_NORM, D.EPOCH):
        np.testing.assert_array_equal(ds[v].values, want[v].values)
    store.update_metadata("run", final_accuracy=0.5)
    assert ndt_store.open_store(store.location, mode="r").metadata("run") == {
        "arch_name": "m",
        "final_accuracy": 0.5,
    }


def test_append_with_wrong_layers_is_refused_unchanged(store: ndt_store.Store) -> None:
    store.create_run("run", {}, ["x", "y"])
    before = tree_snapshot(store.location)
    with pytest.raises(InputError, match="expected"):
        store.append_phase1("run", _rows([0], ["x", "q"]))
    assert tree_snapshot(store.location) == before


# ----------------------------------------------------------------------- delete
def test_delete_and_recreate(
    filled: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, objs = filled
    s = ndt_store.open_store(path)
    s.delete_experiment("alpha")
    assert s.experiments() == ["beta"]
    # kept for readers that opened it before, until the grace period is over
    assert (path / "experiments" / "alpha").exists()
    assert ndt_store.open_store(path, mode="r").experiments() == ["beta"]
    with pytest.raises(NotFoundError):
        s.delete_experiment("alpha")
    ds = s.measurements()
    assert ds[D.EXPERIMENT].values.tolist() == ["beta"]
    assert ndt_store.ingest_phase1(s, tmp_path / "src" / "alpha.json") == {"alpha": "created"}
    np.testing.assert_array_equal(
        s.phase1("alpha")[D.LOSS].values, [r["loss"] for r in objs["alpha"]["measurements"]]
    )
    s.delete_experiment("beta")
    monkeypatch.setattr(store_module, "GRACE_SECONDS", -1.0)
    assert s.collect_garbage() == 2  # beta's Phase 1 group and alpha's removed one
    assert not (path / "experiments" / "beta").exists()
    assert [p.name for p in (path / "experiments" / "alpha").iterdir() if p.is_dir()] == [
        s._entry("alpha")["phase1"]
    ]


# -------------------------------------------------------------------- read-only
def test_read_only_refuses_every_write(filled: tuple[Path, dict]) -> None:
    path, _ = filled
    s = ndt_store.open_store(path, mode="r")
    assert s.read_only
    before = tree_snapshot(path)
    attempts = [
        lambda: s.write_experiment("n", _rows([0], ["x"]), {}),
        lambda: s.create_run("n", {}, ["x"]),
        lambda: s.append_phase1("alpha", _rows([1000], ["l1", "l2"])),
        lambda: s.update_metadata("alpha", x=1),
        lambda: s.write_snapshot("alpha", 0, weights={"w": np.ones(2)}),
        lambda: s.delete_experiment("alpha"),
        lambda: s.write_table("t", __import__("pandas").DataFrame({"a": [1]})),
    ]
    for attempt in attempts:
        with pytest.raises(ReadOnlyError, match="read-only"):
            attempt()
    s.measurements().load()  # reading (even with a stale cache) writes nothing
    assert tree_snapshot(path) == before
    assert not (path / ".locks" / "n.lock").exists()


# ---------------------------------------------------------------------- catalog
def _catalog_reference(s: ndt_store.Store) -> dict[str, np.ndarray]:
    names = s.experiments()
    steps = sorted({int(x) for n in names for x in s.phase1(n)[D.STEP].values})
    layers: list[str] = []
    for n in names:
        layers += [str(x) for x in s.phase1(n)[D.LAYER].values if str(x) not in layers]
    out = np.full((len(names), len(steps), len(layers)), np.nan)
    for e, n in enumerate(names):
        ds = s.phase1(n)
        for i, st in enumerate(ds[D.STEP].values):
            for j, la in enumerate(ds[D.LAYER].values):
                out[e, steps.index(int(st)), layers.index(str(la))] = ds[D.STABLE_RANK].values[i, j]
    return {
        "names": np.asarray(names),
        "steps": np.asarray(steps),
        "layers": np.asarray(layers),
        "sr": out,
    }


def test_catalog_is_rebuilt_when_stale(filled: tuple[Path, dict]) -> None:
    path, _ = filled
    s = ndt_store.open_store(path)
    first = s.measurements()
    ref = _catalog_reference(s)
    assert first[D.LAYER].values.tolist() == ["l1", "l2", "l3", "l4"]
    np.testing.assert_array_equal(first[D.STABLE_RANK].values, ref["sr"])
    cache_attrs = json.loads((path / "_cache" / "zarr.json").read_text())["attributes"]
    old_group = cache_attrs["phase1_catalog"]["group"]
    s.create_run("gamma", {"arch_name": "g"}, ["l9"])
    s.append_phase1("gamma", _rows([1, 3], ["l9"]))
    ro = ndt_store.open_store(path, mode="r")
    before = tree_snapshot(path)
    stale_view = ro.measurements()  # read-only: built in memory, nothing written
    assert tree_snapshot(path) == before
    second = s.measurements()  # writable: rebuilt under a new name
    new_group = json.loads((path / "_cache" / "zarr.json").read_text())["attributes"][
        "phase1_catalog"
    ]["group"]
    assert new_group != old_group
    assert (path / "_cache" / old_group).exists()  # kept one generation for lazy readers
    ref = _catalog_reference(s)
    for view in (stale_view, second):
        assert view[D.EXPERIMENT].values.tolist() == ["alpha", "beta", "gamma"]
        np.testing.assert_array_equal(view[D.STEP].values, ref["steps"])
        np.testing.assert_array_equal(view[D.STABLE_RANK].values, ref["sr"])
    assert second.sel({D.EXPERIMENT: "gamma"})[D.ARCH_NAME].item() == "g"
    s.append_phase1("gamma", _rows([5], ["l9"]))
    s.measurements()  # a second rebuild keeps superseded generations within the grace period
    assert (path / "_cache" / old_group).exists()
    assert (path / "_cache" / new_group).exists()
    marked = json.loads((path / "_cache" / old_group / "zarr.json").read_text())["attributes"]
    assert isinstance(marked["superseded_at"], float)
    from ndt_store import _catalog

    grace = _catalog.GRACE_SECONDS
    try:
        _catalog.GRACE_SECONDS = -1.0  # past the grace period: the next rebuild collects them
        s.append_phase1("gamma", _rows([7], ["l9"]))
        s.measurements()
    finally:
        _catalog.GRACE_SECONDS = grace
    assert not (path / "_cache" / old_group).exists()
    assert not (path / "_cache" / new_group).exists()
    with pytest.raises(NotFoundError, match="delta"):
        s.measurements(["alpha", "delta"])


def test_refresh_sees_other_writers(filled: tuple[Path, dict]) -> None:
    path, _ = filled
    a = ndt_store.open_store(path, mode="r")
    assert a.experiments() == ["alpha", "beta"]
    b = ndt_store.open_store(path)
    b.create_run("gamma", {}, ["x"])
    assert a.experiments() == ["alpha", "beta"]  # a consistent (cached) snapshot
    assert a.phase1("gamma").sizes[D.STEP] == 0  # a miss refreshes
    a.refresh()
    assert a.experiments() == ["alpha", "beta", "gamma"]


# -------------------------------------------------------------------- snapshots
def test_snapshots_roundtrip_and_rules(store: ndt_store.Store) -> None:
    store.create_run("net", {}, ["fc1"])
    rng = np.random.default_rng(0)
    w = {s: rng.standard_normal((4, 3)).astype(np.float32) for s in (0, 10, 20)}
    act = {s: rng.standard_normal((6, 5)) for s in (0, 10)}
    labels = np.arange(6) % 2
    for step in (20, 0, 10):  # out of order on purpose
        store.write_snapshot("net", step, weights={"fc1.weight": w[step]})
    for step in (0, 10):
        assert (
            store.write_snapshot(
                "net", step, activations={"fc1": act[step]}, labels=labels, probe_hash="abc"
            )
            == "created"
        )
    assert store.snapshot_steps("net") == [0, 10, 20]
    assert store.snapshot_steps("net", D.ACTIVATIONS) == [0, 10]
    assert store.snapshot_steps("net", D.ATTENTION) == []
    weights = ndt_store.open_store(store.location, mode="r").weights("net")
    assert list(weights) == ["fc1.weight"]
    got = weights["fc1.weight"]
    assert got.dims == (D.STEP, "out", "in") and got.step.values.tolist() == [0, 10, 20]
    np.testing.assert_array_equal(got.values, np.stack([w[0], w[10], w[20]]))
    sel = store.weights("net", steps=[20])["fc1.weight"]
    np.testing.assert_array_equal(sel.values[0], w[20])
    a = store.activations("net", "fc1")
    assert a.dims == (D.STEP, D.SAMPLE, D.FEATURE) and a.attrs[D.PROBE_HASH] == "abc"
    np.testing.assert_array_equal(a[D.LABEL].values, labels)
    np.testing.assert_array_equal(a.values, np.stack([act[0], act[10]]))
    before = tree_snapshot(store.location)
    with pytest.raises(ExperimentExistsError, match="step 10"):
        store.write_snapshot("net", 10, weights={"fc1.weight": w[0]})
    with pytest.raises(InputError, match="probe batch hash"):
        store.write_snapshot("net", 30, activations={"fc1": act[0]}, probe_hash="zzz")
    with pytest.raises(InputError, match=r"\[sample, head, query, key\]"):
        store.write_snapshot("net", 30, attention={"a": np.ones((2, 3, 4))})
    with pytest.raises(InputError, match="not numeric"):
        store.write_snapshot("net", 30, weights={"w": np.asarray(["a"])})
    with pytest.raises(InputError, match="needs weights"):
        store.write_snapshot("net", 30)
    assert tree_snapshot(store.location) == before
    assert (
        store.write_snapshot("net", 10, weights={"fc1.weight": w[0]}, overwrite=True) == "replaced"
    )
    np.testing.assert_array_equal(store.weights("net")["fc1.weight"].sel(step=10).values, w[0])
    with pytest.raises(NotFoundError, match="no stored attention"):
        store.attention("net")
    with pytest.raises(NotFoundError, match="no activations for 'nope'"):
        store.activations("net", "nope")


def test_attention_has_head_labels(store: ndt_store.Store) -> None:
    store.create_run("tf", {}, ["b0"])
    p = np.random.default_rng(1).random((2, 3, 4, 4))
    p /= p.sum(-1, keepdims=True)
    store.write_snapshot("tf", 5, attention={"blk0": p})
    got = store.attention("tf", "blk0")
    assert got.dims == (D.STEP, D.SAMPLE, D.HEAD, D.QUERY, D.KEY)
    assert got[D.HEAD].values.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(got.values[0], p)


def test_writer_lock_is_exclusive_within_a_process(store: ndt_store.Store) -> None:
    store.create_run("e", {}, ["x"])
    other = ndt_store.open_store(store.location)
    with store.writer("e"):
        with store.writer("e"):  # re-entrant in the same Store object
            pass
        with pytest.raises(ConflictError, match="being written by another process"):
            other.append_phase1("e", _rows([0], ["x"]))
    assert other.append_phase1("e", _rows([0], ["x"])) == 1


def test_catalog_generation_is_opened_once_per_process(
    filled: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ndt_store import _catalog

    path, _ = filled
    opened: list[str] = []
    original = _catalog._open_arrays

    def spy(cache, group, names):  # type: ignore[no-untyped-def]
        opened.append(group)
        return original(cache, group, names)

    monkeypatch.setattr(_catalog, "_open_arrays", spy)
    s = ndt_store.open_store(path)
    first = s.measurements().load()
    again = ndt_store.open_store(path, mode="r").measurements().load()  # same generation
    assert len(opened) == 1
    xr.testing.assert_identical(first, again)
    with pytest.raises(ValueError, match="read-only"):
        again[D.STEP].values[0] = -1  # the shared coordinate values cannot be changed
    s.create_run("gamma", {"arch_name": "g"}, ["l9"])  # a new generation: opened afresh
    s.append_phase1("gamma", _rows([1, 3], ["l9"]))
    third = ndt_store.open_store(path, mode="r+").measurements()
    assert len(opened) == 2 and opened[0] != opened[1]
    assert third[D.EXPERIMENT].values.tolist() == ["alpha", "beta", "gamma"]
    np.testing.assert_array_equal(third[D.STABLE_RANK].values, _catalog_reference(s)["sr"])


def test_building_lazy_arrays_reads_no_chunk(
    filled: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ndt_store._frame import CheckedArray

    path, _ = filled
    s = ndt_store.open_store(path)
    s.write_snapshot("alpha", 0, weights={"w": np.ones((3, 2))})
    s.measurements()  # the catalog is written outside the count
    reads: list[object] = []
    original = CheckedArray.__getitem__

    def spy(self, selection):  # type: ignore[no-untyped-def]
        reads.append(selection)
        return original(self, selection)

    monkeypatch.setattr(CheckedArray, "__getitem__", spy)
    with raise_if_computed():
        ds = ndt_store.open_store(path, mode="r").measurements()
        w = s.weights("alpha")
    assert reads == []  # dask's meta comes without a read
    np.testing.assert_array_equal(np.asarray(w["w"].values)[0], np.ones((3, 2)))
    assert np.isfinite(ds[D.STABLE_RANK].values).any() and reads
