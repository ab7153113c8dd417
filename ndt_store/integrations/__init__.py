"""Callbacks that record runs of training frameworks with the :class:`~ndt_store.capture.Recorder`.

* :class:`TrainerRecorder` — a ``transformers.TrainerCallback``
  (``pip install 'ndt-store[hf]'``);
* :class:`LightningRecorder` — a PyTorch Lightning ``Callback``
  (``pip install 'ndt-store[lightning]'``).

Each framework is imported on first use of its callback, never by ``import
ndt_store`` or ``import ndt_store.integrations``; when it is missing, the
:class:`~ndt_store.errors.MissingDependencyError` says how to install it.
See ``docs/integrations.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LightningRecorder", "TrainerRecorder"]

_WHERE = {
    "TrainerRecorder": "ndt_store.integrations.hf_trainer",
    "LightningRecorder": "ndt_store.integrations.lightning",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
