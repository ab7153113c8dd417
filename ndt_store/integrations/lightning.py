"""A PyTorch Lightning ``Callback`` that records a ``Trainer.fit`` run with the Recorder.

Importing this module imports ``lightning`` (``pip install 'ndt-store[lightning]'``);
where only the older ``pytorch_lightning`` package is installed, that one.
"""

from __future__ import annotations

import importlib
from typing import Any

from ndt_store.errors import MissingDependencyError
from ndt_store.integrations._common import RecordingSession, grad_norm, loss_of


def _callback_base() -> Any:
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name).Callback
        except ImportError:
            continue
    raise MissingDependencyError(
        "'lightning' is needed for this feature but is not installed; "
        "install it with: pip install 'ndt-store[lightning]'"
    )


__all__ = ["LightningRecorder"]


class LightningRecorder(_callback_base()):  # type: ignore[misc]
    """Record a Lightning ``Trainer.fit`` run into a store (a :class:`~ndt_store.capture.Recorder`).

    Every keyword argument after ``experiment`` is a Recorder option (``probe=``
    is required). The recorded model is the ``LightningModule`` (its ``forward``
    runs the probe), or the submodule named by ``model_attr=``. The recorded step
    is ``trainer.global_step`` after the optimizer step (1 for the first).

    * **loss**: the ``loss`` that ``training_step`` returned (mean over the
      gradient-accumulation micro-batches of the step).
    * **gradient norm**: total norm of the gradients in ``on_before_optimizer_step``,
      which Lightning calls after the backward passes (and after AMP unscaling) and
      **before** ``gradient_clip_val`` clipping: the pre-clipping norm.
    * **resume**: ``trainer.fit(model, ckpt_path=...)`` continues the same experiment.
    * **errors**: ``on_exception`` closes the run, marked ``interrupted``.

    Only the global-zero process records.
    """

    def __init__(
        self, store: Any, experiment: str, *, model_attr: str | None = None, **recorder_kwargs: Any
    ) -> None:
        super().__init__()
        self.session = RecordingSession(store, experiment, recorder_kwargs)
        self.model_attr = model_attr
        self._losses: list[Any] = []
        self._norm: Any = None
        self._last_step: int | None = None

    @property
    def recorder(self) -> Any:
        """The open :class:`~ndt_store.capture.Recorder` (``None`` outside training)."""
        return self.session.recorder

    def close(self, exc: BaseException | None = None) -> None:
        """Close the recording (``exc``: mark it interrupted)."""
        self.session.close(exc)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        model = pl_module
        for part in (self.model_attr or "").split(".") if self.model_attr else ():
            model = getattr(model, part)
        self.session.open(model)
        self._last_step = trainer.global_step
        self._losses, self._norm = [], None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.close(exception)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.recorder is not None and (trainer.global_step + 1) % self.session.every == 0:
            self._norm = grad_norm(pl_module.parameters())

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        rec = self.recorder
        if rec is None:
            return
        loss = outputs if hasattr(outputs, "detach") else loss_of(outputs)
        if loss is not None:
            self._losses.append(loss.detach())
        step = trainer.global_step
        if step == self._last_step:  # an accumulation micro-batch: no optimizer step yet
            return
        self._last_step = step
        losses, self._losses = self._losses, []
        norm, self._norm = self._norm, None
        mean = sum(losses[1:], losses[0]) / len(losses) if losses else None
        rec.step(step, loss=mean, grad_norm=norm, epoch=trainer.current_epoch)
