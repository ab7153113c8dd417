"""A ``transformers.TrainerCallback`` that records a ``Trainer`` run with the Recorder.

Importing this module imports ``transformers`` (``pip install 'ndt-store[hf]'``).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

from ndt_store.errors import require
from ndt_store.integrations._common import GradNormHooks, RecordingSession, loss_of

_transformers = require("transformers", "hf")

log = logging.getLogger("ndt_store.integrations")

__all__ = ["TrainerRecorder"]


class TrainerRecorder(_transformers.TrainerCallback):  # type: ignore[misc, name-defined]
    """Record a ``transformers.Trainer`` run into a store (a :class:`~ndt_store.capture.Recorder`).

    Every keyword argument after ``experiment`` is a Recorder option (``probe=``
    is required; ``every=``, ``snapshot_steps=``, ``jump_snapshots=`` ...). The
    recorded step is ``state.global_step`` after the optimizer step (1 for the
    first step), the numbering of ``checkpoint-N/`` folders and of
    ``trainer_state.json``.

    * **loss**: the ``loss`` the model returned in that step's training forwards
      (mean over gradient-accumulation micro-batches, or their sum when the Trainer
      passed ``num_items_in_batch``, as the Trainer itself adds them up);
      ``loss_from_output=`` reads it from another output layout.
    * **gradient norm**: the total norm of the accumulated gradients right after the
      last backward of the step, **before** ``max_grad_norm`` clipping (the value the
      Trainer logs as ``grad_norm``; ``on_pre_optimizer_step`` already sees clipped
      gradients, so it is read by per-parameter ``post_accumulate_grad`` hooks that
      are attached only during measurement steps). With fp16 loss scaling the norm is
      of the scaled gradients.
    * **resume**: ``trainer.train(resume_from_checkpoint=...)`` continues the same
      experiment; steps already stored are skipped (see ``Recorder``).
    * **errors**: the Trainer has no exception event, so use the callback as a context
      manager around ``trainer.train()`` (or call :meth:`close`); the run is then closed
      and marked ``interrupted``. A run left open is closed, marked interrupted, when
      the next ``train()`` begins.

    Only the main process (``state.is_world_process_zero``) records.

    Examples
    --------
    >>> from ndt_store.integrations import TrainerRecorder     # doctest: +SKIP
    >>> with TrainerRecorder(store, "gpt2_run", probe=ids[:8], every=10) as cb:  # doctest: +SKIP
    ...     Trainer(model, args, train_dataset=ds, callbacks=[cb]).train()
    """

    def __init__(
        self,
        store: Any,
        experiment: str,
        *,
        loss_from_output: Any = None,
        **recorder_kwargs: Any,
    ) -> None:
        self.session = RecordingSession(store, experiment, recorder_kwargs)
        self.loss_from_output = loss_from_output or loss_of
        self._hooks: ExitStack | None = None
        self._grad: GradNormHooks | None = None
        self._losses: list[Any] = []
        self._summed = False
        self._warned_loss = False

    @property
    def recorder(self) -> Any:
        """The open :class:`~ndt_store.capture.Recorder` (``None`` outside training)."""
        return self.session.recorder

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> TrainerRecorder:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(exc)

    def close(self, exc: BaseException | None = None) -> None:
        """Remove the hooks and close the recording (``exc``: mark it interrupted)."""
        if self._grad is not None:
            self._grad.disarm()
            self._grad = None
        if self._hooks is not None:
            self._hooks.close()
            self._hooks = None
        self.session.close(exc)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        model = kwargs["model"]
        self.close(RuntimeError("a new training run began") if self.recorder else None)
        self.session.open(model)
        self._grad = GradNormHooks(model.parameters())
        self._hooks = ExitStack()
        pre = model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        post = model.register_forward_hook(self._post_forward)
        self._hooks.callback(pre.remove)
        self._hooks.callback(post.remove)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    # ------------------------------------------------------------ per step
    def _pre_forward(self, module: Any, args: Any, kwargs: Any) -> None:
        if module.training:
            self._summed = kwargs.get("num_items_in_batch") is not None

    def _post_forward(self, module: Any, args: Any, output: Any) -> None:
        import torch

        if not (module.training and torch.is_grad_enabled()):
            return
        loss = self.loss_from_output(output)
        if loss is not None:
            self._losses.append(loss.detach() if hasattr(loss, "detach") else float(loss))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recorder is None or self._grad is None:
            return
        self._losses = []
        if (state.global_step + 1) % self.session.every == 0:
            self._grad.arm()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        rec = self.recorder
        if rec is None or self._grad is None:
            return
        norm = self._grad.total() if self._grad.armed else None
        self._grad.disarm()
        rec.step(state.global_step, loss=self._step_loss(), grad_norm=norm, epoch=_epoch(state))

    def _step_loss(self) -> Any:
        losses, self._losses = self._losses, []
        if not losses:
            if not self._warned_loss:
                self._warned_loss = True
                log.warning(
                    "the model returned no loss in its training forward; recorded losses are "
                    "missing (pass loss_from_output= to read it)"
                )
            return None
        total = sum(losses[1:], losses[0])
        return total if self._summed else total / len(losses)


def _epoch(state: Any) -> int | None:
    return None if state.epoch is None else int(state.epoch)
