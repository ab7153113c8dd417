"""Test helpers shipped with ndt_store: synthetic Phase 1 files and assertions."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ndt_store import _dims as D


def make_phase1_obj(
    *,
    n_records: int = 400,
    interval: int = 5,
    layers: Sequence[str] = ("fc1", "fc2", "fc3"),
    arch_name: str = "toy_mlp",
    dataset: str = "digits",
    seed: int = 0,
    jumps: Sequence[tuple[str, int, float]] = (),
) -> dict[str, Any]:
    """A Phase 1 JSON object in the study's schema with smooth series and planted jumps.

    ``jumps`` holds ``(layer, record index, size)`` step changes added to stable rank.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(n_records)
    records = []
    base = {
        layer: 2.0 + 3.0 * (1 - np.exp(-t / (50 + 10 * j))) + 1e-3 * rng.standard_normal(n_records)
        for j, layer in enumerate(layers)
    }
    for layer, index, size in jumps:
        base[layer][index:] += size
    loss = 2.3 * np.exp(-t / 120) + 0.05 + 1e-3 * rng.standard_normal(n_records)
    for i in range(n_records):
        lm = {}
        for j, layer in enumerate(layers):
            sr = float(base[layer][i])
            lm[layer] = {
                D.STABLE_RANK: sr,
                D.PARTICIPATION_RATIO: float(sr * 1.7 + 0.1 * j),
                D.EFFECTIVE_RANK_90: float(np.floor(sr * 2)),
                D.NUCLEAR_NORM_RATIO: float(np.sqrt(sr) * 1.3),
            }
        records.append(
            {
                D.STEP: int(i * interval),
                D.EPOCH: int(1 + i * interval // 500),
                D.LOSS: float(loss[i]),
                D.GRAD_NORM: float(abs(rng.standard_normal()) + 0.1),
                "layer_metrics": lm,
            }
        )
    return {
        "measurements": records,
        "architecture_params": {"depth": len(layers), "width": 32, "num_params": 1234},
        "final_accuracy": 0.9,
        "arch_name": arch_name,
        "dataset_name": dataset,
        "elapsed_time": 1.5,
        "num_steps": int(n_records * interval),
        "measurement_interval": int(interval),
    }


def write_phase1_json(path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Write :func:`make_phase1_obj` output to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(make_phase1_obj(**kwargs)))
    return path


def tree_snapshot(root: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every file under ``root`` (relative path → bytes), ignoring lock files.

    Use it to assert that a failed operation left a store byte-for-byte unchanged.
    """
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and ".locks" not in p.parts:
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


@contextmanager
def raise_if_computed() -> Iterator[None]:
    """Fail if any dask graph is computed inside the block."""
    import dask

    def scheduler(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a dask graph was computed where it should have stayed lazy")

    with dask.config.set(scheduler=scheduler):
        yield
