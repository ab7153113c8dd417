"""The documented Phase 2 API (``phase2_infrastructure.py``) as a facade over the store.

``Phase2Infrastructure``, ``CheckpointManager``, ``BeforeAfterComparison``,
``CriticalMoment`` and ``AnalysisResult`` keep the study's names, arguments and
return values. Each method converts its inputs, forwards to
:mod:`ndt_store.moments` / :mod:`ndt_store.compare` and converts the result back.

The study's experiments directory (``new/results/phase1_full/*.json`` and the
published CSV tables under ``mechanistic_interpretability/results/``) is
ingested into a store once, kept in a cache folder (never inside the
experiments directory): ``cache_dir=`` or the ``NDT_STORE_CACHE`` environment
variable name it, by default ``~/.cache/ndt_store`` (``$XDG_CACHE_HOME`` when
set); later calls re-open that store without reading the JSON again. A store
(or a store path) may be passed instead of a directory.

The study's quirk is reproduced by default: the published jump ``step`` is a
record index, and ``identify_moments`` shifts it by 10 and returns it as
``CriticalMoment.step``, which the comparison then treats as a training step.
Pass ``steps="train"`` to get moments at true training steps. Every moment
also carries ``index`` and ``train_step``. See ``docs/legacy-api.md``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ndt_store.compare import compare_representations as _compare
from ndt_store.errors import NotFoundError
from ndt_store.ingest.phase1 import LEGACY_PHASE1_DIR, ingest_phase1
from ndt_store.ingest.tables import PERIODS_TABLE, find_tables, ingest_tables
from ndt_store.legacy.measurement import MeasurementTools
from ndt_store.legacy.visualization import VisualizationTools
from ndt_store.moments import (
    CriticalMoment,
    StepMode,
    experiment_summary,
    identify_moments,
    published_jump_records,
)
from ndt_store.store import Store, open_store

__all__ = [
    "AnalysisResult",
    "BeforeAfterComparison",
    "CheckpointManager",
    "CriticalMoment",
    "Phase2Infrastructure",
    "default_cache_dir",
    "open_legacy_store",
]

CACHE_ENV = "NDT_STORE_CACHE"
"""Environment variable naming the cache folder of legacy stores."""
LEGACY_OFFSET = 10
"""Shift of the study's before/after moments (applied to the record index)."""


@dataclass
class AnalysisResult:
    """Container for analysis results (the study's dataclass).

    Attributes
    ----------
    experiment
        The run.
    moment
        ``"<before type>_to_<after type>"``.
    measurements
        The comparison (see :func:`ndt_store.compare.compare_representations`).
    visualizations
        Figures, by name (empty: figures are written by :mod:`ndt_store.report`).
    """

    experiment: str
    moment: str
    measurements: dict[str, Any]
    visualizations: dict[str, Any]


def _is_store_dir(path: Path) -> bool:
    meta = path / "zarr.json"
    return meta.is_file() and "ndt_store" in meta.read_text(encoding="utf-8", errors="replace")


def default_cache_dir() -> Path:
    """Folder of the stores ingested from legacy directories.

    ``$NDT_STORE_CACHE`` if set, else ``$XDG_CACHE_HOME/ndt_store``, else
    ``~/.cache/ndt_store``.

    Examples
    --------
    >>> default_cache_dir().name in ("ndt_store", os.environ.get(CACHE_ENV, "ndt_store"))
    True
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ndt_store"


def _cached_store_path(src: Path, cache_dir: str | os.PathLike[str] | None) -> Path:
    """``<cache>/<dir name>-<hash of its absolute path>.zarr``: one store per directory."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:12]
    return folder / f"{src.resolve().name or 'root'}-{digest}.zarr"


def open_legacy_store(
    source: Store | str | os.PathLike[str],
    *,
    store_path: str | os.PathLike[str] | None = None,
    reingest: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Store:
    """A store for ``source``: a store, a store path, or a legacy experiments directory.

    A legacy directory is ingested (Phase 1 JSON and the published tables) into
    ``store_path`` (default: a store named after the directory in ``cache_dir``,
    see :func:`default_cache_dir`) the first time only; later calls re-open it.
    Nothing is written into ``source``. If ingesting fails, the store it was
    creating is removed again. ``reingest=True`` reads the directory again
    (unchanged experiments are skipped by content hash).

    Examples
    --------
    >>> import tempfile
    >>> from ndt_store.testing import write_phase1_json
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = write_phase1_json(root / "new/results/phase1_full/run.json", n_records=20)
    >>> open_legacy_store(root, cache_dir=tempfile.mkdtemp()).experiments()
    ['run']
    """
    if isinstance(source, Store):
        return source
    src = Path(source)
    if _is_store_dir(src) or "://" in str(source):
        return open_store(source, mode="a")
    if not src.is_dir():
        raise NotFoundError(f"no store or experiments directory at {str(src)!r}")
    target = Path(store_path) if store_path is not None else _cached_store_path(src, cache_dir)
    existed = target.exists()
    store = open_store(target, mode="a")
    if _is_store_dir(target) and store.experiments() and not reingest:
        return store
    try:
        json_dir = src / LEGACY_PHASE1_DIR
        ingest_phase1(store, json_dir if json_dir.is_dir() else src)
        found = find_tables(src)
        if found:
            ingest_tables(
                store,
                jumps=found.get("published_jumps"),
                periods=found.get("published_critical_periods"),
                overwrite=True,
            )
    except BaseException:
        if not existed:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return store


def _jump_frame(jump_data: Any) -> pd.DataFrame:
    if isinstance(jump_data, pd.DataFrame):
        return jump_data
    return pd.DataFrame(list(jump_data), columns=None if jump_data else ["experiment", "step"])


class CheckpointManager:
    """Finds critical moments and the Phase 1 records (and checkpoints) at them.

    Parameters
    ----------
    experiments_dir
        A legacy experiments directory, a store path, or a :class:`Store`.
    store_path, cache_dir
        Where to ingest a legacy directory (see :func:`open_legacy_store`;
        default: a store in the cache folder, never inside the directory).
    """

    def __init__(
        self,
        experiments_dir: Store | str | os.PathLike[str],
        *,
        store_path: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.store = open_legacy_store(experiments_dir, store_path=store_path, cache_dir=cache_dir)
        local = None if isinstance(experiments_dir, Store) else Path(experiments_dir)
        self.experiments_dir = local
        self.measurements_dir = None if local is None else local / LEGACY_PHASE1_DIR

    def identify_critical_moments(
        self,
        experiment_name: str,
        jump_data: Any,
        num_moments: int = 5,
        *,
        steps: StepMode = "index",
    ) -> list[CriticalMoment]:
        """Before/during/after moments of the ``num_moments`` largest jumps in ``jump_data``.

        Parameters
        ----------
        experiment_name
            The run.
        jump_data
            Jump table rows (list of dicts or a DataFrame) with ``experiment``,
            ``step`` (record index) and ``magnitude``.
        num_moments
            Number of jumps (three moments each).
        steps
            ``"index"`` (the study's convention) or ``"train"``.
        """
        moments = identify_moments(
            self.store,
            experiment_name,
            num_jumps=num_moments,
            offset=LEGACY_OFFSET,
            steps=steps,
            jumps=_jump_frame(jump_data),
            alpha=None,  # the study's selection: every z-score jump of the table
        )
        if not moments:
            print(f"No jumps found for {experiment_name}")
        return moments

    def load_measurements_at_step(self, experiment_name: str, step: int) -> dict[str, Any] | None:
        """The Phase 1 record nearest training ``step``, as the study's JSON dict (or None)."""
        try:
            return self.store.record(experiment_name, step)
        except NotFoundError as exc:
            print(f"Experiment not found: {exc}")
            return None

    def get_checkpoint_path(self, experiment_name: str, step: int) -> Path | None:
        """Path of a checkpoint file for ``step`` under ``<dir>/checkpoints/<experiment>/``.

        Looks for the study's ``step_{step}.pt`` and ``checkpoint_step_{step:05d}.pt``.
        Weights ingested into the store are read with ``store.weights(...)`` instead.
        """
        if self.experiments_dir is None:
            print("Note: no experiments directory; read weights with store.weights()")
            return None
        folder = self.experiments_dir / "checkpoints" / experiment_name
        for name in (f"step_{step}.pt", f"checkpoint_step_{step:05d}.pt"):
            if (folder / name).exists():
                return folder / name
        print(f"Note: Checkpoint not available at {folder / f'step_{step}.pt'}")
        return None


class BeforeAfterComparison:
    """Compares a run at two moments (the study's comparison framework)."""

    def __init__(self, checkpoint_manager: CheckpointManager) -> None:
        self.checkpoint_manager = checkpoint_manager
        self.measurements = MeasurementTools()
        self.visualizations = VisualizationTools()

    def compare_moments(
        self,
        moment_before: CriticalMoment,
        moment_after: CriticalMoment,
        analysis_type: str = "attention",
    ) -> AnalysisResult | None:
        """Phase 1 (and stored tensor) changes between two moments.

        ``analysis_type`` is accepted for compatibility; every available
        comparison is made. Returns None (and prints why) if a run is missing.
        """
        del analysis_type
        try:
            measurements = _compare(
                self.checkpoint_manager.store,
                int(moment_before.step),
                int(moment_after.step),
                experiment=moment_before.experiment_name,
            )
        except NotFoundError as exc:
            print(f"Could not load measurements: {exc}")
            return None
        return AnalysisResult(
            experiment=moment_before.experiment_name,
            moment=f"{moment_before.moment_type}_to_{moment_after.moment_type}",
            measurements=measurements,
            visualizations={},
        )


class Phase2Infrastructure:
    """Main interface for Phase 2 mechanistic analysis (the study's entry point).

    Parameters
    ----------
    experiments_dir
        The study's experiments directory, a store path, or a :class:`Store`.
    store_path, cache_dir
        Where to ingest a legacy directory (see :func:`open_legacy_store`;
        default: a store in the cache folder, never inside the directory).

    Examples
    --------
    >>> import tempfile
    >>> from ndt_store.testing import write_phase1_json
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = write_phase1_json(root / "new/results/phase1_full/run.json", n_records=60,
    ...                       jumps=[("fc2", 30, 5.0)])
    >>> infra = Phase2Infrastructure(root, cache_dir=tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Jump data not found in ... (jumps will be computed)
    >>> moments = infra.identify_moments("run", num_jumps=1, steps="train")
    >>> result = infra.compare_representations(moments[0], moments[2])
    >>> result.moment, round(result.measurements["layer_changes"]["fc2"]["change"], 1)
    ('before_jump_to_after_jump', 5.6)
    """

    def __init__(
        self,
        experiments_dir: Store | str | os.PathLike[str],
        *,
        store_path: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.checkpoint_manager = CheckpointManager(
            experiments_dir, store_path=store_path, cache_dir=cache_dir
        )
        self.store = self.checkpoint_manager.store
        self.measurements = MeasurementTools()
        self.visualizations = VisualizationTools()
        self.comparisons = BeforeAfterComparison(self.checkpoint_manager)
        local = self.checkpoint_manager.experiments_dir
        self.phase1_dir = (
            None if local is None else local / "mechanistic_interpretability" / "results"
        )
        self.jump_data: list[dict[str, Any]] = published_jump_records(self.store)
        if not self.jump_data:
            print(f"Jump data not found in {self.store.location} (jumps will be computed)")
        self.critical_periods = (
            self.store.table(PERIODS_TABLE)
            if PERIODS_TABLE in self.store.tables()
            else pd.DataFrame()
        )

    def identify_moments(
        self, experiment_name: str, num_jumps: int = 5, *, steps: StepMode = "index"
    ) -> list[CriticalMoment]:
        """Before/during/after moments of the ``num_jumps`` largest jumps of a run.

        ``steps="index"`` reproduces the study; ``"train"`` gives training steps.
        Without a published jump table, jumps are computed from the Phase 1 data.
        """
        if not self.jump_data:
            return identify_moments(
                self.store, experiment_name, num_jumps=num_jumps, offset=LEGACY_OFFSET,
                steps=steps, alpha=None,
            )  # fmt: skip
        return self.checkpoint_manager.identify_critical_moments(
            experiment_name, self.jump_data, num_jumps, steps=steps
        )

    def compare_representations(
        self, moment_before: CriticalMoment, moment_after: CriticalMoment
    ) -> AnalysisResult | None:
        """Compare a run at two moments (see :meth:`BeforeAfterComparison.compare_moments`)."""
        return self.comparisons.compare_moments(moment_before, moment_after)

    def get_experiment_summary(self, experiment_name: str) -> dict[str, Any]:
        """Jump count and statistics and the critical-period row of a run."""
        source: Store | pd.DataFrame = _jump_frame(self.jump_data) if self.jump_data else self.store
        return experiment_summary(source, experiment_name, periods=self.critical_periods)
