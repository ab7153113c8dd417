"""``verify`` reads chunks concurrently, reports progress, and finds the same damage."""

from __future__ import annotations

from pathlib import Path

import ndt_store
from ndt_store._integrity import VerifyProgress, verify_store
from ndt_store.cli import main
from ndt_store.synth import synth_store


def _damaged_store(tmp_path: Path) -> Path:
    path = tmp_path / "s.zarr"
    synth_store(path, experiments=2, steps=4, layers=2, records=30)
    chunks = sorted(path.glob("experiments/*/snapshots/attention/layers.0/c.*.0.0.0.0"))
    chunks[0].unlink()  # a lost snapshot chunk
    chunks[1].write_bytes(chunks[1].read_bytes()[:40])  # a truncated one
    return path


def test_concurrent_pass_finds_what_a_single_reader_finds(tmp_path: Path) -> None:
    path = _damaged_store(tmp_path)
    seen: list[VerifyProgress] = []
    many = verify_store(ndt_store.open_store(path, mode="r"), workers=8, progress=seen.append)
    one = verify_store(ndt_store.open_store(path, mode="r"), workers=1)
    assert not many.ok and many.problems == one.problems and many.checked == one.checked
    assert {p.path.split("/c.")[0].split("/")[-1] for p in many.errors} == {"layers.0"}
    assert len(many.errors) >= 2
    last = seen[-1]
    assert last.chunks_done == last.chunks_total == many.checked["chunks"]
    assert last.bytes_read > 0
    assert [p.chunks_done for p in seen] == sorted(p.chunks_done for p in seen)


def test_cli_prints_progress_lines_when_not_a_terminal(tmp_path: Path, capsys) -> None:
    path = tmp_path / "s.zarr"
    synth_store(path, experiments=1, steps=2, layers=1, records=20)
    assert main(["verify", "--store", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out
    assert err.strip().splitlines()[-1].startswith("verify: ")
    assert "chunks" in err and "MB/s" in err
    assert main(["verify", "--store", str(path), "--no-progress", "--threads", "2"]) == 0
    assert capsys.readouterr().err == ""
