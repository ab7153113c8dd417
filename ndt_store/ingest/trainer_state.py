"""Read a Trainer's ``trainer_state.json`` (loss history) and a model's ``config.json``.

``log_history`` holds one entry per logging step; the training ones carry ``loss``
(the mean loss since the previous log), ``grad_norm`` (the total gradient norm of
that step before clipping), ``learning_rate`` and ``epoch``. Evaluation entries
(``eval_loss``) and the final summary (``train_loss``) are not training records.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ndt_store import _dims as D
from ndt_store.errors import InputError

__all__ = ["LossHistory", "read_config", "read_loss_history"]


class LossHistory:
    """Training records of a ``trainer_state.json``: steps, loss, grad norm, epoch."""

    def __init__(self, source: Path, rows: list[tuple[int, float, float, int]], global_step: int):
        self.source = source
        self.rows = rows
        self.global_step = global_step

    def __len__(self) -> int:
        return len(self.rows)

    def arrays(self, after: int | None = None) -> dict[str, np.ndarray]:
        """Columns of the records with step > ``after``."""
        rows = [r for r in self.rows if after is None or r[0] > after]
        return {
            D.STEP: np.asarray([r[0] for r in rows], dtype=np.int64),
            D.LOSS: np.asarray([r[1] for r in rows], dtype=np.float64),
            D.GRAD_NORM: np.asarray([r[2] for r in rows], dtype=np.float64),
            D.EPOCH: np.asarray([r[3] for r in rows], dtype=np.int64),
        }


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(
            f"cannot read JSON ({exc.__class__.__name__}: {exc})", source=path
        ) from None


def _number(value: Any, path: Path, record: int, name: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError("not a number", source=path, record=record, field=name, value=value)
    return float(value)


def read_loss_history(path: Path) -> LossHistory:
    """The training records of ``trainer_state.json`` (increasing steps; the last wins on repeats).

    Raises
    ------
    InputError
        Not a Trainer state (no ``log_history`` list) or a malformed record.
    """
    state = _load_json(path)
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise InputError("not a Trainer state: no 'log_history' list", source=path)
    by_step: dict[int, tuple[int, float, float, int]] = {}
    for i, entry in enumerate(state["log_history"]):
        if not isinstance(entry, dict) or "loss" not in entry:
            continue  # evaluation entries and the final summary
        step = entry.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**63:
            raise InputError("not a training step", source=path, record=i, field="step", value=step)
        epoch = _number(entry.get("epoch"), path, i, "epoch")
        by_step[step] = (
            step,
            _number(entry["loss"], path, i, "loss"),
            _number(entry.get("grad_norm"), path, i, "grad_norm"),
            -1 if math.isnan(epoch) else int(epoch),
        )
    global_step = state.get("global_step")
    if isinstance(global_step, bool) or not isinstance(global_step, int):
        global_step = max(by_step, default=-1)
    return LossHistory(path, [by_step[s] for s in sorted(by_step)], int(global_step))


def read_config(path: Path) -> dict[str, Any]:
    """A model's ``config.json`` as run metadata: ``model_config`` and ``arch_name``."""
    config = _load_json(path)
    if not isinstance(config, dict):
        raise InputError("a model config must be a JSON object", source=path)
    arch = config.get("model_type")
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        arch = archs[0]
    meta: dict[str, Any] = {"model_config": config}
    if isinstance(arch, str):
        meta[D.ARCH_NAME] = arch
    return meta
