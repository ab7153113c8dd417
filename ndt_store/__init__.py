"""ndt_store: labeled Zarr storage and vectorized measurements of training dynamics.

Examples
--------
>>> import tempfile, ndt_store
>>> store = ndt_store.open_store(tempfile.mkdtemp() + "/runs.zarr")
>>> store.experiments()
[]
"""

from __future__ import annotations

from ndt_store._integrity import IntegrityReport, verify_store
from ndt_store._version import __version__
from ndt_store.capture import JumpPolicy, Recorder
from ndt_store.cluster import use_scheduler
from ndt_store.compare import compare_representations
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
    UnsafeCheckpointError,
)
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
