"""Which modules to track, and scoped capture of their outputs and attention weights.

Everything here installs state on a model only inside a ``with`` block and
removes it by handle in ``finally``, exceptions included: forward hooks (module
outputs), per-instance ``forward`` wrappers of ``nn.MultiheadAttention`` (to get
per-head weights even from callers that pass ``need_weights=False``, such as
``nn.TransformerEncoderLayer``), and torch's MHA fast-path switch (the fused
encoder path never calls ``self_attn`` and would bypass the wrapper).

Captured tensors are labeled at capture time: outputs are put sample-first
(``batch_first=False`` attention modules are transposed), attention is
``(sample, head, query, key)``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from ndt_store.errors import InputError, require

__all__ = [
    "DEFAULT_LAYER_TYPES",
    "attention_modules",
    "capture_attention",
    "capture_module_attention",
    "capture_outputs",
    "module_attention_sources",
    "select_layers",
]

DEFAULT_LAYER_TYPES: tuple[str, ...] = ("Linear", "Conv1d", "Conv2d", "Conv1D")
"""Module types tracked when no layers are given (by class name, subclasses included).

Matches the study's layer sets (``input_proj``, ``transformer.layers.N.linear1`` ...,
``conv_layers.N``, ``network.N``, ``fc``) and Hugging Face ``transformers``' GPT-2
style ``Conv1D`` (a linear layer whose weight is stored ``(in, out)``). Linear modules owned by an
``nn.MultiheadAttention`` (``out_proj``) are skipped: attention calls them
functionally, so a hook on them never fires. Pass ``"MultiheadAttention"`` to also
track the attention outputs.
"""


def _torch() -> Any:
    return require("torch", "torch")


def _type_matches(module: Any, spec: type | str) -> bool:
    if isinstance(spec, str):
        return any(cls.__name__ == spec for cls in type(module).__mro__)
    return isinstance(module, spec)


def select_layers(
    model: Any, layers: Sequence[str | type] | str | type | None = None
) -> dict[str, Any]:
    """Named modules of ``model`` to track, in module order.

    Parameters
    ----------
    model
        A ``torch.nn.Module``.
    layers
        ``None`` for :data:`DEFAULT_LAYER_TYPES`; otherwise a list mixing module
        types (``nn.Linear``, or a class name such as ``"Conv2d"``) and name
        patterns (``fnmatch`` globs like ``"transformer.layers.*.linear1"`` or
        exact names). A string that names no module and has no glob characters is
        taken as a class name.

    Returns
    -------
    dict
        ``{name: module}``.

    Raises
    ------
    InputError
        If nothing matches, naming the patterns and some available modules.

    Examples
    --------
    >>> import torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> list(select_layers(m))
    ['0', '2']
    >>> list(select_layers(m, ["2"]))
    ['2']
    """
    torch = _torch()
    named = [(n, m) for n, m in model.named_modules() if n]
    owned_by_mha = {
        f"{n}.{c}"
        for n, m in named
        if isinstance(m, torch.nn.MultiheadAttention)
        for c, _ in m.named_modules()
        if c
    }
    if layers is None:
        specs: list[str | type] = list(DEFAULT_LAYER_TYPES)
    elif isinstance(layers, (str, type)):
        specs = [layers]
    else:
        specs = list(layers)
    names = {n for n, _ in named}
    out: dict[str, Any] = {}
    for name, module in named:
        for spec in specs:
            if isinstance(spec, str) and (
                spec == name or (any(c in spec for c in "*?[") and fnmatch.fnmatchcase(name, spec))
            ):
                out[name] = module
            elif (
                isinstance(spec, type)
                or (
                    isinstance(spec, str)
                    and spec not in names
                    and not any(c in spec for c in "*?[")
                )
            ) and _type_matches(module, spec):
                if name not in owned_by_mha:
                    out[name] = module
    if not out:
        sample = ", ".join(n for n, _ in named[:8])
        raise InputError(
            f"no module of {type(model).__name__} matches layers {specs!r} "
            f"(modules include: {sample})",
            field="layers",
        )
    return out


def attention_modules(model: Any) -> dict[str, Any]:
    """Every ``nn.MultiheadAttention`` of ``model``, by name.

    Examples
    --------
    >>> import torch.nn as nn
    >>> enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2)
    >>> list(attention_modules(enc))
    ['layers.0.self_attn', 'layers.1.self_attn']
    """
    torch = _torch()
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.MultiheadAttention)}


def _first_tensor(output: Any) -> Any:
    torch = _torch()
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


@contextmanager
def _forward_hooks(
    modules: Mapping[str, Any], make: Callable[[str], Callable[..., None]]
) -> Iterator[None]:
    """``make(name)`` registered as a forward hook on each module while inside."""
    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make(name)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_outputs(
    modules: Mapping[str, Any],
    *,
    transform: Callable[[str, Any, Any], Any] | None = None,
    when: Callable[[Any], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Record each module's (first) output tensor, sample axis first, while inside.

    Parameters
    ----------
    modules
        ``{name: module}`` to hook.
    transform
        Optional ``f(name, module, tensor) -> tensor`` applied to each output.
    when
        Optional ``f(module) -> bool`` checked first on every call; outputs of
        calls where it is false are not recorded (the hook then costs one call).

    Yields
    ------
    dict
        Filled during forwards: ``{name: detached output}`` (last call wins).

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(4, 3))
    >>> with capture_outputs({"0": m[0]}) as got:
    ...     _ = m(torch.zeros(2, 4))
    >>> got["0"].shape, len(m[0]._forward_hooks)
    (torch.Size([2, 3]), 0)
    """
    torch = _torch()
    got: dict[str, Any] = {}

    def make(name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            if when is not None and not when(module):
                return
            t = _first_tensor(output)
            if t is None:
                return
            t = t.detach()
            if isinstance(module, torch.nn.MultiheadAttention) and not module.batch_first:
                if t.ndim == 3:
                    t = t.transpose(0, 1)
            if transform is not None:
                t = transform(name, module, t)
            got[name] = t

        return hook

    with _forward_hooks(modules, make):
        yield got


@contextmanager
def _mha_fastpath_off() -> Iterator[None]:
    torch = _torch()
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


@contextmanager
def _patched_mha(name: str, module: Any, got: dict[str, Any]) -> Iterator[None]:
    original = module.__dict__.get("forward")
    bound = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        wanted = kwargs.get("need_weights", True)
        kwargs["need_weights"] = True
        average = kwargs.pop("average_attn_weights", True)
        out, weights = bound(*args, average_attn_weights=False, **kwargs)
        if weights is not None:
            w = weights.detach()
            if w.ndim == 3:  # unbatched input: (head, query, key)
                w = w.unsqueeze(0)
            got[name] = w
        if not wanted:
            return out, None
        if weights is not None and average:
            weights = weights.mean(dim=-3)
        return out, weights

    module.forward = forward
    try:
        yield
    finally:
        if original is None:
            del module.forward
        else:
            module.forward = original


@contextmanager
def capture_attention(modules: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Per-head attention probabilities of ``nn.MultiheadAttention`` modules while inside.

    Each module's ``forward`` is wrapped on the instance to ask for
    ``need_weights=True, average_attn_weights=False``; its callers still get what
    they asked for (``None`` weights if they passed ``need_weights=False``). The
    MHA fast path is switched off inside the block. All is restored on exit.

    Yields
    ------
    dict
        ``{name: tensor (sample, head, query, key)}`` filled during forwards.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    >>> with capture_attention({"self_attn": layer.self_attn}) as got:
    ...     _ = layer(torch.zeros(3, 5, 8))
    >>> tuple(got["self_attn"].shape), "forward" in vars(layer.self_attn)
    ((3, 2, 5, 5), False)
    """
    got: dict[str, Any] = {}
    with ExitStack() as stack:
        stack.enter_context(_mha_fastpath_off())
        for name, module in modules.items():
            stack.enter_context(_patched_mha(name, module, got))
        yield got


def module_attention_sources(model: Any) -> dict[str, Any]:
    """Attention modules other than ``nn.MultiheadAttention``, by name.

    Modules whose class name ends in ``Attention`` (``GPT2Attention``,
    ``BertSelfAttention`` ...). Hugging Face attention modules return
    ``(output, weights)``; the weights are ``(sample, head, query, key)``
    probabilities when the eager attention implementation runs (SDPA and flash
    kernels return ``None``: see :func:`ndt_store.capture.isolation.eager_attention`).

    Examples
    --------
    >>> import torch.nn as nn
    >>> class SelfAttention(nn.Module):
    ...     pass
    >>> list(module_attention_sources(nn.Sequential(SelfAttention(), nn.Linear(2, 2))))
    ['0']
    """
    torch = _torch()
    return {
        n: m
        for n, m in model.named_modules()
        if n
        and type(m).__name__.endswith("Attention")
        and not isinstance(m, torch.nn.MultiheadAttention)
    }


@contextmanager
def capture_module_attention(modules: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Attention weights returned by attention modules as ``output[1]`` while inside.

    A forward hook on each module keeps the second element of a tuple output when
    it is a 4-D tensor ``(sample, head, query, key)``. A tensor passed up unchanged
    by an enclosing module (``BertAttention`` returns what ``BertSelfAttention``
    computed) is kept once, under the innermost module: the one that produced it.

    Yields
    ------
    dict
        ``{module name: detached tensor (sample, head, query, key)}``.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> class Attention(nn.Module):
    ...     def forward(self, x):
    ...         w = torch.softmax(x @ x.transpose(-1, -2), -1)[:, None]
    ...         return x, w
    >>> m = nn.Sequential(Attention())
    >>> with capture_module_attention({"0": m[0]}) as got:
    ...     _ = m(torch.zeros(2, 3, 4))
    >>> tuple(got["0"].shape), len(m[0]._forward_hooks)
    ((2, 1, 3, 3), 0)
    """
    torch = _torch()
    got: dict[str, Any] = {}
    seen: dict[int, tuple[str, Any]] = {}  # the tensor is kept: its id stays unique

    def make(name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            if not isinstance(output, (tuple, list)) or len(output) < 2:
                return
            w = output[1]
            if not isinstance(w, torch.Tensor) or w.ndim != 4:
                return
            if id(w) in seen and seen[id(w)][0] != name:
                return  # passed up by an enclosing module
            seen[id(w)] = (name, w)
            got[name] = w.detach()

        return hook

    with _forward_hooks(modules, make):
        yield got
