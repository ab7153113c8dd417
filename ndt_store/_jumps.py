"""The jump table's numbers and labels in plain numpy, shared by every way of building it.

:func:`~ndt_store.measures.dynamics.jump_table` (labeled, dask-friendly, any
dataset) and :func:`store_jump_columns` (straight from a store's Phase 1
frames, used by ``ndt-store jumps`` and :func:`ndt_store.moments.store_jumps`)
both compute their rows here: the published z rule, the family-wise surrogate
p-values, the noise floor and the label columns. This module imports neither
xarray, pandas nor dask, so a command that only lists jumps starts quickly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from ndt_store import _dims as D
from ndt_store._kernels import dynamics as _k
from ndt_store._kernels.dynamics import DEFAULT_EPSILON
from ndt_store.errors import InputError


class JumpSource(Protocol):
    """What the jump table reads of a store: a :class:`~ndt_store.store.Store`, or the
    Zarr-free :class:`~ndt_store._local_read.LocalReader` that ``ndt-store jumps`` uses."""

    location: str

    def experiments(self) -> list[str]:
        """Committed experiments' names, sorted."""
        ...

    def metadata(self, experiment: str) -> dict[str, Any]:
        """Run metadata of one experiment."""
        ...

    def _phase1_arrays(
        self, names: Sequence[str], fields: tuple[str, ...]
    ) -> dict[str, dict[str, np.ndarray]]:
        """``fields`` of each run's Phase 1 frame (along-row ones cut to the committed rows)."""
        ...

    def _table_arrays(self, name: str, columns: Sequence[str]) -> dict[str, np.ndarray] | None:
        """``columns`` of a stored table, ``None`` if it or any column is absent."""
        ...


PhaseMode = Literal["train", "index"]
"""How a jump's ``phase`` is computed: from its training step or its record index."""

JUMP_COLUMNS: tuple[str, ...] = (
    *D.PUBLISHED_JUMP_COLUMNS,
    "index_phase",
    "index_phase_category",
    "index",
    "train_step",
    "z",
    "velocity",
    "p_value",
    "noise_floor",
    "significant",
)
"""Columns of the jump table: the published ones (less ``cluster``), then the additions.

``phase`` / ``phase_category`` follow the table's ``phase`` option (training
step by default); ``index_phase`` / ``index_phase_category`` always hold the
published formula, record index over ``num_steps``.
"""

DEFAULT_ALPHA = 0.05
"""Family-wise error rate per series used when none is given."""
DEFAULT_SURROGATES = 999
"""Surrogate series per series (p-values resolve down to 1/1000)."""
DEFAULT_FLOOR_ULPS = 1e4
"""Noise floor in units of ``eps·max|x|`` (≈ 2.2e-12 for float64 values near 1)."""

_DIRECTIONS = np.array(["decrease", "increase"], dtype=object)
_PHASES = np.array(["early", "mid", "late"], dtype=object)
_BLOCK_EXPERIMENTS = 256  # experiments read and tested at once: memory stays bounded


@dataclass(frozen=True)
class JumpTest:
    """Settings of the significance test attached to a jump table.

    ``alpha`` is the level the sequential test decides at and ``significant``
    is evaluated at; ``keep`` (``None``: every z-rule jump) drops the rows that
    are not significant at that level.
    """

    alpha: float = DEFAULT_ALPHA
    n_surrogates: int = DEFAULT_SURROGATES
    floor_ulps: float = DEFAULT_FLOOR_ULPS
    eps: float | None = None
    seed: int = 0
    keep: float | None = None


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float if it is a family-wise level in (0, 1), else :class:`InputError`.

    Examples
    --------
    >>> check_alpha(0.05)
    0.05
    """
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise InputError("alpha must be a number in (0, 1)", field="alpha", value=alpha) from None
    if not 0.0 < value < 1.0:
        raise InputError("alpha must lie strictly between 0 and 1", field="alpha", value=alpha)
    return value


def metric_eps(dtype: Any, eps: float | None) -> float:
    """Machine epsilon of the precision a metric was computed in (its dtype's by default)."""
    if eps is not None:
        return float(eps)
    dt = np.dtype(dtype)
    return float(np.finfo(dt if np.issubdtype(dt, np.floating) else np.float64).eps)


def jump_core(
    series: np.ndarray,
    threshold: float,
    test: JumpTest | None,
    *,
    eps: float,
    threads: int = 1,
) -> dict[str, np.ndarray]:
    """The numbers of the jump rows of ``(S, n)`` series (NaN = missing record).

    Returns ``row`` (the series), ``index`` (record index), ``velocity``,
    ``z``, ``magnitude``, ``speed``, ``position`` (of record ``index`` along
    the last axis), and ``p_value``, ``noise_floor``, ``significant`` (NaN /
    False without a test), one entry per jump, ordered by series then index.
    A series' p-values depend on its values, the seed and its length only,
    never on the other series computed with it.
    """
    series = np.asarray(series, dtype=np.float64)
    r, i, velocity, z, magnitude, speed, position = _k.jump_rows(series, threshold)
    out = {"row": r, "index": i.astype(np.int64), "velocity": velocity, "z": z,
           "magnitude": magnitude, "speed": speed, "position": position}  # fmt: skip
    if test is None:
        out["p_value"] = np.full(i.size, np.nan)
        out["noise_floor"] = np.full(i.size, np.nan)
        out["significant"] = np.zeros(i.size, dtype=bool)
        return out
    v = _k.first_difference(_k.compact(series)[0])
    asked = np.zeros(v.shape, dtype=bool)
    asked[r, i] = True  # p-values only for the table's rows
    _, p_all, _ = _k.surrogate_pvalues(
        v, n_surrogates=test.n_surrogates, seed=test.seed, alpha=test.alpha,
        epsilon=DEFAULT_EPSILON, asked=asked, return_used=True, threads=threads,
    )  # fmt: skip
    floor = _k.noise_floor(series, test.floor_ulps, eps)[r] if r.size else np.zeros(0)
    p_value = p_all[r, i]
    above = magnitude > floor
    out.update(p_value=p_value, noise_floor=floor, significant=(p_value <= test.alpha) & above)
    if test.keep is not None:
        kept = (p_value <= test.keep) & above
        out = {k: a[kept] for k, a in out.items()}
    return out


def _phase_code(phase: np.ndarray) -> np.ndarray:
    """0 early (< 0.33), 1 mid (< 0.67), 2 late: the study's phase categories."""
    return 2 - (phase < 0.33) - (phase < 0.67).astype(np.intp)


def label_columns(
    core: Mapping[str, np.ndarray],
    *,
    experiment: np.ndarray,
    layer: np.ndarray,
    arch_name: np.ndarray,
    dataset: np.ndarray,
    num_steps: np.ndarray,
    train_step: np.ndarray | None,
    phase: PhaseMode,
) -> dict[str, np.ndarray]:
    """The table's columns (:data:`JUMP_COLUMNS` order) from :func:`jump_core` and per-row labels.

    ``train_step`` ``None`` (no step coordinate): NaN, and ``phase`` from the
    record index.
    """
    i = core["index"]
    index_phase = i / num_steps
    if train_step is None:
        train_step = np.full(i.size, np.nan)
        phase = "index"
    shown = index_phase if phase == "index" else train_step / num_steps
    return {
        "step": i,
        "magnitude": core["magnitude"],
        "speed": core["speed"],
        "direction": _DIRECTIONS[(core["velocity"] > 0).astype(np.intp)],
        "phase": shown,
        "layer": layer,
        "experiment": experiment,
        "arch_name": arch_name,
        "dataset": dataset,
        "phase_category": _PHASES[_phase_code(shown)],
        "index_phase": index_phase,
        "index_phase_category": _PHASES[_phase_code(index_phase)],
        "index": i,
        "train_step": train_step,
        "z": core["z"],
        "velocity": core["velocity"],
        "p_value": core["p_value"],
        "noise_floor": core["noise_floor"],
        "significant": core["significant"],
    }


def experiment_names(store: JumpSource, experiments: Sequence[str] | None) -> list[str]:
    """``experiments`` once each, in the order given (default: all), each checked to exist.

    Raises
    ------
    NotFoundError
        Naming the store and the runs it has, for a name it does not hold.
    """
    names = store.experiments() if experiments is None else list(dict.fromkeys(experiments))
    for name in names:
        store.metadata(name)
    return names


def default_threads() -> int:
    """Threads for an in-process table: the CPUs this process may use (at most 8)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def store_jump_columns(
    store: JumpSource,
    experiments: Sequence[str] | None = None,
    *,
    threshold: float = 2.0,
    alpha: float | None = None,
    metric: str = D.STABLE_RANK,
    phase: PhaseMode = "train",
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """The jump table of stored runs as numpy columns, read straight from their Phase 1 frames.

    Equal, row for row, to :func:`~ndt_store.measures.dynamics.jump_table` on
    :meth:`Store.measurements` with the same options, plus the published
    ``cluster`` column (after ``phase_category``; ``-1`` where the stored
    published table has no such row). Series are read and tested in blocks
    (memory bounded), p-values computed on ``threads`` threads (default: the
    CPUs available).

    Returns
    -------
    dict
        Column name → array, rows sorted by experiment, layer and record index.
    """
    if phase not in ("train", "index"):
        raise InputError("phase must be 'train' or 'index'", field="phase", value=phase)
    if metric not in D.PHASE1_METRICS:
        raise InputError(
            f"no metric {metric!r} in the data (metrics: {', '.join(sorted(D.PHASE1_METRICS))})",
            field="metric",
            value=metric,
        )
    keep = None if alpha is None else check_alpha(alpha)
    test = JumpTest(alpha=DEFAULT_ALPHA if keep is None else keep, keep=keep)
    names = sorted(experiment_names(store, experiments))
    col = list(D.PHASE1_METRICS).index(metric)
    eps = metric_eps(np.float64, None)
    n_threads = threads or default_threads()
    starts = range(0, len(names), _BLOCK_EXPERIMENTS) or range(1)  # no runs: one empty block
    parts = [
        _block_rows(store, names[a : a + _BLOCK_EXPERIMENTS], a, col, threshold, test, eps,
                    n_threads)
        for a in starts
    ]  # fmt: skip
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    meta = _metadata_labels(store, names)
    e = rows.pop("exp")
    columns = label_columns(
        rows,
        experiment=np.asarray(names, dtype=object)[e],
        layer=rows.pop("layer_label"),
        arch_name=meta[D.ARCH_NAME][e],
        dataset=meta[D.DATASET][e],
        num_steps=meta[D.NUM_STEPS][e],
        train_step=rows.pop("train_step"),
        phase=phase,
    )
    cluster = published_clusters(store, columns) if metric == D.STABLE_RANK else None
    out: dict[str, np.ndarray] = {}
    for key, values in columns.items():
        out[key] = values
        if key == "phase_category":
            out["cluster"] = np.full(values.size, -1, np.int64) if cluster is None else cluster
    return out


def _block_rows(
    store: JumpSource,
    names: list[str],
    first: int,
    col: int,
    threshold: float,
    test: JumpTest,
    eps: float,
    threads: int,
) -> dict[str, np.ndarray]:
    """Jump rows of one block of experiments: numbers, experiment position, layer, train step."""
    found = store._phase1_arrays(names, (D.STEP, D.LAYER, "metrics"))
    series, exp_of, layer_of, steps = [], [], [], []
    for e, name in enumerate(names):
        arrays = found[name]
        layers = np.asarray([str(x) for x in arrays[D.LAYER]], dtype=object)
        metrics = arrays["metrics"]
        values = (
            metrics[:, :, col].T
            if metrics.ndim == 3 and metrics.shape[0]
            else np.full((layers.size, 0), np.nan)
        )
        order = np.argsort(layers.astype(str), kind="stable")  # rows by layer name
        present = order[~np.isnan(values[order]).all(axis=-1)] if values.shape[1] else order[:0]
        series.append(values[present])
        exp_of.append(np.full(present.size, first + e, dtype=np.int64))
        layer_of.append(layers[present])
        steps.append(np.asarray(arrays[D.STEP], dtype=np.float64))
    width = max((s.shape[1] for s in series), default=0)
    cube = np.full((sum(s.shape[0] for s in series), width), np.nan)
    at = 0
    for s in series:
        cube[at : at + s.shape[0], : s.shape[1]] = s
        at += s.shape[0]
    core = jump_core(cube, threshold, test, eps=eps, threads=threads)
    r = core.pop("row")
    exp = np.concatenate(exp_of) if exp_of else np.zeros(0, np.int64)
    lab = np.concatenate(layer_of) if layer_of else np.zeros(0, dtype=object)
    rel = exp[r] - first
    train_step = np.empty(r.size)
    for e in np.unique(rel):
        sel = rel == e
        train_step[sel] = steps[e][core["position"][sel]]
    return {**core, "exp": exp[r], "layer_label": lab[r], "train_step": train_step}


def _metadata_labels(store: JumpSource, names: list[str]) -> dict[str, np.ndarray]:
    """``arch_name``, ``dataset`` (labels) and ``num_steps`` (float) per experiment."""
    from ndt_store._entry_format import metadata_columns

    cols = metadata_columns(store, names)
    out: dict[str, np.ndarray] = {}
    for field in (D.ARCH_NAME, D.DATASET):
        values = cols.get(field)
        out[field] = (
            np.full(len(names), None, dtype=object)
            if values is None
            else np.asarray(values, dtype=object)
        )
    steps = cols.get(D.NUM_STEPS)
    out[D.NUM_STEPS] = (
        np.full(len(names), np.nan) if steps is None else np.asarray(steps, dtype=np.float64)
    )
    return out


def published_clusters(store: JumpSource, columns: Mapping[str, Any]) -> np.ndarray | None:
    """The published ``cluster`` of each jump row (``-1`` if absent), or ``None`` without the table.

    ``columns`` holds the rows' ``experiment``, ``layer`` and ``step`` (record index).
    """
    pub = store._table_arrays(D.JUMPS_TABLE, ("experiment", "layer", "step", "cluster"))
    if pub is None:
        return None
    lookup: dict[tuple[str, str, int], int] = {}
    for exp, layer, step, cluster in zip(
        pub["experiment"].tolist(), pub["layer"].tolist(), pub["step"].tolist(),
        pub["cluster"].tolist(), strict=True,
    ):  # fmt: skip
        known = cluster == cluster  # a missing (NaN) cluster reads as -1
        lookup.setdefault((str(exp), str(layer), int(step)), int(cluster) if known else -1)
    keys = zip(columns["experiment"].tolist(), columns["layer"].tolist(),
               columns["step"].tolist(), strict=True)  # fmt: skip
    return np.asarray([lookup.get((str(e), str(lay), int(s)), -1) for e, lay, s in keys],
                      dtype=np.int64)  # fmt: skip
