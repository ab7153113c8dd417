"""Critical moments: where in training to look (around jumps and critical periods).

A *moment* is one point of one run chosen for a closer look: the record before a
dimensionality jump, the jump itself, the record after it, or the peak of a
coordinated critical period. Jumps come from the study's published jump table
when the store holds it, else from :func:`ndt_store.measures.dynamics.jump_table`.

Two step conventions exist (see ``docs/legacy-api.md``):

* ``steps="train"`` (default): ``CriticalMoment.step`` is a true training step.
  The jump at record index ``i`` is "during" at record ``i``; "before" and
  "after" are ``offset`` *records* earlier/later (clipped to the run).
* ``steps="index"``: the study's convention. The published ``step`` column is a
  record index, and the study's code shifted it by ``offset`` and then used the
  result as a training step. Kept to reproduce the study's numbers.

Every moment carries ``index`` (record index) and ``train_step`` (training step
of that record, ``None`` past the end of the run) whichever convention is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from ndt_store._dims import EXPERIMENT, INDEX, LAYER, LOSS, STABLE_RANK, STEP
from ndt_store._jumps import experiment_names, published_clusters, store_jump_columns
from ndt_store.errors import InputError
from ndt_store.ingest.tables import JUMPS_TABLE, PERIODS_TABLE
from ndt_store.measures.dynamics import (
    PhaseMode,
    check_alpha,
    coordination,
    critical_period_table,
    critical_periods,
    jump_table,
    metric_variation,
    velocity,
    warn_if_degenerate,
)
from ndt_store.measures.significance import DEFAULT_ALPHA
from ndt_store.store import Store

__all__ = [
    "MOMENT_TYPES",
    "CriticalMoment",
    "StepMode",
    "experiment_summary",
    "flag_significance",
    "identify_moments",
    "jump_moments",
    "period_moments",
    "store_jumps",
    "store_periods",
]

StepMode = Literal["train", "index"]
MOMENT_TYPES: tuple[str, ...] = ("before_jump", "during_jump", "after_jump", "critical_period")
"""The ``moment_type`` values, as in the study."""


@dataclass
class CriticalMoment:
    """One moment of one run chosen for investigation (the study's dataclass, extended).

    Attributes
    ----------
    experiment_name
        The run.
    step
        Training step (``steps="train"``) or the study's shifted record index
        (``steps="index"``); comparisons treat it as a training step.
    moment_type
        One of :data:`MOMENT_TYPES`.
    jump_info
        The jump-table row (plain Python values), or a description of the period.
    index
        Record index of the moment (may lie past the run in ``"index"`` mode).
    train_step
        Training step of record ``index``; ``None`` when ``index`` is past the run.

    Examples
    --------
    >>> CriticalMoment("run", 45, "during_jump").moment_type
    'during_jump'
    """

    experiment_name: str
    step: int
    moment_type: str
    jump_info: dict[str, Any] | None = None
    index: int | None = field(default=None, compare=False)
    train_step: int | None = field(default=None, compare=False)


# ----------------------------------------------------------------------- tables
def _plain(value: Any) -> Any:
    """A numpy scalar as the matching Python scalar."""
    return value.item() if isinstance(value, np.generic) else value


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in df.to_dict("records")]


def _experiments(store: Store, experiments: Sequence[str] | None) -> list[str]:
    return experiment_names(store, experiments)


def store_jumps(
    store: Store,
    experiments: Sequence[str] | None = None,
    *,
    threshold: float = 2.0,
    alpha: float | None = None,
    metric: str = STABLE_RANK,
    phase: PhaseMode = "train",
    via_catalog: bool = False,
) -> pd.DataFrame:
    """The jump table of stored runs: published columns plus index, train_step, p-values.

    Read straight from each run's Phase 1 frame and computed in this process
    (:func:`ndt_store._jumps.store_jump_columns`), equal row for row to
    :func:`~ndt_store.measures.dynamics.jump_table` on :meth:`Store.measurements`.
    The published ``cluster`` column (not reproducible from a subset of runs)
    is joined from the stored published table when present (missing: ``-1``).

    Parameters
    ----------
    store
        The store.
    experiments
        Runs to include (default: all).
    threshold
        z-score threshold of the published rule.
    alpha
        ``None``: every z-score jump (the published table). A number: only
        jumps significant at this family-wise level.
    metric
        The Phase 1 variable (default ``stable_rank``, the published one).
    phase
        ``"train"``: ``phase`` from the training step; ``"index"``: the
        published formula (see :func:`~ndt_store.measures.dynamics.jump_table`).
    via_catalog
        Compute through the cross-experiment view and dask instead (one task
        per block of experiments, on whatever scheduler is active: e.g. a
        cluster from :func:`ndt_store.cluster.use_scheduler`); same table.

    Returns
    -------
    pandas.DataFrame
        One row per jump, sorted by experiment, layer and record index.
    """
    if not via_catalog:
        return pd.DataFrame(
            store_jump_columns(
                store, experiments, threshold=threshold, alpha=alpha, metric=metric, phase=phase
            )
        )
    names = _experiments(store, experiments)
    if not names:
        return jump_table(xr.DataArray(np.zeros((0, 0, 0)), dims=(EXPERIMENT, STEP, LAYER)))
    table = jump_table(
        store.measurements(names), threshold=threshold, alpha=alpha, variable=metric, phase=phase
    )
    keys = {k: table[k].to_numpy() for k in ("experiment", "layer", "step")}
    cluster = published_clusters(store, keys) if metric == STABLE_RANK else None
    if cluster is None:
        cluster = np.full(len(table), -1, dtype=np.int64)
    cols = list(table.columns)
    table.insert(cols.index("phase_category") + 1, "cluster", cluster)
    return table


def store_periods(
    store: Store, experiments: Sequence[str] | None = None, *, metric: str = STABLE_RANK
) -> pd.DataFrame:
    """The critical-period table of stored runs (as the published one), computed.

    ``metric`` is the Phase 1 variable (default ``stable_rank``, the published one).

    Examples
    --------
    >>> import tempfile, ndt_store
    >>> store_periods(ndt_store.open_store(tempfile.mkdtemp() + "/s.zarr")).empty
    True
    """
    names = _experiments(store, experiments)
    if not names:
        return pd.DataFrame(columns=["experiment"])
    return critical_period_table(store.measurements(names).compute(), variable=metric)


def flag_significance(rows: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """``rows`` with ``significant`` re-evaluated at ``alpha`` (``p_value <= alpha``, above floor).

    Examples
    --------
    >>> t = pd.DataFrame({"p_value": [0.01, 0.2], "magnitude": [1.0, 1.0],
    ...                   "noise_floor": [0.1, 0.1]})
    >>> flag_significance(t, 0.05)["significant"].tolist()
    [True, False]
    """
    alpha = check_alpha(alpha)
    if "p_value" not in rows.columns:
        if "significant" in rows.columns:
            return rows
        raise InputError(
            "filtering on alpha needs a jump table with p_value/significant columns "
            "(pass alpha=None to use every z-score jump)",
            field="alpha",
            value=alpha,
        )
    keep = np.array(rows["p_value"].to_numpy(dtype=np.float64) <= alpha)
    if "noise_floor" in rows.columns:
        floor = rows["noise_floor"].to_numpy(dtype=np.float64)
        keep &= np.isnan(floor) | (rows["magnitude"].to_numpy(dtype=np.float64) > floor)
    rows = rows.copy()
    rows["significant"] = keep
    return rows


def _mark_degenerate(
    rows: pd.DataFrame, store: Store, experiment: str, metric: str
) -> pd.DataFrame:
    """Jumps in layers where ``metric`` does not move are not significant (``degenerate``)."""
    var = metric_variation(store.phase1(experiment)[metric])
    flat = {str(k) for k, v in zip(var[LAYER].values, var.degenerate.values, strict=True) if v}
    rows = rows.copy()
    rows["degenerate"] = rows["layer"].astype(str).isin(flat).to_numpy()
    rows["significant"] = rows["significant"].astype(bool) & ~rows["degenerate"]
    return rows


def _jump_rows(
    store: Store | None,
    table: pd.DataFrame | None,
    experiment: str,
    threshold: float,
    alpha: float | None,
    metric: str = STABLE_RANK,
    include_nonsignificant: bool = False,
) -> pd.DataFrame:
    """The jump rows of one run.

    ``alpha=None``: every z-score jump (the published rows when stored, the
    study's selection). A number: the rows carry ``significant`` at that
    level and, unless ``include_nonsignificant``, only significant ones stay.
    """
    if table is not None:
        rows = table[table["experiment"] == experiment]
    else:
        assert store is not None
        store.metadata(experiment)
        rows = None
        if alpha is None and threshold == 2.0 and metric == STABLE_RANK:
            if JUMPS_TABLE in store.tables():
                pub = store.table(JUMPS_TABLE)
                rows = pub[pub["experiment"] == experiment]
                rows = rows if len(rows) else None
        if rows is None:
            rows = jump_table(
                store.measurements([experiment]), threshold=threshold, variable=metric
            )
    if alpha is None:
        return rows
    rows = flag_significance(rows, alpha)
    if store is not None and len(rows):
        rows = _mark_degenerate(rows, store, experiment, metric)
    if not include_nonsignificant:
        rows = rows[rows["significant"].astype(bool)]
    return rows


def _record_steps(store: Store | None, experiment: str) -> np.ndarray | None:
    if store is None:
        return None
    return np.asarray(store.phase1(experiment)[STEP].values, dtype=np.int64)


def _train_step(steps: np.ndarray | None, index: int) -> int | None:
    if steps is None or not 0 <= index < steps.size:
        return None
    return int(steps[index])


def _moment(
    experiment: str,
    kind: str,
    index: int,
    steps: np.ndarray | None,
    mode: StepMode,
    info: dict[str, Any],
) -> CriticalMoment:
    train = _train_step(steps, index)
    if mode == "index":
        step = index
    else:
        if train is None:
            raise InputError(f"record index {index} is outside the run", field="index", value=index)
        step = train
    return CriticalMoment(experiment, step, kind, info, index=index, train_step=train)


def jump_moments(
    source: Store | pd.DataFrame,
    experiment: str,
    *,
    num_jumps: int = 5,
    offset: int = 10,
    steps: StepMode = "train",
    threshold: float = 2.0,
    alpha: float | None = DEFAULT_ALPHA,
    jumps: pd.DataFrame | None = None,
    metric: str = STABLE_RANK,
    include_nonsignificant: bool = False,
) -> list[CriticalMoment]:
    """Before / during / after moments of the ``num_jumps`` largest significant jumps of a run.

    Jumps are sorted significant first, then by ``magnitude``, largest first
    (ties keep table order). A metric that moves in no layer of the run (its
    range within its noise floor, see
    :func:`~ndt_store.measures.dynamics.metric_variation`) gives no moments
    and a :class:`~ndt_store.measures.dynamics.DegenerateMetricWarning`
    naming the metrics that vary.

    Parameters
    ----------
    source
        A store (published jump table if stored, else computed jumps), or a
        jump table (``DataFrame`` with ``experiment``, ``step``, ``magnitude``).
    experiment
        The run.
    num_jumps
        How many jumps.
    offset
        Distance of "before"/"after" from the jump, in records.
    steps
        ``"train"``: moments at training steps (needs a store); ``"index"``:
        the study's convention (see the module docstring).
    threshold
        z-score threshold when jumps are computed.
    alpha
        Family-wise level (default 0.05): keep only jumps with ``p_value <=
        alpha`` above the noise floor. ``None``: every z-score jump, untested
        (the study's selection; the published rows when stored).
    jumps
        A jump table to take the jumps from while ``source`` (a store) gives
        the records' training steps.
    metric
        The Phase 1 variable whose jumps are used (default ``stable_rank``).
    include_nonsignificant
        Keep the jumps that are not significant too (their ``jump_info`` says
        ``significant: False``).

    Returns
    -------
    list of CriticalMoment
        Three per jump, in order before, during, after.

    Examples
    --------
    >>> table = pd.DataFrame({"experiment": ["r", "r"], "step": [40, 7], "magnitude": [1.0, 3.0],
    ...                       "p_value": [0.001, 0.002]})
    >>> [(m.step, m.moment_type) for m in jump_moments(table, "r", num_jumps=1, steps="index")]
    [(0, 'before_jump'), (7, 'during_jump'), (17, 'after_jump')]
    """
    if steps not in ("train", "index"):
        raise InputError("steps must be 'train' or 'index'", field="steps", value=steps)
    store = source if isinstance(source, Store) else None
    table = source if isinstance(source, pd.DataFrame) else jumps
    if alpha is not None:
        alpha = check_alpha(alpha)
        if store is not None:
            degenerate, _ = warn_if_degenerate(store.phase1(experiment), metric, where=experiment)
            if degenerate:
                return []
    rows = _jump_rows(store, table, experiment, threshold, alpha, metric, include_nonsignificant)
    if rows.empty:
        return []
    record_steps = _record_steps(store, experiment)
    if steps == "train" and record_steps is None:
        raise InputError(
            "steps='train' needs a store (to map record indices to training steps)",
            field="steps",
            value=steps,
        )
    magnitude = pd.to_numeric(rows["magnitude"], errors="coerce").fillna(0.0).to_numpy()
    if alpha is not None and "significant" in rows.columns:
        significant = rows["significant"].to_numpy(dtype=bool)
        order = np.lexsort((-magnitude, ~significant))[: max(num_jumps, 0)]
    else:
        order = np.argsort(-magnitude, kind="stable")[: max(num_jumps, 0)]
    records = _records(rows)
    out: list[CriticalMoment] = []
    last = None if record_steps is None else record_steps.size - 1
    for k in order:
        info = records[int(k)]
        i = int(info.get(INDEX, info[STEP]))
        before, after = max(0, i - offset), i + offset
        if steps == "train" and last is not None:
            after = min(last, after)
        for kind, idx in (("before_jump", before), ("during_jump", i), ("after_jump", after)):
            out.append(_moment(experiment, kind, idx, record_steps, steps, info))
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    d = np.diff(padded)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def period_moments(
    store: Store,
    experiment: str,
    *,
    num_periods: int = 5,
    min_coordination: float = 0.5,
    min_loss_correlation: float | None = None,
    percentile: float = 90,
    steps: StepMode = "train",
    metric: str = STABLE_RANK,
) -> list[CriticalMoment]:
    """Moments at the peaks of coordinated critical periods of a run.

    A *period* is a run of consecutive record indices whose coordination score
    (share of layers critical there, see
    :func:`~ndt_store.measures.dynamics.coordination`) is at least
    ``min_coordination``. Its ``loss_correlation`` is the share of its critical
    (layer, index) pairs where the loss falls (the published statistic,
    restricted to the period). Periods are ranked by peak coordination, then
    loss correlation; the moment sits at the peak record.

    Parameters
    ----------
    store, experiment
        The run.
    num_periods
        How many periods.
    min_coordination
        Coordination threshold of a period (the study's 0.5).
    min_loss_correlation
        Keep only periods whose loss correlation is at least this.
    percentile
        Percentile of the critical-index rule.
    steps
        As in :func:`jump_moments`.
    metric
        The Phase 1 variable (default ``stable_rank``).

    Returns
    -------
    list of CriticalMoment
        ``moment_type="critical_period"``; ``jump_info`` describes the period
        (``start_index``, ``end_index``, ``start_step``, ``end_step``,
        ``peak_index``, ``peak_coordination``, ``mean_coordination``,
        ``loss_correlation``).
    """
    ds = store.phase1(experiment)
    if metric not in ds:
        warn_if_degenerate(ds, metric)  # InputError naming the stored metrics
    x = ds[metric]
    crit = critical_periods(x, percentile=percentile)
    score = coordination(crit)["coordination_score"].values
    falling = np.zeros(score.size, dtype=bool)
    v = velocity(ds[LOSS]).values
    falling[: v.size] = v < 0
    hit = crit.transpose(INDEX, LAYER).values == 1
    record_steps = np.asarray(ds[STEP].values, dtype=np.int64)
    periods: list[dict[str, Any]] = []
    for start, stop in _runs(np.nan_to_num(score, nan=0.0) >= min_coordination):
        seg = score[start:stop]
        peak = start + int(np.argmax(seg))
        n_hit = int(hit[start:stop].sum())
        share = float((hit[start:stop] & falling[start:stop, None]).sum() / n_hit) if n_hit else 0.0
        if min_loss_correlation is not None and share < min_loss_correlation:
            continue
        periods.append(
            {
                "experiment": experiment,
                "start_index": start,
                "end_index": stop - 1,
                "start_step": int(record_steps[start]),
                "end_step": int(record_steps[stop - 1]),
                "peak_index": peak,
                "peak_coordination": float(score[peak]),
                "mean_coordination": float(seg.mean()),
                "loss_correlation": share,
            }
        )
    periods.sort(key=lambda p: (-p["peak_coordination"], -p["loss_correlation"], p["start_index"]))
    return [
        _moment(experiment, "critical_period", p["peak_index"], record_steps, steps, p)
        for p in periods[: max(num_periods, 0)]
    ]


def identify_moments(
    source: Store | pd.DataFrame,
    experiment: str,
    *,
    num_jumps: int = 5,
    offset: int = 10,
    steps: StepMode = "train",
    threshold: float = 2.0,
    alpha: float | None = DEFAULT_ALPHA,
    num_periods: int = 0,
    min_coordination: float = 0.5,
    min_loss_correlation: float | None = None,
    jumps: pd.DataFrame | None = None,
    metric: str = STABLE_RANK,
    include_nonsignificant: bool = False,
) -> list[CriticalMoment]:
    """Critical moments of a run: around its largest jumps, then its critical periods.

    Parameters
    ----------
    source
        A store, or a jump table (jump moments only, ``steps="index"``).
    experiment
        The run.
    num_jumps, offset, threshold, alpha, jumps, metric, include_nonsignificant
        See :func:`jump_moments` (significant jumps at ``alpha=0.05`` by default).
    steps
        ``"train"`` (training steps) or ``"index"`` (the study's convention).
    num_periods, min_coordination, min_loss_correlation
        See :func:`period_moments` (``num_periods=0``: none).

    Returns
    -------
    list of CriticalMoment

    Examples
    --------
    >>> import tempfile, ndt_store
    >>> from ndt_store.testing import make_phase1_obj, write_phase1_json
    >>> d = tempfile.mkdtemp()
    >>> store = ndt_store.open_store(d + "/s.zarr")
    >>> path = write_phase1_json(d + "/run.json", n_records=60, jumps=[("fc2", 30, 5.0)])
    >>> _ = ndt_store.ingest_phase1(store, path)
    >>> moments = identify_moments(store, "run", num_jumps=1)
    >>> [(m.moment_type, m.index, m.step) for m in moments]
    [('before_jump', 19, 95), ('during_jump', 29, 145), ('after_jump', 39, 195)]
    """
    out = jump_moments(
        source,
        experiment,
        num_jumps=num_jumps,
        offset=offset,
        steps=steps,
        threshold=threshold,
        alpha=alpha,
        jumps=jumps,
        metric=metric,
        include_nonsignificant=include_nonsignificant,
    )
    if num_periods > 0:
        if not isinstance(source, Store):
            raise InputError(
                "critical-period moments need a store", field="num_periods", value=num_periods
            )
        out += period_moments(
            source,
            experiment,
            num_periods=num_periods,
            min_coordination=min_coordination,
            min_loss_correlation=min_loss_correlation,
            steps=steps,
            metric=metric,
        )
    return out


def published_periods(store: Store, experiment: str) -> dict[str, Any]:
    """The published critical-period row of a run as a dict (``{}`` when absent)."""
    if PERIODS_TABLE not in store.tables():
        return {}
    df = store.table(PERIODS_TABLE)
    rows = df[df["experiment"] == experiment]
    return _records(rows)[0] if len(rows) else {}


def published_jump_records(store: Store) -> list[dict[str, Any]]:
    """The published jump table as a list of dicts (``[]`` when not stored)."""
    if JUMPS_TABLE not in store.tables():
        return []
    return _records(store.table(JUMPS_TABLE))


def experiment_summary(
    source: Store | pd.DataFrame, experiment: str, *, periods: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Jump statistics and the critical-period row of a run (the study's summary).

    Parameters
    ----------
    source
        A store (its published jump table, else computed jumps) or a jump table.
    experiment
        The run.
    periods
        Critical-period table (default: the store's published one, if any).

    Returns
    -------
    dict
        ``experiment``, ``num_jumps``, ``jump_summary`` (``mean_magnitude``,
        ``mean_speed``, ``phases``: the phase category of every jump, table
        order) and ``critical_periods`` (the run's row as a dict, ``{}`` if none).

    Examples
    --------
    >>> t = pd.DataFrame({"experiment": ["r", "r"], "step": [1, 2], "magnitude": [1.0, 3.0],
    ...                   "speed": [0.5, 0.5], "phase_category": ["early", "mid"]})
    >>> experiment_summary(t, "r")["jump_summary"]
    {'mean_magnitude': 2.0, 'mean_speed': 0.5, 'phases': ['early', 'mid']}
    """
    if isinstance(source, Store):
        rows = _jump_rows(source, None, experiment, 2.0, None)
        if periods is None and PERIODS_TABLE in source.tables():
            periods = source.table(PERIODS_TABLE)
    else:
        rows = source[source["experiment"] == experiment]
    period_row: dict[str, Any] = {}
    if periods is not None and len(periods):
        match = periods[periods["experiment"] == experiment]
        period_row = _records(match)[0] if len(match) else {}
    n = len(rows)
    return {
        "experiment": experiment,
        "num_jumps": n,
        "jump_summary": {
            "mean_magnitude": float(rows["magnitude"].mean()) if n else 0,
            "mean_speed": float(rows["speed"].mean()) if n else 0,
            "phases": [str(p) for p in rows["phase_category"]],
        },
        "critical_periods": period_row,
    }
