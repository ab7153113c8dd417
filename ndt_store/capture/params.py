"""How a model's state dict is stored: tied parameters once, ``(in, out)`` weights turned.

* **Tied parameters.** A state dict lists a shared tensor under every name that
  holds it (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``). It is stored
  once, under its first name; the other names are recorded as aliases and
  :meth:`ndt_store.Store.weights` serves them too.
* **``(in, out)`` weights.** Hugging Face's GPT-2 style ``Conv1D`` keeps its weight as
  ``(in, out)`` (``x @ W + b``). It is stored transposed, as ``(out, in)`` like every
  ``nn.Linear`` weight, so the store's ``out``/``in`` dims are right for all layers;
  the names of the turned weights are recorded in the run's metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["stored_state", "tied_aliases", "transposed_weights"]


def tied_aliases(state: Mapping[str, Any]) -> dict[str, str]:
    """``{alias: first name}`` for state-dict entries that share one tensor.

    Examples
    --------
    >>> import torch.nn as nn
    >>> m = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    >>> m[1].weight = m[0].weight
    >>> tied_aliases(m.state_dict())
    {'1.weight': '0.weight'}
    """
    first: dict[tuple[Any, ...], str] = {}
    out: dict[str, str] = {}
    for name, t in state.items():
        if t.numel() == 0:
            continue
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if key in first:
            out[name] = first[key]
        else:
            first[key] = name
    return out


def transposed_weights(model: Any) -> list[str]:
    """Names of 2-D weights kept as ``(in, out)``: those of ``transformers``' ``Conv1D``.

    Examples
    --------
    >>> import torch.nn as nn
    >>> transposed_weights(nn.Linear(2, 3))
    []
    """
    out = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if (
            type(module).__name__ == "Conv1D"
            and hasattr(module, "nf")
            and weight is not None
            and weight.ndim == 2
            and int(weight.shape[1]) == int(module.nf)
        ):
            out.append(f"{name}.weight" if name else "weight")
    return out


def stored_state(
    state: Mapping[str, Any], *, aliases: Mapping[str, str], transposed: set[str] | list[str]
) -> dict[str, Any]:
    """The tensors to store: aliases dropped, ``(in, out)`` weights as ``(out, in)`` views."""
    turned = set(transposed)
    return {k: (v.t() if k in turned else v) for k, v in state.items() if k not in aliases}
