"""Measurements on a dask.distributed cluster: equal to threaded, small graphs, fault tolerant."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

import ndt_store
from ndt_store import _dims as D
from ndt_store.cluster import start_client, use_scheduler
from ndt_store.errors import InputError
from ndt_store.measures.attention import attention_entropy
from ndt_store.synth import synth_store
from ndt_store.testing import raise_if_computed

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

# functions of this module travel to the workers by value (workers cannot import tests/)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SIZES = dict(experiments=1, steps=24, layers=2, heads=3, seq=24, samples=4, records=10)


@pytest.fixture(scope="module")
def attn_store(tmp_path_factory: pytest.TempPathFactory) -> ndt_store.Store:
    path = tmp_path_factory.mktemp("dist") / "attn.zarr"
    synth_store(path, **SIZES, kinds=("attention",), seed=4)
    return ndt_store.open_store(path, mode="r")


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    with use_scheduler(workers=2, memory_limit="1GB") as c:
        yield c


def head_entropy(store: ndt_store.Store) -> xr.DataArray:
    """Mean attention entropy per (layer, step, head): the batch measurement under test."""
    name = store.experiments()[0]
    per_layer = [
        attention_entropy(a).mean((D.SAMPLE, D.QUERY)).expand_dims({D.LAYER: [layer]})
        for layer, a in store.attention(name).items()
    ]
    return xr.concat(per_layer, dim=D.LAYER)


def _numpy_reference(store: ndt_store.Store) -> np.ndarray:
    name = store.experiments()[0]
    out = []
    for a in store.attention(name).values():
        p = np.asarray(a.values, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
        out.append(ent.mean(axis=(1, 3)))
    return np.stack(out)


def test_threaded_matches_numpy_reference(attn_store: ndt_store.Store) -> None:
    with raise_if_computed():
        lazy = head_entropy(attn_store)
    assert lazy.dims == (D.LAYER, D.STEP, D.HEAD)
    with dask.config.set(scheduler="threads"):
        got = lazy.compute()
    np.testing.assert_allclose(got.values, _numpy_reference(attn_store), rtol=1e-5)


def test_distributed_equals_threaded(attn_store: ndt_store.Store, client: object) -> None:
    lazy = head_entropy(attn_store)
    with dask.config.set(scheduler="threads"):
        threaded = lazy.compute()
    on_cluster = client.compute(lazy).result()  # type: ignore[attr-defined]
    xr.testing.assert_identical(on_cluster, threaded)
    # the default scheduler inside use_scheduler is the cluster too
    assert len(client.scheduler_info()["workers"]) == 2  # type: ignore[attr-defined]
    xr.testing.assert_identical(lazy.compute(), threaded)


def test_tasks_carry_no_data(attn_store: ndt_store.Store) -> None:
    lazy = head_entropy(attn_store)
    graph = dict(lazy.__dask_graph__())
    payload = len(cloudpickle.dumps(graph, protocol=pickle.HIGHEST_PROTOCOL))
    data_bytes = sum(a.nbytes for a in attn_store.attention(attn_store.experiments()[0]).values())
    assert data_bytes > 1_000_000
    assert payload < 100_000, f"graph pickles to {payload} bytes for {len(graph)} tasks"
    assert payload < data_bytes / 10


def _slow(x: np.ndarray) -> np.ndarray:
    time.sleep(0.05)
    return x


def test_killed_worker_is_recovered(attn_store: ndt_store.Store, client: object) -> None:
    lazy = head_entropy(attn_store)
    with dask.config.set(scheduler="threads"):
        expected = lazy.compute()
    slowed = lazy.copy(data=lazy.data.map_blocks(_slow, dtype=lazy.dtype))
    pids = client.run(os.getpid)  # type: ignore[attr-defined]
    future = client.compute(slowed)  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the cluster is busy with our tasks
        if any(client.processing().values()):  # type: ignore[attr-defined]
            break
        time.sleep(0.01)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    assert not future.done(), "the computation ended before the worker was killed"
    result = future.result(timeout=120)
    xr.testing.assert_identical(result, expected)
    client.wait_for_workers(2, timeout=60)  # type: ignore[attr-defined]
    assert victim not in client.run(os.getpid).values()  # type: ignore[attr-defined]


def test_use_scheduler_without_arguments_keeps_threaded() -> None:
    with use_scheduler() as c:
        assert c is None
        assert dask.array.ones(4, chunks=2).sum().compute() == 4


def test_start_client_argument_errors() -> None:
    with pytest.raises(InputError, match="not both"):
        start_client("tcp://127.0.0.1:1", 2)
    with pytest.raises(InputError, match="needs"):
        start_client()
    with pytest.raises(InputError, match="at least 1"):
        start_client(workers=0)


def test_store_on_disk_is_read_by_workers(attn_store: ndt_store.Store, client: object) -> None:
    """Workers open the chunks themselves: the result is right even if the client cannot read."""
    lazy = head_entropy(attn_store)
    with dask.config.set(scheduler="threads"):
        expected = lazy.compute()
    where = client.run(  # type: ignore[attr-defined]
        lambda: os.path.isdir(str(Path(attn_store.location)))
    )
    assert all(where.values())
    xr.testing.assert_identical(client.compute(lazy).result(), expected)  # type: ignore[attr-defined]
