"""What the training-framework callbacks share: the recording session and gradient norms.

torch is imported inside the functions that need it; the frameworks themselves are
imported only by their own modules (:mod:`ndt_store.integrations.hf_trainer`,
:mod:`ndt_store.integrations.lightning`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from ndt_store.errors import NdtStoreError, require

log = logging.getLogger("ndt_store.integrations")

__all__ = ["GradNormHooks", "RecordingSession", "grad_norm", "loss_of"]


def grad_norm(params: Iterable[Any]) -> Any:
    """Total 2-norm (float64 tensor) of the parameters' ``.grad``; ``None`` if there are none.

    The same definition as ``torch.nn.utils.clip_grad_norm_``'s return value,
    accumulated in float64.
    """
    torch = require("torch", "torch")
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return None
    norms = torch._foreach_norm(grads)
    device = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device, torch.float64) for n in norms]))


class GradNormHooks:
    """The total gradient norm right after backward, before anything clips the gradients.

    A ``post_accumulate_grad`` hook on each parameter keeps the norm of its
    accumulated ``.grad`` after every backward pass while armed; the total is
    the 2-norm of the latest per-parameter norms, i.e. the norm of the fully
    accumulated gradients of the optimizer step (micro-batches included), as
    the training loop saw them before clipping.
    """

    def __init__(self, params: Iterable[Any]) -> None:
        self._params = [p for p in params if getattr(p, "requires_grad", False)]
        self._norms: dict[int, Any] = {}
        self._handles: list[Any] = []

    @property
    def armed(self) -> bool:
        """Whether the hooks are attached."""
        return bool(self._handles)

    def arm(self) -> None:
        """Attach the hooks (forgetting earlier norms)."""
        self.disarm()
        self._norms = {}
        for i, p in enumerate(self._params):

            def keep(param: Any, i: int = i) -> None:
                if param.grad is not None:
                    self._norms[i] = param.grad.detach().norm()

            self._handles.append(p.register_post_accumulate_grad_hook(keep))

    def disarm(self) -> None:
        """Remove the hooks (by handle)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def total(self) -> Any:
        """Total norm (float64 tensor) of the gradients seen since :meth:`arm`, or ``None``."""
        if not self._norms:
            return None
        torch = require("torch", "torch")
        norms = list(self._norms.values())
        device = norms[0].device
        return torch.linalg.vector_norm(torch.stack([n.to(device, torch.float64) for n in norms]))


def loss_of(output: Any) -> Any:
    """The ``loss`` of a model output (attribute or mapping key), else ``None``."""
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    return loss


class RecordingSession:
    """One :class:`~ndt_store.capture.Recorder` opened at train begin, closed at train end
    or on an error, with the store given as a :class:`~ndt_store.Store` or a path.

    A session still open when a new training run begins (the previous one raised and
    was never closed) is closed first, marked interrupted, so its writer lock is freed.
    """

    def __init__(self, store: Any, experiment: str, recorder_kwargs: dict[str, Any]) -> None:
        if "probe" not in recorder_kwargs:
            raise NdtStoreError(
                f"experiment {experiment!r}: pass probe= (the fixed probe batch the Recorder needs)"
            )
        self._store_arg = store
        self.experiment = experiment
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Any = None

    @property
    def every(self) -> int:
        return int(self.recorder_kwargs.get("every", 5))

    def _store(self) -> Any:
        if isinstance(self._store_arg, str | os.PathLike):
            import ndt_store

            self._store_arg = ndt_store.open_store(self._store_arg, mode="a")
        return self._store_arg

    def open(self, model: Any) -> Any:
        """Enter a Recorder on ``model`` (resuming the run if it exists)."""
        if self.recorder is not None:
            log.warning(
                "recording %r: the previous training run was not closed; closing it as interrupted",
                self.experiment,
            )
            self.close(RuntimeError("training ended without closing the recorder"))
        from ndt_store.capture import Recorder

        rec = Recorder(self._store(), self.experiment, model, **self.recorder_kwargs)
        rec.__enter__()
        self.recorder = rec
        return rec

    def close(self, exc: BaseException | None = None) -> None:
        """Close the Recorder: everything recorded is committed; ``exc`` marks it interrupted."""
        rec, self.recorder = self.recorder, None
        if rec is None:
            return
        if exc is None:
            rec.__exit__(None, None, None)
        else:
            rec.__exit__(type(exc), exc, exc.__traceback__)
