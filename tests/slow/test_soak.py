"""Collects the kill soak for pytest (marked slow: ``pytest -m slow tests/slow``)."""

from __future__ import annotations

from soak_kill import test_soak_kill

__all__ = ["test_soak_kill"]
