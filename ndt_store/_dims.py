"""Dimension, variable and attribute names used throughout ndt_store.

Every labeled array that ndt_store writes or returns names its axes with these
constants. Code never spells a dimension as a string literal: it imports it from
here, so a rename is one edit and a typo is an ``ImportError``.
"""

from __future__ import annotations

# --- dimensions ---------------------------------------------------------------
EXPERIMENT = "experiment"
"""One training run (the study's 55 runs are 55 labels)."""
STEP = "step"
"""True training step (optimizer steps since the start of the run)."""
INDEX = "index"
"""Record index into a Phase 1 series (what the published tables call ``step``)."""
LAYER = "layer"
"""Tracked layer, labeled by its module name (``network.0``, ``conv_layers.3`` ...)."""
HEAD = "head"
"""Attention head, labeled 0..H-1."""
SAMPLE = "sample"
"""Position in the fixed probe batch."""
QUERY = "query"
"""Query position of an attention matrix."""
KEY = "key"
"""Key position of an attention matrix (attention rows sum to one over it)."""
FEATURE = "feature"
"""Unit / channel of an activation."""
CLASS = "class"
"""Class label (for selectivity)."""
PARAMETER = "parameter"
"""Parameter name of a model (``network.0.weight``)."""

# --- Phase 1 variables --------------------------------------------------------
STABLE_RANK = "stable_rank"
PARTICIPATION_RATIO = "participation_ratio"
EFFECTIVE_RANK_90 = "effective_rank_90"
NUCLEAR_NORM_RATIO = "nuclear_norm_ratio"
PHASE1_METRICS: tuple[str, ...] = (
    STABLE_RANK,
    PARTICIPATION_RATIO,
    EFFECTIVE_RANK_90,
    NUCLEAR_NORM_RATIO,
)
"""The four per-layer dimensionality metrics, in the study's order."""

LOSS = "loss"
GRAD_NORM = "grad_norm"
EPOCH = "epoch"
PHASE1_SCALARS: tuple[str, ...] = (LOSS, GRAD_NORM, EPOCH)
"""Per-step scalars of a Phase 1 record."""

# --- experiment metadata (coordinates on ``experiment`` / attrs) --------------
ARCH_NAME = "arch_name"
DATASET = "dataset"
NUM_STEPS = "num_steps"
MEASUREMENT_INTERVAL = "measurement_interval"
FINAL_ACCURACY = "final_accuracy"
ELAPSED_TIME = "elapsed_time"
ARCHITECTURE_PARAMS = "architecture_params"
METADATA_FIELDS: tuple[str, ...] = (
    ARCH_NAME,
    DATASET,
    NUM_STEPS,
    MEASUREMENT_INTERVAL,
    FINAL_ACCURACY,
    ELAPSED_TIME,
)
"""Scalar run metadata carried as coordinates on the ``experiment`` dim."""

LAYER_POSITION = "layer_position"
"""Coordinate over (experiment, layer): the layer's position (depth order) in that
experiment, NaN where the experiment lacks the layer."""

# --- tensor kinds stored per experiment ---------------------------------------
PHASE1 = "phase1"
WEIGHTS = "weights"
ACTIVATIONS = "activations"
ATTENTION = "attention"
TENSOR_KINDS: tuple[str, ...] = (WEIGHTS, ACTIVATIONS, ATTENTION)

# --- attribute names ----------------------------------------------------------
PROBE_HASH = "probe_hash"
"""Attribute: SHA-256 of the probe-batch inputs an activation/attention array was taken on."""
LABEL = "label"
"""Coordinate on ``sample``: the probe batch's class labels."""

# --- the study's published tables ----------------------------------------------
JUMPS_TABLE = "published_jumps"
"""Name of the stored published jump table."""
PERIODS_TABLE = "published_critical_periods"
"""Name of the stored published critical-period table."""

PUBLISHED_JUMP_COLUMNS: tuple[str, ...] = (
    "step",
    "magnitude",
    "speed",
    "direction",
    "phase",
    "layer",
    "experiment",
    "arch_name",
    "dataset",
    "phase_category",
)
"""Columns of ``all_jumps_detailed.csv`` (besides ``cluster``); ``step`` is a record index."""
PUBLISHED_PERIOD_COLUMNS: tuple[str, ...] = (
    "experiment",
    "arch_name",
    "dataset",
    "total_critical_steps",
    "total_transitions",
    "num_coordinated_periods",
    "max_coordination",
    "mean_coordination",
    "loss_correlation",
)
"""Columns of ``critical_periods_detailed.csv``."""

WEIGHT_ALIASES = "weight_aliases"
"""Experiment metadata: ``{alias: stored parameter name}`` for tied parameters."""
ATTENTION_SUBSET = "attention_subset"
"""Experiment metadata: ``{"head": [...], "query": [...]}`` stored subset of attention
maps (``None`` = all)."""
