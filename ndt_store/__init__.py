"""ndt_store: labeled Zarr storage and vectorized measurements of training dynamics.

Examples
--------
>>> import tempfile, ndt_store
>>> store = ndt_store.open_store(tempfile.mkdtemp() + "/runs.zarr")
>>> store.experiments()
[]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ndt_store._version import __version__
from ndt_store.errors import (
    ConflictError,
    CorruptStoreError,
    ExperimentExistsError,
    InputError,
    InvalidNameError,
    MissingDependencyError,
    NdtStoreError,
    NotFoundError,
    ReadOnlyError,
    RemoteStoreError,
    StorageError,
    UnsafeCheckpointError,
)

if TYPE_CHECKING:  # the names as static type checkers see them; loaded lazily at run time
    from ndt_store._integrity import IntegrityReport, verify_store
    from ndt_store.capture import JumpPolicy, Recorder
    from ndt_store.cluster import use_scheduler
    from ndt_store.compare import compare_representations
    from ndt_store.ingest.checkpoints import ingest_checkpoints, ingest_state_dict
    from ndt_store.ingest.phase1 import export_phase1_json, ingest_phase1, read_phase1_json
    from ndt_store.ingest.tables import ingest_tables
    from ndt_store.measures.activations import activation_selectivity, activation_sparsity
    from ndt_store.measures.attention import attention_entropy, attention_specialization
    from ndt_store.measures.dimensionality import (
        dimensionality_metrics,
        effective_rank_90,
        nuclear_norm_ratio,
        participation_ratio,
        stable_rank,
    )
    from ndt_store.measures.dynamics import (
        acceleration,
        coordination,
        critical_period_table,
        critical_periods,
        detect_jumps,
        jump_table,
        loss_correlation,
        record_steps,
        transitions,
        velocity,
    )
    from ndt_store.measures.significance import jump_significance, noise_floor
    from ndt_store.measures.similarity import cosine_similarity, linear_cka
    from ndt_store.measures.weights import (
        consecutive_weight_change,
        weight_change,
        weight_change_between,
    )
    from ndt_store.moments import CriticalMoment, identify_moments
    from ndt_store.report import write_report
    from ndt_store.store import Store, open_store
    from ndt_store.synth import synth_store

_EXPORTS: dict[str, str] = {
    "CriticalMoment": "ndt_store.moments",
    "IntegrityReport": "ndt_store._integrity",
    "JumpPolicy": "ndt_store.capture",
    "Recorder": "ndt_store.capture",
    "Store": "ndt_store.store",
    "acceleration": "ndt_store.measures.dynamics",
    "activation_selectivity": "ndt_store.measures.activations",
    "activation_sparsity": "ndt_store.measures.activations",
    "attention_entropy": "ndt_store.measures.attention",
    "attention_specialization": "ndt_store.measures.attention",
    "compare_representations": "ndt_store.compare",
    "consecutive_weight_change": "ndt_store.measures.weights",
    "coordination": "ndt_store.measures.dynamics",
    "cosine_similarity": "ndt_store.measures.similarity",
    "critical_period_table": "ndt_store.measures.dynamics",
    "critical_periods": "ndt_store.measures.dynamics",
    "detect_jumps": "ndt_store.measures.dynamics",
    "dimensionality_metrics": "ndt_store.measures.dimensionality",
    "effective_rank_90": "ndt_store.measures.dimensionality",
    "export_phase1_json": "ndt_store.ingest.phase1",
    "identify_moments": "ndt_store.moments",
    "ingest_checkpoints": "ndt_store.ingest.checkpoints",
    "ingest_phase1": "ndt_store.ingest.phase1",
    "ingest_state_dict": "ndt_store.ingest.checkpoints",
    "ingest_tables": "ndt_store.ingest.tables",
    "jump_significance": "ndt_store.measures.significance",
    "jump_table": "ndt_store.measures.dynamics",
    "linear_cka": "ndt_store.measures.similarity",
    "loss_correlation": "ndt_store.measures.dynamics",
    "noise_floor": "ndt_store.measures.significance",
    "nuclear_norm_ratio": "ndt_store.measures.dimensionality",
    "open_store": "ndt_store.store",
    "participation_ratio": "ndt_store.measures.dimensionality",
    "read_phase1_json": "ndt_store.ingest.phase1",
    "record_steps": "ndt_store.measures.dynamics",
    "stable_rank": "ndt_store.measures.dimensionality",
    "synth_store": "ndt_store.synth",
    "transitions": "ndt_store.measures.dynamics",
    "use_scheduler": "ndt_store.cluster",
    "velocity": "ndt_store.measures.dynamics",
    "verify_store": "ndt_store._integrity",
    "weight_change": "ndt_store.measures.weights",
    "weight_change_between": "ndt_store.measures.weights",
    "write_report": "ndt_store.report",
}
"""Public name -> the module that defines it (imported on first access, PEP 562)."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ndt_store' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ConflictError",
    "CorruptStoreError",
    "CriticalMoment",
    "ExperimentExistsError",
    "InputError",
    "IntegrityReport",
    "InvalidNameError",
    "JumpPolicy",
    "MissingDependencyError",
    "NdtStoreError",
    "NotFoundError",
    "ReadOnlyError",
    "Recorder",
    "RemoteStoreError",
    "StorageError",
    "Store",
    "UnsafeCheckpointError",
    "__version__",
    "acceleration",
    "activation_selectivity",
    "activation_sparsity",
    "attention_entropy",
    "attention_specialization",
    "compare_representations",
    "consecutive_weight_change",
    "coordination",
    "cosine_similarity",
    "critical_period_table",
    "critical_periods",
    "detect_jumps",
    "dimensionality_metrics",
    "effective_rank_90",
    "export_phase1_json",
    "identify_moments",
    "ingest_checkpoints",
    "ingest_phase1",
    "ingest_state_dict",
    "ingest_tables",
    "jump_significance",
    "jump_table",
    "linear_cka",
    "loss_correlation",
    "noise_floor",
    "nuclear_norm_ratio",
    "open_store",
    "participation_ratio",
    "read_phase1_json",
    "record_steps",
    "stable_rank",
    "synth_store",
    "transitions",
    "use_scheduler",
    "velocity",
    "verify_store",
    "weight_change",
    "weight_change_between",
    "write_report",
]
