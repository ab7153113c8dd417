"""ndt_store: labeled Zarr storage and vectorized measurements of training dynamics.

Examples
--------
>>> import tempfile, ndt_store
>>> store = ndt_store.open_store(tempfile.mkdtemp() + "/runs.zarr")
>>> store.experiments()
[]
"""

from __future__ import annotations

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
from ndt_store.ingest.phase1 import export_phase1_json, ingest_phase1, read_phase1_json
from ndt_store.ingest.tables import ingest_tables
from ndt_store.store import Store, open_store

__version__ = "0.1.0"

__all__ = [
    "ConflictError",
    "CorruptStoreError",
    "ExperimentExistsError",
    "InputError",
    "InvalidNameError",
    "MissingDependencyError",
    "NdtStoreError",
    "NotFoundError",
    "ReadOnlyError",
    "Store",
    "UnsafeCheckpointError",
    "__version__",
    "export_phase1_json",
    "ingest_phase1",
    "ingest_tables",
    "open_store",
    "read_phase1_json",
]
