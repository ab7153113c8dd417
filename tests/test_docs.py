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
# optional packages a page's examples may import: the page is skipped where one is absent
OPTIONAL = ("torch", "transformers", "lightning", "safetensors", "sklearn")


def _optional_imports(blocks: list[str]) -> list[str]:
    names = re.findall(r"^\s*(?:import|from)\s+(\w+)", "\n".join(blocks), flags=re.M)
    return sorted({n for n in names if n in OPTIONAL})


@pytest.mark.parametrize("page", RUNNABLE)
def test_doc_examples_run(page, tmp_path, monkeypatch):
    path = DOCS / page
    if not path.exists():
        pytest.fail(f"{page} is listed as runnable but missing")
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    assert blocks, f"{page} has no python example"
    if page in NEEDS_TORCH:
        pytest.importorskip("torch", reason=f"{page}'s examples train a PyTorch model")
    for module in _optional_imports(blocks):
        pytest.importorskip(module, reason=f"{page}'s examples import {module}")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(path), "exec"), namespace)
