"""The scripts in examples/ run from start to finish."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.torch
def test_record_then_analyse(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    rec = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "record_your_model.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rec.returncode == 0, rec.stderr[-3000:]
    assert "weights:" in rec.stdout
    store = tmp_path / "runs.zarr"
    out = tmp_path / "report"
    ana = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "analyse_a_store.py"), str(store), "my_mlp",
         str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ana.returncode == 0, ana.stderr[-3000:]
    assert (out / "comparison_report.md").exists() or any(out.rglob("*.md")), ana.stdout
