"""Stateful property test: random store operations checked against an in-memory model.

Hypothesis drives random sequences of create / write (ingest) / append /
snapshot / metadata update / delete / reopen, made through **two** ``Store``
objects on one store (each with its own, possibly stale, cache), with read-only
readers opened along the way. After every step a fresh store must list exactly
the model's experiments, and every experiment's Phase 1 values, metadata,
snapshot steps and weights must equal the model's, value for value (a
parameter absent at a step reads as NaN). Every reader opened earlier must
still read what it saw when it opened, through replaces and removals, until
the grace period is over. Refused operations (existing names, non-increasing
steps, duplicate snapshots) must raise the documented error and change nothing.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import ndt_store
from ndt_store import _dims as D
from ndt_store import store as store_module
from ndt_store.errors import ExperimentExistsError, InputError, NotFoundError

NAMES = st.sampled_from(["c.d", "é"])  # few names: writes meet often
LAYER_SETS = st.sampled_from([("x",), ("x", "y"), ("y", "z", "w")])
PARAMS = {"p.weight": (3, 2), "q.bias": (4,), "head.weight": (2, 2)}
PARAM_SETS = st.sampled_from(
    [("p.weight",), ("p.weight", "head.weight"), ("q.bias",), tuple(sorted(PARAMS))]
)
WHO = st.integers(0, 1)  # which of the two Store objects writes


def _values(steps: np.ndarray, n_layers: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, steps.size, n_layers])
    return {
        "metrics": rng.standard_normal((steps.size, n_layers, len(D.PHASE1_METRICS))),
        D.LOSS: rng.standard_normal(steps.size),
        D.GRAD_NORM: rng.random(steps.size),
        D.EPOCH: rng.integers(0, 100, steps.size),
    }


def _dataset(steps: np.ndarray, layers: tuple[str, ...], vals: dict[str, np.ndarray]) -> xr.Dataset:
    data: dict[str, Any] = {
        m: ((D.STEP, D.LAYER), vals["metrics"][:, :, k]) for k, m in enumerate(D.PHASE1_METRICS)
    }
    for v in (D.LOSS, D.GRAD_NORM, D.EPOCH):
        data[v] = (D.STEP, vals[v])
    return xr.Dataset(data, coords={D.STEP: steps, D.LAYER: list(layers)})


class StoreMachine(RuleBasedStateMachine):
    """The store versus a dict of expected experiments."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="ndt-stateful-"))
        self.path = self.tmp / "s.zarr"
        self.model: dict[str, dict[str, Any]] = {}
        self.seed = 0

    @initialize()
    def open(self) -> None:
        self.stores = [ndt_store.open_store(self.path), ndt_store.open_store(self.path)]
        self.readers: list[tuple[ndt_store.Store, dict[str, dict[str, Any]]]] = []

    @property
    def store(self) -> ndt_store.Store:
        return self.stores[self.who]

    who = 0

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _empty(self, layers: tuple[str, ...], meta: dict[str, Any]) -> dict[str, Any]:
        return {
            "layers": layers,
            "steps": np.zeros(0, np.int64),
            "vals": _values(np.zeros(0, np.int64), len(layers), 0),
            "meta": meta,
            "snaps": {},
        }

    # ------------------------------------------------------------------ rules
    @rule(name=NAMES, layers=LAYER_SETS, who=WHO)
    def create_run(self, name: str, layers: tuple[str, ...], who: int) -> None:
        self.who = who
        meta = {"arch_name": f"arch-{name}"}
        if name in self.model and self.model[name]["layers"] != layers:
            with pytest.raises(ExperimentExistsError, match="cannot resume"):
                self.store.create_run(name, meta, list(layers))
            return
        self.store.create_run(name, meta, list(layers))
        self.model.setdefault(name, self._empty(layers, meta))

    @rule(name=NAMES, layers=LAYER_SETS, n=st.integers(1, 5), overwrite=st.booleans(), who=WHO)
    def write_experiment(
        self, name: str, layers: tuple[str, ...], n: int, overwrite: bool, who: int
    ) -> None:
        self.who = who
        self.seed += 1
        steps = np.arange(n, dtype=np.int64) * 3
        vals = _values(steps, len(layers), self.seed)
        meta = {"arch_name": f"w{self.seed}", "num_steps": int(n)}
        ds = _dataset(steps, layers, vals)
        if name in self.model and not overwrite:
            with pytest.raises(ExperimentExistsError):
                self.store.write_experiment(name, ds, meta, content_hash=str(self.seed))
            return
        status = self.store.write_experiment(
            name, ds, meta, content_hash=str(self.seed), overwrite=overwrite
        )
        assert status == ("replaced" if name in self.model else "created")
        snaps = self.model[name]["snaps"] if name in self.model else {}
        self.model[name] = {
            "layers": layers,
            "steps": steps,
            "vals": vals,
            "meta": meta,
            "snaps": snaps,
        }

    @rule(name=NAMES, k=st.integers(1, 3), gap=st.integers(1, 4), who=WHO)
    def append(self, name: str, k: int, gap: int, who: int) -> None:
        self.who = who
        self.seed += 1
        if name not in self.model:
            layers = ("x",)
            with pytest.raises(NotFoundError):
                self.store.append_phase1(
                    name, _dataset(np.arange(k), layers, _values(np.arange(k), 1, self.seed))
                )
            return
        exp = self.model[name]
        last = int(exp["steps"][-1]) if exp["steps"].size else -1
        steps = last + gap * np.arange(1, k + 1, dtype=np.int64)
        vals = _values(steps, len(exp["layers"]), self.seed)
        count = self.store.append_phase1(name, _dataset(steps, exp["layers"], vals))
        exp["steps"] = np.concatenate([exp["steps"], steps])
        exp["vals"] = {v: np.concatenate([exp["vals"][v], vals[v]]) for v in vals}
        assert count == exp["steps"].size

    @precondition(lambda self: any(e["steps"].size for e in self.model.values()))
    @rule(data=st.data())
    def append_stale_step_is_refused(self, data: st.DataObject) -> None:
        name = data.draw(
            st.sampled_from(sorted(n for n, e in self.model.items() if e["steps"].size))
        )
        exp = self.model[name]
        steps = exp["steps"][-1:]
        with pytest.raises(InputError, match="steps must increase"):
            self.store.append_phase1(
                name, _dataset(steps, exp["layers"], _values(steps, len(exp["layers"]), 1))
            )

    @rule(name=NAMES, step=st.integers(0, 4), overwrite=st.booleans(), params=PARAM_SETS, who=WHO)
    def snapshot(
        self, name: str, step: int, overwrite: bool, params: tuple[str, ...], who: int
    ) -> None:
        self.who = who
        self.seed += 1
        rng = np.random.default_rng(self.seed)
        weights = {p: rng.standard_normal(PARAMS[p]).astype(np.float32) for p in params}
        if name not in self.model:
            with pytest.raises(NotFoundError):
                self.store.write_snapshot(name, step, weights=weights)
            return
        snaps = self.model[name]["snaps"]
        if step in snaps and not overwrite:
            with pytest.raises(ExperimentExistsError):
                self.store.write_snapshot(name, step, weights=weights)
            return
        status = self.store.write_snapshot(name, step, weights=weights, overwrite=overwrite)
        assert status == ("replaced" if step in snaps else "created")
        snaps[step] = weights

    @rule(name=NAMES, value=st.integers(0, 9), who=WHO)
    def update_metadata(self, name: str, value: int, who: int) -> None:
        self.who = who
        if name not in self.model:
            with pytest.raises(NotFoundError):
                self.store.update_metadata(name, num_epochs=value)
            return
        self.store.update_metadata(name, num_epochs=value)
        self.model[name]["meta"] = {**self.model[name]["meta"], "num_epochs": value}

    @rule()
    def open_reader(self) -> None:
        """A reader that reads everything now, then keeps its view while others write."""
        if len(self.readers) >= 2:
            self.readers.pop(0)
        reader = ndt_store.open_store(self.path, mode="r")
        frozen = copy.deepcopy(self.model)
        self.check_against_model(reader, frozen)
        self.readers.append((reader, frozen))

    @rule()
    def collect_after_grace(self) -> None:
        """Past the grace period, superseded groups go (and readers opened before with them)."""
        grace = store_module.GRACE_SECONDS
        store_module.GRACE_SECONDS = -1.0
        try:
            self.store.collect_garbage()
        finally:
            store_module.GRACE_SECONDS = grace
        self.readers.clear()

    @rule(name=NAMES, who=WHO)
    def delete(self, name: str, who: int) -> None:
        self.who = who
        if name not in self.model:
            with pytest.raises(NotFoundError):
                self.store.delete_experiment(name)
            return
        self.store.delete_experiment(name)
        del self.model[name]

    @rule(read_only=st.booleans())
    def reopen(self, read_only: bool) -> None:
        if read_only:
            self.check_against_model(ndt_store.open_store(self.path, mode="r"))
        self.stores[self.who] = ndt_store.open_store(self.path)

    # -------------------------------------------------------------- invariant
    @invariant()
    def store_equals_model(self) -> None:
        if hasattr(self, "stores"):
            fresh = ndt_store.open_store(self.path, mode="r")
            self.check_against_model(fresh)
            report = ndt_store.verify_store(fresh)
            assert report.ok, report.problems
            for reader, frozen in self.readers:
                self.check_against_model(reader, frozen, exact_columns=False)

    def check_against_model(
        self,
        store: ndt_store.Store,
        model: dict[str, dict[str, Any]] | None = None,
        *,
        exact_columns: bool = True,
    ) -> None:
        model = self.model if model is None else model
        assert store.experiments() == sorted(model)
        for name, exp in model.items():
            ds = store.phase1(name)
            assert ds[D.LAYER].values.tolist() == list(exp["layers"])
            np.testing.assert_array_equal(ds[D.STEP].values, exp["steps"])
            got = np.stack([ds[m].values for m in D.PHASE1_METRICS], -1)
            np.testing.assert_array_equal(got, exp["vals"]["metrics"])
            for v in (D.LOSS, D.GRAD_NORM, D.EPOCH):
                np.testing.assert_array_equal(ds[v].values, exp["vals"][v])
            assert store.metadata(name) == exp["meta"]
            steps = sorted(exp["snaps"])
            assert store.snapshot_steps(name) == steps
            if not steps:
                continue
            got = store.weights(name)
            params = {p for s in steps for p in exp["snaps"][s]}
            if exact_columns:  # an old reader may also see columns added since (all NaN)
                assert set(got) == params
            for param in params:
                w = got[param]
                assert w.step.values.tolist() == steps
                for i, s in enumerate(steps):
                    want = exp["snaps"][s].get(param)
                    if want is None:  # absent at this step: missing values, not an error
                        assert np.isnan(w.values[i]).all()
                    else:
                        np.testing.assert_array_equal(w.values[i], want)


StoreMachine.TestCase.settings = settings(max_examples=20, stateful_step_count=15, deadline=None)
TestStore = StoreMachine.TestCase


class StoreMachineLong(StoreMachine):
    """The same machine, run long enough to find rare interleavings (slow suite)."""


StoreMachineLong.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None
)
TestStoreLong = pytest.mark.slow(StoreMachineLong.TestCase)
