"""Probe forwards that leave training exactly as it was.

A probe forward (snapshot, probe-batch metrics, the dry run on entry) must not
change what training computes next. :func:`untouched` restores, on exit, every
buffer of the model (batch-norm running statistics and ``num_batches_tracked``
change even in a no-grad forward when the probe runs in train mode), every
module's own ``training`` flag (``model.train(was)`` would switch on modules the
user had put in eval mode) and the torch random number generators (dropout in a
train-mode probe draws from them). :func:`eager_attention` switches a Hugging Face
model to eager attention, the one implementation that returns attention weights,
and back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["eager_attention", "untouched"]


@contextmanager
def untouched(model: Any) -> Iterator[None]:
    """Run the block, then put back the model's buffers, training flags and torch RNGs.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> bn = nn.BatchNorm1d(3)
    >>> with untouched(bn), torch.no_grad():
    ...     _ = bn(torch.randn(4, 3))
    >>> bn.running_mean.tolist(), int(bn.num_batches_tracked)
    ([0.0, 0.0, 0.0], 0)
    """
    import torch

    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    cuda = sorted({b.device.index or 0 for b in model.parameters() if b.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=cuda, device_type="cuda"):
            yield
    finally:
        for m, was in modes:
            m.training = was
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def _attn_implementation(model: Any) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


def can_switch_to_eager(model: Any) -> bool:
    """Whether ``model`` is a Hugging Face model whose attention implementation can be set."""
    return callable(getattr(model, "set_attn_implementation", None)) and (
        _attn_implementation(model) is not None
    )


@contextmanager
def eager_attention(model: Any) -> Iterator[bool]:
    """Inside the block a Hugging Face model uses eager attention; restored on exit.

    Yields whether the model is a Hugging Face model (one with
    ``set_attn_implementation``); other models are left alone. Eager attention
    computes the same probabilities as SDPA, materialised (outputs agree to float
    rounding, not bit for bit).
    """
    if not can_switch_to_eager(model):
        yield False
        return
    was = _attn_implementation(model)
    if was == "eager":
        yield True
        return
    model.set_attn_implementation("eager")
    try:
        yield True
    finally:
        model.set_attn_implementation(was)
