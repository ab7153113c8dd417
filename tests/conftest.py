"""Shared fixtures: real shared data (skipped when absent) and synthetic files."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest
from hypothesis import settings

matplotlib.use("Agg")
# no per-example deadline: CI machines are shared and timing is not what these test
settings.register_profile("ndt_store", deadline=None)
settings.load_profile("ndt_store")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PHASE1_DIR = SHARED_DATA / "phase1"
CHECKPOINT_DIR = SHARED_DATA / "checkpoints" / "mlp_narrow_mnist"


@pytest.fixture(scope="session")
def shared_phase1() -> Path:
    """The real Phase 1 data directory beside the repository."""
    if not (PHASE1_DIR / "phase1_full").is_dir():
        pytest.skip(f"real study data not found at {PHASE1_DIR} (it lives in ../shared/data)")
    return PHASE1_DIR


@pytest.fixture(scope="session")
def shared_checkpoints() -> Path:
    """The real mlp_narrow_mnist checkpoints beside the repository."""
    if not CHECKPOINT_DIR.is_dir():
        pytest.skip(f"real checkpoints not found at {CHECKPOINT_DIR} (they live in ../shared/data)")
    return CHECKPOINT_DIR


@pytest.fixture(scope="session")
def real_store(shared_phase1: Path, tmp_path_factory: pytest.TempPathFactory):
    """A read-only store holding the three real experiments and published tables."""
    import ndt_store
    from ndt_store.ingest.tables import find_tables

    path = tmp_path_factory.mktemp("real") / "real.zarr"
    store = ndt_store.open_store(path)
    ndt_store.ingest_phase1(store, shared_phase1)
    found = find_tables(shared_phase1)
    ndt_store.ingest_tables(
        store, jumps=found["published_jumps"], periods=found["published_critical_periods"]
    )
    return ndt_store.open_store(path, mode="r")
