"""Stateful property test: random store operations checked against an in-memory model.

Hypothesis drives random sequences of create / write (ingest) / append /
snapshot / delete / reopen on one store; after every step the store must list
exactly the model's experiments, and every experiment's Phase 1 values,
metadata, snapshot steps and weights must equal the model's, value for value.
Refused operations (existing names, non-increasing steps, duplicate snapshots)
must raise the documented error and change nothing.
"""

from __future__ import annotations

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
from ndt_store.errors import ExperimentExistsError, InputError, NotFoundError

NAMES = st.sampled_from(["a", "b", "c.d", "é"])
LAYER_SETS = st.sampled_from([("x",), ("x", "y"), ("y", "z", "w")])


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
        self.store = ndt_store.open_store(self.path)

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
    @rule(name=NAMES, layers=LAYER_SETS)
    def create_run(self, name: str, layers: tuple[str, ...]) -> None:
        meta = {"arch_name": f"arch-{name}"}
        if name in self.model and self.model[name]["layers"] != layers:
            with pytest.raises(ExperimentExistsError, match="cannot resume"):
                self.store.create_run(name, meta, list(layers))
            return
        self.store.create_run(name, meta, list(layers))
        self.model.setdefault(name, self._empty(layers, meta))

    @rule(name=NAMES, layers=LAYER_SETS, n=st.integers(1, 5), overwrite=st.booleans())
    def write_experiment(self, name: str, layers: tuple[str, ...], n: int, overwrite: bool) -> None:
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

    @rule(name=NAMES, k=st.integers(1, 3), gap=st.integers(1, 4))
    def append(self, name: str, k: int, gap: int) -> None:
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

    @rule(name=NAMES, step=st.integers(0, 4), overwrite=st.booleans())
    def snapshot(self, name: str, step: int, overwrite: bool) -> None:
        self.seed += 1
        w = np.random.default_rng(self.seed).standard_normal((3, 2)).astype(np.float32)
        if name not in self.model:
            with pytest.raises(NotFoundError):
                self.store.write_snapshot(name, step, weights={"p.weight": w})
            return
        snaps = self.model[name]["snaps"]
        if step in snaps and not overwrite:
            with pytest.raises(ExperimentExistsError):
                self.store.write_snapshot(name, step, weights={"p.weight": w})
            return
        status = self.store.write_snapshot(name, step, weights={"p.weight": w}, overwrite=overwrite)
        assert status == ("replaced" if step in snaps else "created")
        snaps[step] = w

    @rule(name=NAMES)
    def delete(self, name: str) -> None:
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
        self.store = ndt_store.open_store(self.path)

    # -------------------------------------------------------------- invariant
    @invariant()
    def store_equals_model(self) -> None:
        if hasattr(self, "store"):
            self.check_against_model(self.store)

    def check_against_model(self, store: ndt_store.Store) -> None:
        assert store.experiments() == sorted(self.model)
        for name, exp in self.model.items():
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
            if steps:
                w = store.weights(name)["p.weight"]
                assert w.step.values.tolist() == steps
                np.testing.assert_array_equal(w.values, np.stack([exp["snaps"][s] for s in steps]))


StoreMachine.TestCase.settings = settings(max_examples=15, stateful_step_count=12, deadline=None)
TestStore = StoreMachine.TestCase
