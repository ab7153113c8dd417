"""The study's documented Phase 2 API, as a thin facade over ndt_store.

Code written against the study's ``phase2_infrastructure`` module runs unchanged::

    from ndt_store.legacy import Phase2Infrastructure, MeasurementTools

Every class here only converts inputs/outputs and forwards to the labeled API;
see ``docs/legacy-api.md`` for the mapping and the documented differences.
"""

from __future__ import annotations

from ndt_store.legacy.infrastructure import (
    AnalysisResult,
    BeforeAfterComparison,
    CheckpointManager,
    CriticalMoment,
    Phase2Infrastructure,
    open_legacy_store,
)
from ndt_store.legacy.measurement import MeasurementTools
from ndt_store.legacy.visualization import VisualizationTools

__all__ = [
    "AnalysisResult",
    "BeforeAfterComparison",
    "CheckpointManager",
    "CriticalMoment",
    "MeasurementTools",
    "Phase2Infrastructure",
    "VisualizationTools",
    "open_legacy_store",
]
