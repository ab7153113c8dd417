"""Every ``Examples`` section in the package's docstrings runs and prints what it shows.

An example that needs an optional dependency which is not installed (torch,
transformers, lightning: the newest-stack CI leg has none) is skipped with that reason.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import ndt_store
from ndt_store.errors import MissingDependencyError

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(ndt_store.__path__, "ndt_store.")
    if not m.name.endswith(".__main__")  # importing it runs the CLI
)


class _Runner(doctest.DocTestRunner):
    """Notes the optional dependencies the examples found missing."""

    missing: list[str]

    def report_unexpected_exception(self, out, test, example, exc_info):
        if issubclass(exc_info[0], (MissingDependencyError, ModuleNotFoundError)):
            self.missing.append(str(exc_info[1]))
        super().report_unexpected_exception(out, test, example, exc_info)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    try:
        module = importlib.import_module(name)
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    if not tests:
        pytest.skip(f"{name} has no docstring examples")
    runner = _Runner(optionflags=doctest.ELLIPSIS)
    runner.missing = []
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    if runner.missing:
        pytest.skip(f"{name}'s examples need what is not installed: {runner.missing[0]}")
    if result.attempted == 0:
        pytest.skip(f"{name}'s examples are all marked +SKIP")
    assert result.failed == 0, "".join(report)
