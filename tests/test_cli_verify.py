"""``ndt-store verify`` reports a healthy store as OK and a lost chunk as an error."""

from __future__ import annotations

from pathlib import Path

import ndt_store
from ndt_store.cli import main
from ndt_store.testing import write_phase1_json


def test_verify_ok_then_lost_chunk(tmp_path: Path, capsys) -> None:
    path = tmp_path / "s.zarr"
    store = ndt_store.open_store(path)
    ndt_store.ingest_phase1(store, write_phase1_json(tmp_path / "run.json", n_records=12))
    assert main(["verify", "--store", str(path)]) == 0
    assert "OK" in capsys.readouterr().out
    (chunk,) = list(path.glob("experiments/run/phase1-*/loss/c/0"))
    chunk.unlink()
    assert main(["verify", "--store", str(path)]) == 1
    out = capsys.readouterr().out
    assert "error" in out and "loss/c/0" in out
    # a read of the damaged array names it instead of returning NaN
    assert main(["show", "--store", str(path), "-e", "run", "-s", "5"]) == 1
    assert "loss" in capsys.readouterr().err
