"""``ndt-store estimate``: what a recording would write, before training (no store)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import sys
from typing import Any

from ndt_store.errors import InputError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_bytes(text: str) -> int:
    """``"2GiB"``, ``"500MB"``, ``"1e9"`` -> bytes.

    Examples
    --------
    >>> parse_bytes("2GiB"), parse_bytes("500 MB"), parse_bytes("1024")
    (2147483648, 500000000, 1024)
    """
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", text)
    if m is None or m.group(2).lower() not in _UNITS:
        raise InputError(f"not a size in bytes: {text!r} (e.g. 2GiB, 500MB)", field="max_bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "estimate",
        help="bytes a Recorder would write for a model and probe batch (no store needed)",
        description="Run one probe forward of the model, as the Recorder does on entry, and "
        "print the bytes a recording would write: per Phase 1 record, per snapshot (weights, "
        "activations, attention) and in all. TARGET is 'module:function' or 'file.py:function' "
        "returning (model, probe) where probe is inputs or (inputs, labels), or a Hugging Face "
        "config (config.json or a folder holding one): the model is built from the config with "
        "random weights and probed with random token ids (--batch x --seq-len).",
    )
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--batch", type=int, default=8, help="probe sequences for a config (8)")
    p.add_argument("--seq-len", type=int, default=None, help="probe length (config maximum)")
    p.add_argument("--every", type=int, default=5, help="Phase 1 interval in steps (5)")
    p.add_argument("--total-steps", type=int, default=None, metavar="N")
    p.add_argument("--snapshot-every", type=int, default=None, metavar="N")
    p.add_argument(
        "--snapshot-steps", default="", metavar="S,S,...", help="comma-separated snapshot steps"
    )
    p.add_argument("--jump-snapshots", action="store_true", help="jump-triggered snapshots on")
    p.add_argument("--max-bytes", type=parse_bytes, default=None, metavar="SIZE")
    p.add_argument("--no-attention", action="store_true")
    p.add_argument("--no-activations", action="store_true")
    p.add_argument("--no-weights", action="store_true")
    p.add_argument("--tokens", choices=("auto", "yes", "no"), default="auto")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.set_defaults(func=_estimate)


def _load_target(args: argparse.Namespace) -> tuple[Any, Any]:
    target = args.target
    config = os.path.join(target, "config.json") if os.path.isdir(target) else target
    if config.endswith(".json") and os.path.isfile(config):
        return _from_hf_config(config, args.batch, args.seq_len)
    if ":" not in target:
        raise InputError(
            f"TARGET {target!r} is neither module:function nor a config.json", field="target"
        )
    where, func = target.rsplit(":", 1)
    if where.endswith(".py"):
        if not os.path.isfile(where):
            raise InputError(f"no such file: {where}", field="target")
        spec = importlib.util.spec_from_file_location("_ndt_estimate_target", where)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    fn = getattr(module, func, None)
    if fn is None:
        raise InputError(f"{where} has no {func!r}", field="target")
    got = fn()
    if not (isinstance(got, tuple) and len(got) == 2):
        raise InputError(f"{target} must return (model, probe)", field="target")
    return got


def _from_hf_config(path: str, batch: int, seq_len: int | None) -> tuple[Any, Any]:
    from ndt_store.errors import require

    torch = require("torch", "torch")
    transformers = require("transformers", "transformers")
    config = transformers.AutoConfig.from_pretrained(os.path.dirname(os.path.abspath(path)))
    try:
        model = transformers.AutoModelForCausalLM.from_config(config)
    except ValueError:
        model = transformers.AutoModel.from_config(config)
    length = seq_len or getattr(config, "n_positions", None) or config.max_position_embeddings
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, int(length)), generator=g)
    return model, ids


def _estimate(args: argparse.Namespace) -> int:
    from ndt_store.capture import Recorder

    model, probe = _load_target(args)
    steps = [int(s) for s in args.snapshot_steps.split(",") if s.strip()]
    est = Recorder.estimate(
        model,
        probe,
        every=args.every,
        total_steps=args.total_steps,
        snapshot_every=args.snapshot_every,
        snapshot_steps=steps,
        jump_snapshots=True if args.jump_snapshots else None,
        max_bytes=args.max_bytes,
        attention=not args.no_attention,
        activations=not args.no_activations,
        weights=not args.no_weights,
        tokens={"auto": None, "yes": True, "no": False}[args.tokens],
    )
    if args.json:
        json.dump(est, sys.stdout, indent=2)
        print()
        return 0
    print(est["summary"])
    rows = [
        ("phase1 record", est["phase1_record"]),
        ("snapshot weights", est["snapshot_weights"]),
        ("snapshot activations", est["snapshot_activations"]),
        ("snapshot attention", est["snapshot_attention"]),
        ("snapshot", est["snapshot"]),
        ("snapshot on disk", est["snapshot_stored"]),
        ("total", est["total"]),
    ]
    for label, value in rows:
        print(f"{label:>22}: " + ("unknown (give --total-steps)" if value is None else f"{value}"))
    return 0
