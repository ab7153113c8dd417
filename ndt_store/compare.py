"""Before/after comparisons of one run at two training steps.

:func:`compare_representations` compares the Phase 1 records nearest two
training steps (loss and every layer's four dimensionality metrics, selected in
one vectorized step) and, when the store holds tensors at both steps, the
weights (per parameter), activations (sparsity, selectivity, linear CKA) and
attention (entropy per head, specialization). Only the two steps are read.

Results are plain Python dicts of JSON types, ready for ``json.dump``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dask
import numpy as np
import xarray as xr
from dask.base import is_dask_collection

from ndt_store._dims import (
    ACTIVATIONS,
    ATTENTION,
    HEAD,
    INDEX,
    LAYER,
    LOSS,
    PHASE1_METRICS,
    STABLE_RANK,
    STEP,
    WEIGHTS,
)
from ndt_store.errors import InputError
from ndt_store.measures.activations import activation_selectivity, activation_sparsity
from ndt_store.measures.attention import attention_specialization
from ndt_store.measures.similarity import linear_cka
from ndt_store.measures.weights import (
    WEIGHT_CHANGE_VARIABLES,
    weight_change,
    weight_change_between,
)
from ndt_store.moments import CriticalMoment
from ndt_store.store import Store

__all__ = [
    "IN_MEMORY_BYTES",
    "RELATIVE_EPS",
    "compare_representations",
    "load_snapshots",
    "nearest_records",
    "phase1_changes",
    "read_if_small",
    "tensor_changes",
    "tensor_changes_many",
]

RELATIVE_EPS = 1e-10
"""Added to the "before" value in ``relative_change`` (the study's guard against 0)."""


def _py(value: Any) -> Any:
    """A numpy scalar as a Python scalar; NaN as ``None`` (JSON has no NaN)."""
    value = value.item() if isinstance(value, np.generic | np.ndarray) else value
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def nearest_records(steps: np.ndarray, requested: Any) -> np.ndarray:
    """Positions of the records nearest each requested training step (ties: earlier record).

    Examples
    --------
    >>> nearest_records(np.array([0, 5, 10]), [3, 7, 100]).tolist()
    [1, 1, 2]
    """
    steps = np.asarray(steps)
    req = np.atleast_1d(np.asarray(requested, dtype=np.float64))
    if steps.size == 0:
        raise InputError("no records to select from", field=STEP)
    return np.argmin(np.abs(steps[None, :] - req[:, None]), axis=1)


def _change(before: Any, after: Any) -> dict[str, Any]:
    return {
        "before": _py(before),
        "after": _py(after),
        "change": _py(after - before),
        "relative_change": _py((after - before) / (before + RELATIVE_EPS)),
    }


def phase1_changes(ds: xr.Dataset, step_before: float, step_after: float) -> dict[str, Any]:
    """Loss and per-layer metric changes between the records nearest two training steps.

    The records are picked with one vectorized selection (nearest step, ties
    to the earlier record, as the study did); the four metrics of every layer
    are differenced in one array operation.

    Parameters
    ----------
    ds
        One run's Phase 1 dataset over ``(step, layer)`` (:meth:`Store.phase1`).
    step_before, step_after
        Training steps (nearest records are used).

    Returns
    -------
    dict
        ``step_before``, ``step_after`` (of the records used), ``index_before``,
        ``index_after``, ``loss_before``, ``loss_after``, ``loss_change``,
        ``layer_changes`` (stable rank: ``{layer: {before, after, change,
        relative_change}}``, ``relative_change = change / (before + 1e-10)``)
        and ``metric_changes`` (the same for each of the four metrics).

    Examples
    --------
    >>> ds = xr.Dataset(
    ...     {"stable_rank": (("step", "layer"), [[1.0], [3.0]]), "loss": ("step", [2.0, 1.5])},
    ...     coords={"step": [0, 5], "layer": ["fc"]})
    >>> res = phase1_changes(ds, 0, 5)
    >>> res["loss_change"], res["layer_changes"]["fc"]["change"]
    (-0.5, 2.0)
    """
    pos = nearest_records(ds[STEP].values, [step_before, step_after])
    metrics = [m for m in PHASE1_METRICS if m in ds]
    if STABLE_RANK not in metrics:
        raise InputError(f"Phase 1 data has no {STABLE_RANK!r}", field=STABLE_RANK)
    picked = ds[[*metrics, LOSS]].isel({STEP: pos}).transpose(STEP, LAYER).compute()
    values = picked[metrics].to_array("metric").values  # (metric, 2, layer)
    before, after = values[:, 0], values[:, 1]
    change = after - before
    relative = change / (before + RELATIVE_EPS)
    layers = [str(x) for x in picked[LAYER].values]
    metric_changes: dict[str, dict[str, dict[str, Any]]] = {}
    for k, metric in enumerate(metrics):
        metric_changes[metric] = {
            layer: {
                "before": _py(before[k, j]),
                "after": _py(after[k, j]),
                "change": _py(change[k, j]),
                "relative_change": _py(relative[k, j]),
            }
            for j, layer in enumerate(layers)
            if not (np.isnan(before[k, j]) and np.isnan(after[k, j]))
        }
    loss = picked[LOSS].values
    index = picked[INDEX].values if INDEX in picked.coords else pos
    return {
        "step_before": int(picked[STEP].values[0]),
        "step_after": int(picked[STEP].values[1]),
        "index_before": int(index[0]),
        "index_after": int(index[1]),
        "loss_before": _py(loss[0]),
        "loss_after": _py(loss[1]),
        "loss_change": _py(loss[1] - loss[0]),
        "layer_changes": metric_changes[STABLE_RANK],
        "metric_changes": metric_changes,
    }


_NO_PHASE1: dict[str, Any] = dict.fromkeys(
    ("index_before", "index_after", "loss_before", "loss_after", "loss_change")
)


def _before_after(da: xr.DataArray) -> dict[str, Any]:
    values = np.asarray(da.values, dtype=np.float64)
    return {
        "before": _py(values[0]),
        "after": _py(values[1]),
        "change": _py(values[1] - values[0]),
    }


IN_MEMORY_BYTES = 256 << 20
"""Two steps' tensors up to this size are read into memory before they are compared."""


def read_if_small(
    arrays: Mapping[Any, xr.DataArray], max_bytes: int = IN_MEMORY_BYTES
) -> dict[Any, xr.DataArray] | None:
    """``arrays`` read into memory in one compute, or ``None`` (nothing read) when they
    total more than ``max_bytes``."""
    if sum(da.nbytes for da in arrays.values()) > max_bytes:
        return None
    values = dask.compute(*[da.data for da in arrays.values()])
    return {
        key: da.copy(data=np.asarray(v))
        for (key, da), v in zip(arrays.items(), values, strict=True)
    }


def _read_nested_if_small(
    sources: dict[str, dict[str, xr.DataArray]], max_bytes: int = IN_MEMORY_BYTES
) -> dict[str, dict[str, xr.DataArray]] | None:
    """:func:`read_if_small` of ``{kind: {name: array}}``."""
    flat = {(kind, name): da for kind, das in sources.items() for name, da in das.items()}
    read = read_if_small(flat, max_bytes)
    if read is None:
        return None
    out: dict[str, dict[str, xr.DataArray]] = {kind: {} for kind in sources}
    for (kind, name), da in read.items():
        out[kind][name] = da
    return out


def load_snapshots(
    store: Store, experiment: str, *, max_bytes: int = IN_MEMORY_BYTES
) -> dict[str, dict[str, xr.DataArray]] | None:
    """Every stored snapshot tensor of ``experiment``, read into memory in one compute.

    For callers that compare many pairs of steps (a report): each chunk is read
    once. Returns ``None`` when the tensors total more than ``max_bytes`` (compare
    them lazily, pair by pair, instead).

    Returns
    -------
    dict or None
        ``{kind: {name: DataArray over (step, ...)}}`` for the kinds stored.
    """
    sources: dict[str, dict[str, xr.DataArray]] = {}
    if store.snapshot_steps(experiment, WEIGHTS):
        sources[WEIGHTS] = dict(store.weights(experiment))
    if store.snapshot_steps(experiment, ACTIVATIONS):
        sources[ACTIVATIONS] = dict(store.activations(experiment))
    if store.snapshot_steps(experiment, ATTENTION):
        sources[ATTENTION] = dict(store.attention(experiment))
    return _read_nested_if_small(sources, max_bytes)


def tensor_changes(
    store: Store,
    experiment: str,
    step_before: int,
    step_after: int,
    *,
    loaded: Mapping[str, Mapping[str, xr.DataArray]] | None = None,
) -> dict[str, Any]:
    """Weight, activation and attention changes between two stored snapshot steps.

    Only kinds stored at *both* steps are compared; only those two steps are
    read. Up to :data:`IN_MEMORY_BYTES` they are read into memory in one
    ``dask.compute`` and measured with numpy; larger ones stay lazy and are
    measured in one ``dask.compute`` for everything.

    Returns
    -------
    dict
        Any of ``weights`` (``{parameter: {l2_norm, relative_change,
        max_change, mean_change, cosine_similarity, norm_before}}``;
        ``norm_before`` is the parameter's L2 norm at the first step), ``activations``
        (``{layer: {sparsity: {before, after, change}, selectivity: {...},
        linear_cka}}``; selectivity is the mean class-selectivity index over
        units) and ``attention`` (``{layer: {head_entropy: {head: {before,
        after, change}}, mean_entropy, specialization_index}}``).

    Parameters
    ----------
    loaded
        The experiment's tensors from :func:`load_snapshots`: the two steps are
        taken from them instead of being read.
    """
    pair = [int(step_before), int(step_after)]
    if pair[0] == pair[1]:
        return {}  # a moment compared with itself (e.g. a jump at record 0): nothing changed
    lazy: dict[str, dict[str, Any]] = {}

    def stored(kind: str) -> bool:
        have = set(store.snapshot_steps(experiment, kind))
        return all(s in have for s in pair)

    # the two steps' tensors, lazily; read into memory at once when small (the usual
    # case): the measures then run on numpy, without building a dask graph per tensor
    sources: dict[str, dict[str, xr.DataArray]] = {}
    if loaded is not None:
        for kind in (WEIGHTS, ACTIVATIONS, ATTENTION):
            if stored(kind) and kind in loaded:
                sources[kind] = {k: v.sel({STEP: pair}) for k, v in loaded[kind].items()}
    else:
        if stored(WEIGHTS):
            sources[WEIGHTS] = dict(store.weights(experiment, steps=pair))
        if stored(ACTIVATIONS):
            sources[ACTIVATIONS] = {
                k: v.sel({STEP: pair}) for k, v in store.activations(experiment).items()
            }
        if stored(ATTENTION):
            sources[ATTENTION] = {
                k: v.sel({STEP: pair}) for k, v in store.attention(experiment).items()
            }
        sources = _read_nested_if_small(sources) or sources
    if WEIGHTS in sources:
        lazy[WEIGHTS] = {}
        for name, w in sources[WEIGHTS].items():
            first = w.sel({STEP: pair[0]}).astype(np.float64)
            change = weight_change_between(w, pair[0], pair[1])
            lazy[WEIGHTS][name] = change.assign(norm_before=np.sqrt((first * first).sum()))
    if ACTIVATIONS in sources:
        acts: dict[str, Any] = {}
        for layer, two in sources[ACTIVATIONS].items():
            entry: dict[str, Any] = {
                "sparsity": activation_sparsity(two),
                "linear_cka": linear_cka(
                    two.isel({STEP: 0}, drop=True), two.isel({STEP: 1}, drop=True)
                ),
            }
            if "label" in two.coords:
                sel = activation_selectivity(two)["selectivity_index"]
                entry["selectivity"] = sel.mean([d for d in sel.dims if d != STEP])
            acts[layer] = entry
        lazy[ACTIVATIONS] = acts
    if ATTENTION in sources:
        lazy[ATTENTION] = {
            layer: attention_specialization(attn) for layer, attn in sources[ATTENTION].items()
        }
    # One compute for everything, over DataArrays: computing several Datasets that share
    # sub-expressions in one call trips a dask graph-merge error (dask 2026.8).
    flat: list[tuple[str, str, str | None, xr.DataArray]] = []
    for kind, entries in lazy.items():
        for name, value in entries.items():
            if isinstance(value, xr.Dataset):
                flat += [(kind, name, str(v), value[v]) for v in value.data_vars]
            else:
                flat += [(kind, name, k, v) for k, v in value.items()]
    values = [item[3] for item in flat]
    lazy_any = any(is_dask_collection(v) for v in values)
    computed = dask.compute(*values) if lazy_any else values
    done: dict[str, dict[str, Any]] = {kind: {} for kind in lazy}
    for (kind, name, var, _), value in zip(flat, computed, strict=True):
        done[kind].setdefault(name, {})[var] = value
    out: dict[str, Any] = {}
    if WEIGHTS in done:
        out[WEIGHTS] = {
            name: {v: _py(ds[v].values) for v in (*WEIGHT_CHANGE_VARIABLES, "norm_before")}
            for name, ds in done[WEIGHTS].items()
        }
    if ACTIVATIONS in done:
        out[ACTIVATIONS] = {}
        for layer, entry in done[ACTIVATIONS].items():
            res: dict[str, Any] = {
                "sparsity": _before_after(entry["sparsity"]),
                "linear_cka": _py(entry["linear_cka"].values),
            }
            if "selectivity" in entry:
                res["selectivity"] = _before_after(entry["selectivity"])
            out[ACTIVATIONS][layer] = res
    if ATTENTION in done:
        out[ATTENTION] = {}
        for layer, ds in done[ATTENTION].items():
            he = ds["head_entropy"].transpose(HEAD, STEP)
            out[ATTENTION][layer] = {
                "head_entropy": {
                    str(_py(h)): _before_after(he.sel({HEAD: h})) for h in he[HEAD].values
                },
                "mean_entropy": _before_after(ds["mean_entropy"]),
                "specialization_index": _before_after(ds["specialization_index"]),
            }
    return out


def _two(before: Any, after: Any) -> dict[str, Any]:
    """:func:`_before_after` of two scalars."""
    return _before_after(xr.DataArray(np.asarray([before, after])))


def _by_pair(da: xr.DataArray, steps: list[int]) -> xr.DataArray:
    """``da`` at ``steps`` (repeats allowed) along a positional ``pair`` dim."""
    picked = da.sel({STEP: steps})
    stale = [k for k, c in picked.coords.items() if STEP in c.dims]
    return picked.drop_vars(stale).rename({STEP: "pair"})


def tensor_changes_many(
    store: Store,
    experiment: str,
    pairs: list[tuple[int, int]],
    loaded: Mapping[str, Mapping[str, xr.DataArray]],
) -> dict[tuple[int, int], dict[str, Any]]:
    """:func:`tensor_changes` of many step pairs at once, from :func:`load_snapshots`.

    Per-step measures (sparsity, selectivity, attention entropy) are computed once
    over every stored step, and per-pair ones (weight change, linear CKA) in one
    vectorized reduction per tensor over all pairs, instead of a few dozen labeled
    operations per tensor and pair. Values equal :func:`tensor_changes`' up to
    floating-point summation order.

    Returns
    -------
    dict
        ``{(step_before, step_after): tensor_changes(...)}`` for every pair.
    """
    out: dict[tuple[int, int], dict[str, Any]] = {(int(b), int(a)): {} for b, a in pairs}

    def at_both(kind: str) -> list[tuple[int, int]]:
        have = set(store.snapshot_steps(experiment, kind))
        return [p for p in out if p[0] != p[1] and p[0] in have and p[1] in have]

    ps = at_both(WEIGHTS) if WEIGHTS in loaded else []
    if ps:
        befores, afters = [b for b, _ in ps], [a for _, a in ps]
        for name, w in loaded[WEIGHTS].items():
            red = [d for d in w.dims if d != STEP]
            before, after = _by_pair(w, befores), _by_pair(w, afters)
            ch = weight_change(before, after, dims=red)
            first = before.astype(np.float64)
            values = {v: ch[v].values for v in WEIGHT_CHANGE_VARIABLES}
            values["norm_before"] = np.sqrt(np.asarray((first * first).sum(red)))
            for i, p in enumerate(ps):
                out[p].setdefault(WEIGHTS, {})[name] = {k: _py(v[i]) for k, v in values.items()}
    ps = at_both(ACTIVATIONS) if ACTIVATIONS in loaded else []
    if ps:
        befores, afters = [b for b, _ in ps], [a for _, a in ps]
        for layer, act in loaded[ACTIVATIONS].items():
            sparsity = activation_sparsity(act)
            cka = np.asarray(linear_cka(_by_pair(act, befores), _by_pair(act, afters)))
            sel = None
            if "label" in act.coords:
                si = activation_selectivity(act)["selectivity_index"]
                sel = si.mean([d for d in si.dims if d != STEP])
            for i, (b, a) in enumerate(ps):
                entry: dict[str, Any] = {
                    "sparsity": _two(sparsity.sel({STEP: b}), sparsity.sel({STEP: a})),
                    "linear_cka": _py(cka[i]),
                }
                if sel is not None:
                    entry["selectivity"] = _two(sel.sel({STEP: b}), sel.sel({STEP: a}))
                out[(b, a)].setdefault(ACTIVATIONS, {})[layer] = entry
    ps = at_both(ATTENTION) if ATTENTION in loaded else []
    if ps:
        for layer, attn in loaded[ATTENTION].items():
            spec = attention_specialization(attn)
            he = spec["head_entropy"].transpose(STEP, HEAD)
            heads = [str(_py(h)) for h in he[HEAD].values]
            ent = he.values
            row = {int(s): i for i, s in enumerate(he[STEP].values)}
            mean, special = spec["mean_entropy"], spec["specialization_index"]
            for b, a in ps:
                i, j = row[b], row[a]
                out[(b, a)].setdefault(ATTENTION, {})[layer] = {
                    "head_entropy": {h: _two(ent[i, k], ent[j, k]) for k, h in enumerate(heads)},
                    "mean_entropy": _two(mean.sel({STEP: b}), mean.sel({STEP: a})),
                    "specialization_index": _two(special.sel({STEP: b}), special.sel({STEP: a})),
                }
    return out


def _step_of(moment: CriticalMoment | int, what: str) -> int:
    if isinstance(moment, CriticalMoment):
        return int(moment.step)
    if isinstance(moment, int | np.integer):
        return int(moment)
    raise InputError("expected a CriticalMoment or a training step", field=what, value=moment)


def compare_representations(
    store: Store,
    before: CriticalMoment | int,
    after: CriticalMoment | int,
    *,
    experiment: str | None = None,
    tensors: bool = True,
    phase1: str = "nearest",
    loaded: Mapping[str, Mapping[str, xr.DataArray]] | None = None,
    precomputed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare a run at two moments: Phase 1 changes, and tensor changes where stored.

    Every quantity is compared at the same two steps. Tensors are compared only
    where stored at exactly the two steps; Phase 1 records are the nearest ones
    (``phase1="nearest"``) or must sit exactly at the two steps
    (``phase1="exact"``; otherwise the Phase 1 part is left out). ``steps_used``
    says, per quantity, which steps were used and how far each is from the
    asked step.

    Parameters
    ----------
    store
        The store.
    before, after
        :class:`~ndt_store.moments.CriticalMoment` (its ``step`` is used as a
        training step) or training steps.
    experiment
        The run (default: the moments' ``experiment_name``).
    tensors
        Also compare stored weights/activations/attention at exactly these two
        steps (:func:`tensor_changes`) when present.
    phase1
        ``"nearest"`` (the study's rule) or ``"exact"`` (see above).
    loaded
        The experiment's tensors from :func:`load_snapshots`, when comparing
        many pairs: nothing is read again.
    precomputed
        This pair's entry of :func:`tensor_changes_many` (computed with the other
        pairs): used instead of computing the tensor changes here.

    Returns
    -------
    dict
        ``experiment``, ``requested_before``, ``requested_after``, the keys of
        :func:`phase1_changes` (``None``/empty for a run without Phase 1
        records; steps are then the requested ones), those of
        :func:`tensor_changes` when any, and ``steps_used``: ``{quantity:
        {before, after, distance_before, distance_after}}`` (a quantity
        absent at the steps is listed with ``before``/``after`` ``None``).

    Examples
    --------
    >>> import tempfile, ndt_store
    >>> from ndt_store.testing import write_phase1_json
    >>> d = tempfile.mkdtemp()
    >>> store = ndt_store.open_store(d + "/s.zarr")
    >>> _ = ndt_store.ingest_phase1(store, write_phase1_json(d + "/run.json", n_records=20))
    >>> res = compare_representations(store, 10, 52, experiment="run")
    >>> res["step_before"], res["step_after"], sorted(res["layer_changes"])
    (10, 50, ['fc1', 'fc2', 'fc3'])
    """
    names = {m.experiment_name for m in (before, after) if isinstance(m, CriticalMoment)}
    if experiment is None:
        if len(names) != 1:
            raise InputError(
                "give experiment= (or two moments of the same experiment)",
                field="experiment",
                value=sorted(names),
            )
        experiment = names.pop()
    elif names - {experiment}:
        raise InputError(
            f"moments belong to {sorted(names)}, not {experiment!r}", field="experiment"
        )
    if phase1 not in ("nearest", "exact"):
        raise InputError("phase1 must be 'nearest' or 'exact'", field="phase1", value=phase1)
    b, a = _step_of(before, "before"), _step_of(after, "after")
    out: dict[str, Any] = {"experiment": experiment, "requested_before": b, "requested_after": a}
    used: dict[str, dict[str, Any]] = {}
    ds = store.phase1(experiment)
    no_phase1 = {**_NO_PHASE1, "step_before": b, "step_after": a}
    if ds.sizes[STEP]:
        changes = phase1_changes(ds, b, a)
        sb, sa = changes["step_before"], changes["step_after"]
        if phase1 == "exact" and (sb, sa) != (b, a):
            out.update(no_phase1, layer_changes={}, metric_changes={})
            used["phase1"] = _used(None, None, b, a, nearest=(sb, sa))
        else:
            out.update(changes)
            used["phase1"] = _used(sb, sa, b, a)
    else:  # a run with tensors only (e.g. ingested checkpoints)
        out.update(no_phase1, layer_changes={}, metric_changes={})
    if tensors and store.snapshot_steps(experiment):
        if precomputed is not None:
            out.update(precomputed)
        else:
            out.update(tensor_changes(store, experiment, b, a, loaded=loaded))
        for kind in (WEIGHTS, ACTIVATIONS, ATTENTION):
            have = store.snapshot_steps(experiment, kind)
            if not have:
                continue
            if kind in out:
                used[kind] = _used(b, a, b, a)
            else:
                i, j = nearest_records(np.asarray(have), [b, a])
                used[kind] = _used(None, None, b, a, nearest=(int(have[i]), int(have[j])))
    out["steps_used"] = used
    return out


def _used(
    before: int | None, after: int | None, b: int, a: int, *, nearest: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Steps a quantity was compared at and their distance from the asked steps."""
    entry: dict[str, Any] = {
        "before": before,
        "after": after,
        "distance_before": None if before is None else abs(before - b),
        "distance_after": None if after is None else abs(after - a),
    }
    if nearest is not None:
        entry["nearest"] = list(nearest)
    return entry
