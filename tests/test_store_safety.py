"""Nothing lost, nothing falsely corrupt: one test per reproduction of a past defect.

Each test reproduces a case that once lost data, reported a healthy store as
corrupt, wrote into something that was not a store, or ended in a traceback
instead of a one-line error (see ``docs/guarantees.md``).
"""

from __future__ import annotations

import errno
import json
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import ndt_store
from ndt_store import _dims as D
from ndt_store import store as store_module
from ndt_store.cli import main
from ndt_store.errors import InputError, InvalidNameError, NdtStoreError
from ndt_store.testing import make_phase1_obj, tree_snapshot, write_phase1_json


def _rows(steps: list[int], layers: list[str]) -> xr.Dataset:
    n, k = len(steps), len(layers)
    data: dict[str, Any] = {
        m: ((D.STEP, D.LAYER), np.full((n, k), float(i))) for i, m in enumerate(D.PHASE1_METRICS)
    }
    data[D.LOSS] = (D.STEP, np.asarray(steps, dtype=float))
    return xr.Dataset(data, coords={D.STEP: steps, D.LAYER: layers})


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ndt-store: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- 1. stale writers
def test_stale_store_object_never_erases_another_writers_snapshot(tmp_path: Path) -> None:
    p = tmp_path / "s.zarr"
    a, b = ndt_store.open_store(p), ndt_store.open_store(p)
    a.create_run("e", {}, ["x"])
    assert b.snapshot_steps("e") == []  # b caches the entry
    assert a.write_snapshot("e", 1, weights={"w": np.ones(3)}) == "created"
    assert b.write_snapshot("e", 2, weights={"w": np.full(3, 2.0)}) == "created"
    fresh = ndt_store.open_store(p, mode="r")
    assert fresh.snapshot_steps("e") == [1, 2]
    np.testing.assert_array_equal(fresh.weights("e")["w"].values, [[1, 1, 1], [2, 2, 2]])
    # b's own view after writing includes what a committed before
    assert b.snapshot_steps("e") == [1, 2]


def test_stale_append_and_metadata_keep_other_writers_work(tmp_path: Path) -> None:
    p = tmp_path / "s.zarr"
    a, b = ndt_store.open_store(p), ndt_store.open_store(p)
    a.create_run("e", {"arch_name": "m"}, ["x"])
    b.metadata("e")  # b caches the entry
    a.write_snapshot("e", 10, weights={"w": np.ones(2)})
    a.update_metadata("e", dataset="mnist")
    b.append_phase1("e", _rows([0, 1], ["x"]))  # once wrote back b's cached entry
    b.update_metadata("e", num_steps=2)
    c = ndt_store.open_store(p, mode="r")
    assert c.snapshot_steps("e") == [10]
    assert c.metadata("e") == {"arch_name": "m", "dataset": "mnist", "num_steps": 2}
    assert c.phase1("e")[D.STEP].values.tolist() == [0, 1]
    assert ndt_store.verify_store(c).ok


# ------------------------------------------------------------ 2. growing snapshots
def test_column_added_after_the_first_row_reads_as_missing(tmp_path: Path) -> None:
    p = tmp_path / "s.zarr"
    s = ndt_store.open_store(p)
    s.create_run("run", {}, [])
    s.write_snapshot("run", 100, weights={"fc.weight": np.ones((2, 3), np.float32)})
    s.write_snapshot(
        "run",
        200,
        weights={
            "fc.weight": np.full((2, 3), 2, np.float32),
            "head.weight": np.full((4, 2), 5, np.float32),
        },
    )
    s.write_snapshot(
        "run",
        300,
        weights={"fc.weight": np.zeros((2, 3), np.float32)},
        activations={"fc": np.ones((5, 3), np.float32)},
    )
    report = ndt_store.verify_store(ndt_store.open_store(p, mode="r"))
    assert report.ok, report.problems
    r = ndt_store.open_store(p, mode="r")
    head = r.weights("run")["head.weight"]
    assert head.step.values.tolist() == [100, 200, 300]
    assert np.isnan(head.sel(step=100).values).all()
    assert np.isnan(head.sel(step=300).values).all()
    np.testing.assert_array_equal(head.sel(step=200).values, np.full((4, 2), 5))
    assert r.activations("run", "fc").step.values.tolist() == [300]
    np.testing.assert_array_equal(r.activations("run", "fc").values[0], np.ones((5, 3)))


def test_checkpoints_gaining_a_parameter_verify_clean(tmp_path: Path, capsys: Any) -> None:
    torch = pytest.importorskip("torch")
    src = tmp_path / "ckpt"
    src.mkdir()
    torch.save({"fc.weight": torch.ones(2, 3)}, src / "checkpoint_step_100.pt")
    torch.save(
        {"fc.weight": torch.ones(2, 3), "head.weight": torch.ones(4, 2)},
        src / "checkpoint_step_200.pt",
    )
    store = str(tmp_path / "s.zarr")
    assert main(["ingest", "checkpoints", str(src), "--store", store, "-e", "run"]) == 0
    assert main(["verify", "--store", store]) == 0
    capsys.readouterr()
    w = ndt_store.open_store(store, mode="r").weights("run")
    assert np.isnan(w["head.weight"].sel(step=100).values).all()
    np.testing.assert_array_equal(w["head.weight"].sel(step=200).values, np.ones((4, 2)))


# --------------------------------------------------- 3. readers during replace/remove
def test_reader_opened_before_replace_and_remove_reads_old_data(tmp_path: Path) -> None:
    p = tmp_path / "s.zarr"
    w = ndt_store.open_store(p)
    for name in ("e0", "e1"):
        w.write_experiment(name, _rows([0, 1, 2], ["x"]), {"arch_name": name}, content_hash=name)
    w.write_snapshot("e1", 5, weights={"w": np.arange(4.0)})
    reader = ndt_store.open_store(p, mode="r")
    assert reader.experiments() == ["e0", "e1"]  # the reader's consistent snapshot
    lazy = reader.weights("e1")["w"]  # a lazy array opened before the removal
    new = _rows([0, 1], ["x"]) * 0 + 7
    assert w.write_experiment("e0", new, {}, content_hash="new", overwrite=True) == "replaced"
    w.delete_experiment("e1")
    # the old groups are still there for the reader: no CorruptStoreError
    assert reader.phase1("e0")[D.LOSS].values.tolist() == [0.0, 1.0, 2.0]
    assert reader.phase1("e1")[D.STEP].values.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(lazy.values, [np.arange(4.0)])
    assert reader.measurements()[D.LOSS].sizes[D.EXPERIMENT] == 2
    # a fresh reader sees the new state, and the store verifies clean
    fresh = ndt_store.open_store(p, mode="r")
    assert fresh.experiments() == ["e0"]
    assert fresh.phase1("e0")[D.LOSS].values.tolist() == [7.0, 7.0]
    assert ndt_store.verify_store(fresh).ok


def test_superseded_groups_are_collected_after_the_grace_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "s.zarr"
    w = ndt_store.open_store(p)
    w.write_experiment("e", _rows([0], ["x"]), {}, content_hash="1")
    w.write_snapshot("e", 1, weights={"w": np.ones(2)})
    w.delete_experiment("e")
    w.write_experiment("e", _rows([0], ["x"]), {}, content_hash="2")  # same name, in grace
    w.write_snapshot("e", 2, weights={"w": np.zeros(2)})
    assert ndt_store.open_store(p, mode="r").snapshot_steps("e") == [2]
    assert len([d for d in (p / "experiments" / "e").iterdir() if d.is_dir()]) == 4
    monkeypatch.setattr(store_module, "GRACE_SECONDS", -1.0)
    assert w.collect_garbage() == 2
    left = sorted(d.name for d in (p / "experiments" / "e").iterdir() if d.is_dir())
    entry = ndt_store.open_store(p, mode="r")._entry("e")
    assert left == sorted([entry["phase1"], entry["snapshot_frame"]])
    assert ndt_store.verify_store(ndt_store.open_store(p, mode="r")).ok
    np.testing.assert_array_equal(
        ndt_store.open_store(p, mode="r").weights("e")["w"].values, [[0.0, 0.0]]
    )


# ------------------------------------------------------------------ 4. foreign data
def test_zarr_v2_dataset_is_refused_and_left_untouched(tmp_path: Path, capsys: Any) -> None:
    target = tmp_path / "plain2.zarr"
    xr.Dataset({"v": ("t", np.arange(5.0))}).to_zarr(target, zarr_format=2)
    before = tree_snapshot(target)
    src = write_phase1_json(tmp_path / "run.json", n_records=5)
    assert main(["ingest", "phase1", str(src), "--store", str(target)]) == 1
    _one_line_error(capsys, "Zarr v2", "nothing was written")
    assert tree_snapshot(target) == before
    assert list(xr.open_zarr(target, zarr_format=2).data_vars) == ["v"]


@pytest.mark.parametrize("mode", ["a", "w", "w-", "r+"])
def test_non_empty_location_is_never_written(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "notes"
    target.mkdir()
    (target / "readme.txt").write_text("mine")
    with pytest.raises(NdtStoreError):
        ndt_store.open_store(target, mode=mode)  # type: ignore[arg-type]
    assert tree_snapshot(target) == {"readme.txt": b"mine"}


def test_creation_killed_while_writing_the_root_is_finished(tmp_path: Path) -> None:
    """A process killed while zarr wrote the root metadata leaves only its temporary file
    (``zarr.<hex>.partial``): the next ``open_store`` creates the store there. Seen by
    ``test_sigkill_at_random_instants`` (a kill at the first instant of a run)."""
    target = tmp_path / "s.zarr"
    target.mkdir()
    (target / "zarr.0123456789abcdef0123456789abcdef.partial").write_bytes(b'{"zarr_for')
    store = ndt_store.open_store(target)
    store.create_run("e", {}, [])
    assert ndt_store.open_store(target, mode="r").experiments() == ["e"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "zarr.json.partial").write_text("not zarr's")  # not zarr's temporary name
    with pytest.raises(NdtStoreError, match="not empty"):
        ndt_store.open_store(other)


def test_mode_w_refuses_a_plain_zarr_v3_group(tmp_path: Path) -> None:
    target = tmp_path / "plain3.zarr"
    xr.Dataset({"v": ("t", np.arange(3.0))}).to_zarr(target, zarr_format=3, consolidated=False)
    before = tree_snapshot(target)
    with pytest.raises(NdtStoreError, match="not an ndt_store store"):
        ndt_store.open_store(target, mode="w")
    assert tree_snapshot(target) == before


# ------------------------------------------------------------------------- 6. names
def test_parameter_named_zarr_json_is_refused(tmp_path: Path) -> None:
    s = ndt_store.open_store(tmp_path / "s.zarr")
    s.create_run("e", {}, [])
    before = tree_snapshot(s.location)
    for bad in ("zarr.json", "ZARR.JSON", "c"):
        with pytest.raises(InvalidNameError, match="reserved"):
            s.write_snapshot("e", 1, weights={bad: np.ones(2)})
    assert tree_snapshot(s.location) == before


def test_experiment_named_zarr_json_is_a_one_line_error(tmp_path: Path, capsys: Any) -> None:
    src = tmp_path / "src"
    write_phase1_json(src / "zarr.json.json", n_records=4)  # experiment name: file stem
    store = tmp_path / "s.zarr"
    assert main(["ingest", "phase1", str(src / "zarr.json.json"), "--store", str(store)]) == 1
    _one_line_error(capsys, "reserved")
    assert not store.exists()  # a failed command leaves nothing behind


def test_long_names_are_refused_with_the_limit(tmp_path: Path, capsys: Any) -> None:
    s = ndt_store.open_store(tmp_path / "s.zarr")
    name = "é" * 126  # 252 bytes: the lock file name would be too long
    with pytest.raises(InvalidNameError, match="limit of 200"):
        s.create_run(name, {}, ["x"])
    src = write_phase1_json(tmp_path / ("r" * 230 + ".json"), n_records=3)
    assert main(["ingest", "phase1", str(src), "--store", s.location]) == 1
    _one_line_error(capsys, "limit of 200")
    assert s.experiments() == []
    s.create_run("é" * 100, {}, ["x"])  # 200 bytes fit, lock file included
    assert s.experiments() == ["é" * 100]


def test_nfc_and_nfd_names_are_one_experiment(tmp_path: Path) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    s = ndt_store.open_store(tmp_path / "s.zarr")
    s.create_run(nfc, {"arch_name": "m"}, ["x"])
    s.create_run(nfd, {"arch_name": "m"}, ["x"])  # resumes the same run
    s.write_snapshot(nfd, 1, weights={unicodedata.normalize("NFD", "poids.é"): np.ones(2)})
    r = ndt_store.open_store(s.location, mode="r")
    assert r.experiments() == [nfc]
    assert nfd in r and r.snapshot_steps(nfd) == [1]
    assert list(r.weights(nfc)) == [unicodedata.normalize("NFC", "poids.é")]


# ------------------------------------------------------------------- 7. symlinks
def test_rm_never_follows_a_symlink_out_of_the_store(tmp_path: Path, capsys: Any) -> None:
    p = tmp_path / "s.zarr"
    s = ndt_store.open_store(p)
    s.write_experiment("e", _rows([0, 1], ["x"]), {}, content_hash="h")
    outside = tmp_path / "elsewhere"
    shutil.move(str(p / "experiments" / "e"), outside)
    (p / "experiments" / "e").symlink_to(outside, target_is_directory=True)
    before = tree_snapshot(outside)
    assert main(["rm", "--store", str(p), "-e", "e"]) == 1
    _one_line_error(capsys, "symbolic link")
    assert tree_snapshot(outside) == before
    assert (p / "experiments" / "e").is_symlink()


# --------------------------------------------------------------- 9. one-line errors
def test_disk_full_is_a_one_line_error_and_commits_nothing(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zarr.storage._local as zlocal

    store = tmp_path / "s.zarr"
    s = ndt_store.open_store(store)
    ndt_store.ingest_phase1(s, write_phase1_json(tmp_path / "a" / "keep.json", n_records=5))
    real = zlocal._put

    def full(path: Path, value: Any, exclusive: bool = False) -> int:
        if "victim" in str(path) and "/c/" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, value, exclusive)

    monkeypatch.setattr(zlocal, "_put", full)
    src = write_phase1_json(tmp_path / "b" / "victim.json", n_records=5)
    assert main(["ingest", "phase1", str(src), "--store", str(store)]) == 1
    _one_line_error(capsys, "no space left", "nothing was committed")
    monkeypatch.undo()
    r = ndt_store.open_store(store, mode="r")
    assert r.experiments() == ["keep"]
    assert ndt_store.verify_store(r).ok
    monkeypatch.setattr(zlocal, "_put", full)
    with pytest.raises(NdtStoreError, match="no space left") as info:  # StorageError
        ndt_store.ingest_phase1(ndt_store.open_store(store), src)
    assert isinstance(info.value, OSError)


def test_permission_denied_is_a_one_line_error(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zarr.storage._local as zlocal

    store = tmp_path / "s.zarr"
    ndt_store.open_store(store)

    def denied(path: Path, value: Any, exclusive: bool = False) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(zlocal, "_put", denied)  # root ignores chmod: simulate a read-only dir
    src = write_phase1_json(tmp_path / "run.json", n_records=5)
    assert main(["ingest", "phase1", str(src), "--store", str(store)]) == 1
    _one_line_error(capsys, "permission denied", "mode='r'")
    assert main(["ingest", "phase1", str(src), "--store", str(tmp_path / "new.zarr")]) == 1
    _one_line_error(capsys, "permission denied")


def test_store_path_that_is_a_file_is_a_one_line_error(tmp_path: Path, capsys: Any) -> None:
    f = tmp_path / "results.csv"
    f.write_text("a,b\n1,2\n")
    src = write_phase1_json(tmp_path / "run.json", n_records=5)
    assert main(["ingest", "phase1", str(src), "--store", str(f)]) == 1
    _one_line_error(capsys, "is a file")
    assert main(["ls", "--store", str(f)]) == 1
    _one_line_error(capsys, "is a file")
    assert f.read_text() == "a,b\n1,2\n"


def test_deeply_nested_json_is_an_input_error(tmp_path: Path, capsys: Any) -> None:
    obj = make_phase1_obj(n_records=3)
    text = json.dumps(obj)
    nested = "[" * 100_000 + "]" * 100_000
    bad = tmp_path / "deep.json"
    bad.write_text(text[:-1] + ', "extra": ' + nested + "}")
    with pytest.raises(InputError, match="nested too deeply"):
        ndt_store.ingest_phase1(ndt_store.open_store(tmp_path / "s.zarr"), bad)
    assert main(["ingest", "phase1", str(bad), "--store", str(tmp_path / "s.zarr")]) == 1
    _one_line_error(capsys, "deep.json", "nested too deeply")


def test_cross_experiment_view_while_a_writer_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records appended between the view's two reads are left out, never misplaced."""
    from ndt_store import _catalog

    p = tmp_path / "s.zarr"
    w = ndt_store.open_store(p)
    w.create_run("a", {}, ["x"])
    w.create_run("b", {}, ["x"])
    w.append_phase1("a", _rows([0, 1], ["x"]))
    w.append_phase1("b", _rows([0, 5], ["x"]))
    reader = ndt_store.open_store(p, mode="r")
    layout = _catalog._layout

    def racing(store: Any) -> Any:
        out = layout(store)
        w.append_phase1("a", _rows([3, 5, 9], ["x"]))  # lands between the two reads
        return out

    monkeypatch.setattr(_catalog, "_layout", racing)
    ds = reader.measurements()
    assert ds[D.STEP].values.tolist() == [0, 1, 5]
    np.testing.assert_array_equal(ds[D.LOSS].values, [[0, 1, 5], [0, np.nan, 5]])
