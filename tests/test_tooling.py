"""The package stays ruff-clean and type-checks (STYLE: ruff + mypy on the package)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (it is in the 'test' extra)")
    lint = subprocess.run(["ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(["ruff", "format", "--check", "."], cwd=ROOT, capture_output=True,
                         text=True)  # fmt: skip
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_package():
    pytest.importorskip("mypy")
    run = subprocess.run([sys.executable, "-m", "mypy", "ndt_store"], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:]
