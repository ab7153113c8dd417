"""What recording costs the training thread, measured while it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["WARN_SHARE", "RecordingCost"]

WARN_SHARE = 0.25
"""The Recorder warns once recording has added more than this share to the training time."""


@dataclass
class RecordingCost:
    """What recording costs the training thread, measured as it runs.

    ``seconds`` is the time spent inside :meth:`Recorder.step` (probe forwards,
    host copies, jump-state copies, and on accelerators the Phase 1 spectra, also
    counted in ``phase1_seconds``); ``training_seconds`` is the rest of the time
    between ``step()`` calls. Both count from the end of the first call that captured
    something: that one pays one-time costs (kernel and solver set-up on a GPU) and is
    kept apart in ``warmup_seconds``. Work the writer thread does beside training (the
    spectra of CPU models, every store write) is not included: on a CPU it shows only
    as slower training steps. ``share`` is ``seconds / training_seconds``.

    Examples
    --------
    >>> c = RecordingCost()
    >>> c.add_step(0.0, 0.1, captured=False)  # before the first record: not counted
    >>> c.add_step(1.0, 3.0, captured=True, phase1=1.5)  # the first record: warm-up
    >>> c.add_step(4.0, 4.5, captured=True, phase1=0.25)  # after 1 s of training
    >>> c.add_step(5.5, 6.0, captured=False)
    >>> c.share, c.seconds, c.training_seconds, c.warmup_seconds, c.records
    (0.5, 1.0, 2.0, 2.0, 1)
    """

    seconds: float = 0.0
    phase1_seconds: float = 0.0
    training_seconds: float = 0.0
    steps: int = 0
    """``step()`` calls counted (after the warm-up)."""
    records: int = 0
    """Counted calls that captured something (a Phase 1 record, a snapshot or both)."""
    phase1_records: int = 0
    """Counted calls that took a Phase 1 record."""
    warmup_seconds: float = 0.0
    """The first capturing ``step()`` call (counted in nothing else)."""
    warned: bool = False
    _last_end: float | None = None

    def add_step(
        self, start: float, end: float, *, captured: bool, phase1: float | None = None
    ) -> None:
        """Account one ``step()`` call that ran from ``start`` to ``end``.

        ``captured``: whether it stored anything; ``phase1``: the seconds of it spent on
        a Phase 1 record (``None``: it took none).
        """
        if self._last_end is None:
            if captured:  # the first record: its one-time costs are kept apart
                self.warmup_seconds = end - start
                self._last_end = end
            return
        self.training_seconds += max(0.0, start - self._last_end)
        self.seconds += end - start
        self._last_end = end
        self.steps += 1
        self.records += bool(captured)
        if phase1 is not None:
            self.phase1_seconds += phase1
            self.phase1_records += 1

    @property
    def share(self) -> float:
        """Recording time over training time (0 until there is training time)."""
        return self.seconds / self.training_seconds if self.training_seconds > 0 else 0.0

    def should_warn(self, threshold: float = WARN_SHARE, min_records: int = 3) -> bool:
        """True once (then never again) when ``share`` exceeds ``threshold``."""
        if self.warned or self.records < min_records or self.share <= threshold:
            return False
        self.warned = True
        return True

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (stored in the run's ``capture`` metadata)."""
        return {
            "recorder_seconds": round(self.seconds, 4),
            "phase1_seconds": round(self.phase1_seconds, 4),
            "training_seconds": round(self.training_seconds, 4),
            "warmup_seconds": round(self.warmup_seconds, 4),
            "steps": self.steps,
            "records": self.records,
            "phase1_records": self.phase1_records,
            "share": round(self.share, 4),
        }
