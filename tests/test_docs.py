"""Python examples in the docs run (each page's blocks in order, one namespace per page)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
RUNNABLE = [
    "data-model.md",
    "user-guide.md",
    "extending.md",
    "legacy-api.md",
    "analysis.md",
    "dynamics.md",
    "guarantees.md",
    "capture.md",
    "recording-real-models.md",
    "integrations.md",
    "quickstart.md",
    "measurements.md",
]
NEEDS_TORCH = {"capture.md", "quickstart.md"}  # their examples train a model


@pytest.mark.parametrize("page", RUNNABLE)
def test_doc_examples_run(page, tmp_path, monkeypatch):
    path = DOCS / page
    if not path.exists():
        pytest.fail(f"{page} is listed as runnable but missing")
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    assert blocks, f"{page} has no python example"
    if page in NEEDS_TORCH:
        pytest.importorskip("torch", reason=f"{page}'s examples train a PyTorch model")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(path), "exec"), namespace)
