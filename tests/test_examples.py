"""The scripts in examples/ run from start to finish."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.torch
def test_record_then_analyse(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    rec = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "record_your_model.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rec.returncode == 0, rec.stderr[-3000:]
    assert "weights:" in rec.stdout
    store = tmp_path / "runs.zarr"
    out = tmp_path / "report"
    ana = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "analyse_a_store.py"),
            str(store),
            "my_mlp",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ana.returncode == 0, ana.stderr[-3000:]
    assert (out / "comparison_report.md").exists() or any(out.rglob("*.md")), ana.stdout


@pytest.mark.parametrize("script", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_examples_take_help_and_import_no_private_module(script: Path) -> None:
    text = script.read_text()
    assert "argparse" in text
    assert not re.search(r"^\s*(from|import) ndt_store(\.\w+)*\._", text, flags=re.M), script
    assert not re.search(r"from ndt_store import _", text), script
    res = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "usage:" in res.stdout, res.stderr[-2000:]
    bare = (
        subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        if "record" not in script.name
        else None
    )
    if bare is not None:  # no arguments: a usage message, not an IndexError traceback
        assert bare.returncode == 2 and "usage:" in bare.stderr
        assert "Traceback" not in bare.stderr
