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
    "integrations.md",
    "quickstart.md",
]


@pytest.mark.parametrize("page", RUNNABLE)
def test_doc_examples_run(page, tmp_path, monkeypatch):
    path = DOCS / page
    if not path.exists():
        pytest.fail(f"{page} is listed as runnable but missing")
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    assert blocks, f"{page} has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(path), "exec"), namespace)
