"""The jump table read straight from Phase 1 frames equals the one built through the catalog.

``store_jumps`` (and ``ndt-store jumps``) read each run's frame with numpy and
test its series in this process; ``store_jumps(via_catalog=True)`` builds the
labeled cross-experiment view and runs :func:`jump_table` on it. Both share the
numeric core, but everything around it (which series exist, their order,
ragged step grids, missing records, metadata labels, the published clusters)
is done twice, so the two are compared on stores built to differ in each.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import ndt_store
from ndt_store import _dims as D
from ndt_store._jumps import store_jump_columns
from ndt_store._kernels import dynamics as K
from ndt_store.cli import main
from ndt_store.cli._common import print_table
from ndt_store.errors import InputError, NotFoundError
from ndt_store.moments import store_jumps


def _phase1(rng: np.random.Generator, steps: np.ndarray, layers: list[str]) -> xr.Dataset:
    n = steps.size
    data = {}
    for k, metric in enumerate(D.PHASE1_METRICS):
        walk = np.cumsum(rng.normal(size=(n, len(layers))), axis=0) + 10.0 * (k + 1)
        walk[n // 2 :] += rng.uniform(5, 15, size=len(layers))  # a planted jump
        data[metric] = ((D.STEP, D.LAYER), walk)
    data[D.LOSS] = (D.STEP, np.linspace(2.0, 0.1, n))
    return xr.Dataset(data, coords={D.STEP: steps, D.LAYER: layers})


@pytest.fixture(scope="module")
def ragged(tmp_path_factory) -> ndt_store.Store:
    """Runs that differ in every way the two paths must agree on."""
    store = ndt_store.open_store(tmp_path_factory.mktemp("jl") / "s.zarr")
    rng = np.random.default_rng(7)
    b = _phase1(rng, np.arange(0, 300, 5), ["fc2", "fc1", "attn"])  # layers not sorted
    b[D.STABLE_RANK][10, 1] = np.nan  # one missing record in one layer
    b[D.STABLE_RANK][:, 2] = np.nan  # a layer without this metric at all
    store.write_experiment("b_run", b, {"arch_name": "mlp", "dataset": "mnist", "num_steps": 300})
    a = _phase1(rng, np.arange(0, 240, 3), ["fc1", "conv"])  # another step grid
    store.write_experiment("a_run", a, {"arch_name": "cnn", "num_steps": 240})  # no dataset
    store.write_experiment("d_run", _phase1(rng, np.arange(0, 9, 3), ["fc1"]), {})  # 3 records
    store.create_run("c_run", {"arch_name": "mlp"}, ["fc1"])  # no records yet
    jumps = store_jumps(store, ["b_run"])  # a published table covering some rows
    pub = jumps[["experiment", "layer", "step"]].iloc[::2].copy()
    pub["cluster"] = np.arange(len(pub)) % 3
    store.write_table(D.JUMPS_TABLE, pub)
    return ndt_store.open_store(store.location, mode="r")


OPTIONS = [
    {},
    {"alpha": 0.05},
    {"metric": "participation_ratio", "phase": "index"},
    {"threshold": 1.5, "experiments": ["b_run", "a_run", "b_run"]},
    {"experiments": ["c_run", "d_run"]},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(map(str, o)) or "defaults")
def test_direct_read_equals_the_catalog_path(ragged, options):
    direct = store_jumps(ragged, **options)
    catalog = store_jumps(ragged, via_catalog=True, **options)
    pd.testing.assert_frame_equal(direct, catalog)
    if options.get("experiments") != ["c_run", "d_run"]:
        assert len(direct) > 0


def test_published_clusters_are_joined(ragged):
    table = store_jumps(ragged, ["b_run"])
    pub = ragged.table(D.JUMPS_TABLE)
    known = {(r.experiment, r.layer, r.step): r.cluster for r in pub.itertuples()}
    keys = zip(table.experiment, table.layer, table.step, strict=True)
    expected = [known.get(k, -1) for k in keys]
    assert table["cluster"].tolist() == expected
    assert (table["cluster"] >= 0).sum() == len(pub) and (table["cluster"] == -1).any()
    other = store_jumps(ragged, ["b_run"], metric="participation_ratio")
    assert (other["cluster"] == -1).all()  # clusters belong to the published stable-rank table


def test_rows_against_a_plain_numpy_reference(ragged):
    """Every z-rule jump of every present series, in (experiment, layer, index) order."""
    table = store_jumps(ragged)
    expected = []
    for name in sorted(ragged.experiments()):
        ds = ragged.phase1(name)
        for layer in sorted(str(x) for x in ds[D.LAYER].values):
            x = ds[D.STABLE_RANK].sel({D.LAYER: layer}).values
            x = x[~np.isnan(x)]
            if x.size < 2:
                continue
            v = np.diff(x)
            z = np.abs(v - v.mean()) / v.std()
            expected += [(name, layer, int(i)) for i in np.flatnonzero(z > 2.0)]
    assert list(zip(table.experiment, table.layer, table["index"], strict=True)) == expected
    b = table[table.experiment == "b_run"]
    steps = ragged.phase1("b_run")[D.STEP].values
    fc2 = b[b.layer == "fc2"]  # no missing record: train_step is the step of record i
    assert fc2["train_step"].tolist() == [float(steps[i]) for i in fc2["index"]]


def test_p_values_do_not_depend_on_threads(ragged):
    one = store_jump_columns(ragged, threads=1)
    two = store_jump_columns(ragged, threads=2)
    np.testing.assert_array_equal(one["p_value"], two["p_value"])
    assert np.isfinite(one["p_value"]).all()


def test_surrogate_threads_give_the_same_p_values():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(300, 150))
    v[::7, 40] += 8.0
    asked = np.abs(v) > 2.5
    ref = K.surrogate_pvalues(v, n_surrogates=199, alpha=0.05, asked=asked, return_used=True)
    par = K.surrogate_pvalues(
        v, n_surrogates=199, alpha=0.05, asked=asked, return_used=True, threads=3
    )
    for a, b in zip(ref, par, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_cli_output_is_what_pandas_writes(ragged, fmt, capsys):
    assert main(["jumps", "--store", ragged.location, "--format", fmt]) == 0
    got = capsys.readouterr().out
    ref = io.StringIO()
    with contextlib.redirect_stdout(ref):
        print_table(store_jumps(ragged, via_catalog=True), fmt)
    assert got == ref.getvalue()
    assert ("p_value" in got.splitlines()[0]) if fmt == "csv" else ('"p_value"' in got)


def test_cli_table_format_and_bad_input(ragged, capsys):
    assert main(["jumps", "--store", ragged.location, "-e", "a_run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["step", "magnitude", "speed"] and len(out) > 1
    with pytest.raises(NotFoundError, match="nope"):
        store_jump_columns(ragged, ["nope"])
    with pytest.raises(InputError, match="no metric 'loss'"):
        store_jump_columns(ragged, metric="loss")
    with pytest.raises(InputError, match="alpha"):
        store_jump_columns(ragged, alpha=2)
