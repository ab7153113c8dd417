"""Online jump detection and jump-triggered snapshots (no torch needed).

:class:`JumpTrigger` applies the study's published jump rule to metrics as they
arrive: the velocity is the first difference of a layer's stable rank between
consecutive records, and a record is a jump when the z-score
``|v - mean(v)| / std(v)`` (population std) of its velocity, computed over the
trailing ``window`` velocities ending at it, exceeds ``threshold``. Applied to a
whole series at once (``window`` = series length), that is exactly the offline
rule of :func:`ndt_store.measures.dynamics.detect_jumps`; the kernel used is the
same (:func:`ndt_store._kernels.dynamics.zscore`).

:class:`JumpSnapshots` keeps a ring buffer of the most recent snapshots (host
copies) and, when the trigger fires, emits a *before*, *during* and *after*
snapshot within a storage budget (:class:`Budget`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ndt_store._kernels.dynamics import zscore
from ndt_store.errors import InputError

__all__ = ["Budget", "Jump", "JumpPolicy", "JumpSnapshots", "JumpTrigger", "snapshot_nbytes"]


@dataclass(frozen=True)
class Jump:
    """A jump found online.

    Attributes
    ----------
    step
        Training step of the record at which the jump was seen (the velocity
        between the previous record and this one is the outlier).
    previous_step
        Training step of the record before it.
    layers
        Layers whose stable rank jumped at this record.
    z
        Largest z-score among ``layers``.
    """

    step: int
    previous_step: int
    layers: tuple[str, ...]
    z: float


class JumpTrigger:
    """The published z-score jump rule, evaluated online over a trailing window.

    Parameters
    ----------
    threshold
        A velocity is a jump where its z-score exceeds this (published: 2.0).
    window
        Number of trailing velocities the mean and std are taken over.
    min_velocities
        No decision before this many velocities have been seen (default: ``window``).
    cooldown
        Records after a jump during which no new jump fires.
    floor_ulps
        Noise floor: a velocity is not a jump unless it differs from the window
        mean by more than ``floor_ulps · eps · max|x|`` (float64 ``eps``), as in
        :mod:`ndt_store.measures.significance`; rounding noise on a flat or
        constant-slope series then never fires. ``0`` turns the floor off.

    Examples
    --------
    >>> trig = JumpTrigger(window=10)
    >>> series = [0.0] * 12 + [5.0] * 4
    >>> fired = [trig.update(5 * i, {"fc": x}) for i, x in enumerate(series)]
    >>> [j.step for j in fired if j]
    [60]
    """

    def __init__(
        self,
        *,
        threshold: float = 2.0,
        window: int = 20,
        min_velocities: int | None = None,
        cooldown: int = 0,
        floor_ulps: float = 1e4,
    ) -> None:
        if window < 2:
            raise InputError("window must be at least 2 velocities", field="window", value=window)
        self.threshold = float(threshold)
        self.window = int(window)
        self.min_velocities = int(window if min_velocities is None else min_velocities)
        self.cooldown = int(cooldown)
        self.floor_ulps = float(floor_ulps)
        self._values: dict[str, deque[float]] = {}
        self._last_step: int | None = None
        self._quiet = 0

    def z_scores(self, *, floored: bool = False) -> dict[str, float]:
        """Current z-score of each layer's latest velocity (NaN when undecided).

        With ``floored=True`` a deviation below the noise floor gives 0.
        """
        out = {}
        for layer, values in self._values.items():
            x = np.asarray(values, dtype=np.float64)
            v = np.diff(x)
            if v.size < max(self.min_velocities, 2):
                out[layer] = float("nan")
                continue
            z = float(zscore(v)[-1])
            if floored:
                floor = self.floor_ulps * np.finfo(np.float64).eps * float(np.max(np.abs(x)))
                if abs(v[-1] - v.mean()) <= floor:
                    z = 0.0
            out[layer] = z
        return out

    def update(self, step: int, stable_rank: Mapping[str, float]) -> Jump | None:
        """Feed one record (``{layer: stable rank}``); return a :class:`Jump` if one fires."""
        for layer, value in stable_rank.items():
            buf = self._values.setdefault(layer, deque(maxlen=self.window + 1))
            buf.append(float(value))
        previous, self._last_step = self._last_step, int(step)
        if self._quiet > 0:
            self._quiet -= 1
            return None
        z = self.z_scores(floored=True)
        hits = {k: s for k, s in z.items() if np.isfinite(s) and s > self.threshold}
        if not hits or previous is None:
            return None
        self._quiet = self.cooldown
        layers = tuple(sorted(hits, key=lambda k: -hits[k]))
        return Jump(int(step), int(previous), layers, float(max(hits.values())))


@dataclass
class Budget:
    """Storage budget for triggered snapshots: at most ``max_bytes`` and ``max_count``.

    ``None`` means unlimited. Bytes are uncompressed array bytes.

    Examples
    --------
    >>> b = Budget(max_count=3)
    >>> b.fits(100, 3), b.fits(100, 4)
    (True, False)
    """

    max_bytes: int | None = None
    max_count: int | None = None
    used_bytes: int = 0
    used_count: int = 0

    def fits(self, nbytes: int, count: int = 1) -> bool:
        """Whether ``count`` more snapshots of ``nbytes`` in all still fit."""
        if self.max_bytes is not None and self.used_bytes + nbytes > self.max_bytes:
            return False
        return self.max_count is None or self.used_count + count <= self.max_count

    def spend(self, nbytes: int, count: int = 1) -> None:
        """Record ``count`` snapshots of ``nbytes`` in all as written."""
        self.used_bytes += int(nbytes)
        self.used_count += int(count)


@dataclass(frozen=True)
class DeferredSnapshot:
    """A snapshot made only if it is emitted: the model state at ``step``, kept aside.

    The :class:`~ndt_store.capture.Recorder` feeds these to :class:`JumpSnapshots`
    instead of full snapshots: a copy of the weights costs a memory copy, while
    activations and attention would cost a probe forward at every measurement. An
    emitted one is turned into a full snapshot by loading ``state`` back into the
    model for one probe forward (on the training thread).

    Parameters
    ----------
    step
        Training step the state belongs to.
    state
        The model's ``state_dict()`` at ``step`` (host copies of its tensors).
    nbytes
        Size of the full snapshot it stands for (what the budget counts).
    """

    step: int
    state: Mapping[str, Any]
    nbytes: int


def snapshot_nbytes(snapshot: Mapping[str, Any] | DeferredSnapshot) -> int:
    """Bytes of every array in a (possibly nested) mapping of arrays.

    A :class:`DeferredSnapshot` counts as the full snapshot it stands for.
    """
    if isinstance(snapshot, DeferredSnapshot):
        return int(snapshot.nbytes)
    total = 0
    for value in snapshot.values():
        if isinstance(value, Mapping):
            total += snapshot_nbytes(value)
        elif hasattr(value, "nbytes"):
            total += int(value.nbytes)
    return total


@dataclass
class _Event:
    jump: Jump
    after_index: int
    share: int
    reserved: int
    info: dict[str, Any] = field(default_factory=dict)


class JumpSnapshots:
    """Ring buffer of recent snapshots that emits before/during/after around jumps.

    Feed it every measurement record with :meth:`observe`. When the trigger fires
    at record ``c`` (the velocity between records ``c-1`` and ``c`` is the
    outlier) it emits, through ``write(step, snapshot, info)``:

    * *before*: the snapshot ``before`` records before ``c`` (1 = the last record
      before the jump), taken from the ring buffer,
    * *during*: the snapshot at record ``c``,
    * *after*: the snapshot ``after`` records later (emitted when it arrives).

    An event is taken only if all of its snapshots fit the :class:`Budget`
    (sized from the current snapshot and reserved up front), so the budget is
    never exceeded and no taken event lacks its *after*. Jumps seen while an
    event waits for its *after* are merged into it; steps already emitted (or
    marked stored) are not emitted again.

    Parameters
    ----------
    write
        Called with ``(step, snapshot, info)`` for each snapshot to store.
    trigger
        The online detector (default :class:`JumpTrigger` with its defaults).
    budget
        Storage budget (default unlimited).
    before, after
        Record offsets of the *before* and *after* snapshots.

    Examples
    --------
    >>> import numpy as np
    >>> out = []
    >>> js = JumpSnapshots(lambda s, snap, info: out.append((s, info["role"])),
    ...                    trigger=JumpTrigger(window=8), budget=Budget(max_count=3))
    >>> for i, x in enumerate([0.0] * 10 + [4.0] * 6):
    ...     _ = js.observe(i, {"fc": x}, {"w": np.zeros(2)})
    >>> out
    [(9, 'before'), (10, 'during'), (12, 'after')]
    """

    def __init__(
        self,
        write: Callable[[int, Any, dict[str, Any]], None],
        *,
        trigger: JumpTrigger | None = None,
        budget: Budget | None = None,
        before: int = 1,
        after: int = 2,
    ) -> None:
        if before < 1 or after < 1:
            raise InputError("before and after must be at least 1 record")
        self.write = write
        self.trigger = trigger or JumpTrigger()
        self.budget = budget or Budget()
        self.before = int(before)
        self.after = int(after)
        self._ring: deque[tuple[int, Any]] = deque(maxlen=self.before + 1)
        self._pending: _Event | None = None
        self._count = 0
        self._emitted: set[int] = set()
        self.jumps: list[Jump] = []
        """Every jump the trigger fired (taken, merged or skipped)."""
        self.skipped: list[Jump] = []
        """Jumps not snapshotted because the budget was exhausted."""
        self.written: list[tuple[int, str]] = []
        """``(step, role)`` of every snapshot emitted."""

    def mark_stored(self, steps: Sequence[int]) -> None:
        """Steps already stored elsewhere (e.g. scheduled snapshots); never re-emitted."""
        self._emitted.update(int(s) for s in steps)

    def mark_stored_one(self, step: int) -> None:
        """One step stored elsewhere (callback form of :meth:`mark_stored`)."""
        self._emitted.add(int(step))

    def _emit(self, step: int, snap: Any, role: str, ev: _Event) -> None:
        if step in self._emitted or ev.reserved <= 0:
            return
        nbytes = snapshot_nbytes(snap)
        # swap this snapshot's reserved share for its real size
        ev.reserved -= 1
        self.budget.spend(-ev.share, -1)
        if not self.budget.fits(nbytes):
            return
        self.budget.spend(nbytes)
        self._emitted.add(step)
        self.written.append((step, role))
        self.write(step, snap, {"trigger": "jump", "role": role, **ev.info})

    def _release(self, ev: _Event) -> None:
        self.budget.spend(-ev.share * ev.reserved, -ev.reserved)
        ev.reserved = 0

    def observe(
        self,
        step: int,
        stable_rank: Mapping[str, float],
        snapshot: Mapping[str, Any] | DeferredSnapshot,
    ) -> Jump | None:
        """Feed one record (``{layer: stable rank}``) and its snapshot; emit as needed.

        ``snapshot`` is a mapping of arrays or a :class:`DeferredSnapshot`; it is
        passed to ``write`` as it is.

        Returns the :class:`Jump` that fired at this record, if any.
        """
        step = int(step)
        self._ring.append((step, snapshot))
        self._count += 1
        jump = self.trigger.update(step, stable_rank)
        if jump is not None:
            self.jumps.append(jump)
        ev = self._pending
        if ev is not None and self._count >= ev.after_index:
            self._emit(step, snapshot, "after", ev)
            self._release(ev)
            self._pending = ev = None
        if jump is None or ev is not None:
            return jump
        before_step, before_snap = self._ring[0]
        steps = {before_step, step} - self._emitted
        n_new = len(steps) + 1  # + the *after*
        share = snapshot_nbytes(snapshot)
        if not self.budget.fits(share * n_new, n_new):
            self.skipped.append(jump)
            return jump
        self.budget.spend(share * n_new, n_new)
        ev = _Event(
            jump,
            self._count + self.after,
            share,
            n_new,
            {
                "jump_step": jump.step,
                "jump_layers": ",".join(jump.layers),
                "jump_z": round(jump.z, 6),
            },
        )
        if before_step != step:
            self._emit(before_step, before_snap, "before", ev)
        self._emit(step, snapshot, "during", ev)
        self._pending = ev
        return jump

    def close(self) -> None:
        """Give back the reservation of an event still waiting for its *after*."""
        if self._pending is not None:
            self._release(self._pending)
            self._pending = None


@dataclass(frozen=True)
class JumpPolicy:
    """Settings of jump-triggered snapshots for :class:`~ndt_store.capture.Recorder`.

    Parameters
    ----------
    threshold, window, cooldown, floor_ulps
        Passed to :class:`JumpTrigger` (``window`` and ``cooldown`` in records).
    before, after
        Record offsets of the *before*/*after* snapshots (see :class:`JumpSnapshots`).
    max_bytes, max_count
        The storage budget of triggered snapshots (``None``: unlimited).

    Examples
    --------
    >>> JumpPolicy(max_count=9).max_count
    9
    """

    threshold: float = 2.0
    window: int = 20
    cooldown: int = 0
    floor_ulps: float = 1e4
    before: int = 1
    after: int = 2
    max_bytes: int | None = None
    max_count: int | None = 12

    def build(self, write: Callable[[int, Any, dict[str, Any]], None]) -> JumpSnapshots:
        """A :class:`JumpSnapshots` with these settings writing through ``write``."""
        return JumpSnapshots(
            write,
            trigger=JumpTrigger(
                threshold=self.threshold,
                window=self.window,
                cooldown=self.cooldown,
                floor_ulps=self.floor_ulps,
            ),
            budget=Budget(max_bytes=self.max_bytes, max_count=self.max_count),
            before=self.before,
            after=self.after,
        )
