"""Capture during PyTorch training: the :class:`Recorder` and jump-triggered snapshots.

torch is imported only when a recorder is used, never when ``ndt_store`` is
imported. See ``docs/capture.md``.
"""

from __future__ import annotations

from ndt_store.capture.cost import RecordingCost
from ndt_store.capture.recorder import Recorder, probe_hash
from ndt_store.capture.trigger import Budget, Jump, JumpPolicy, JumpSnapshots, JumpTrigger

__all__ = [
    "Budget",
    "Jump",
    "JumpPolicy",
    "JumpSnapshots",
    "JumpTrigger",
    "Recorder",
    "RecordingCost",
    "probe_hash",
]
