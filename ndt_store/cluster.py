"""Run ndt_store computations on a dask.distributed scheduler.

ndt_store builds lazy dask graphs whose tasks read their chunks from the store
(a task holds a store path and a chunk index, never the data), so any dask
scheduler can run them: the threaded default, a local cluster of processes or a
remote scheduler that can reach the same store (an ``s3://`` store for workers
on other machines). :func:`use_scheduler` selects one for a block of code; the
CLI's ``--scheduler ADDRESS`` and ``--workers N`` map onto its two arguments.

``distributed`` is an optional dependency (``pip install 'ndt-store[distributed]'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ndt_store.errors import InputError, require

__all__ = ["start_client", "use_scheduler"]


def start_client(
    address: str | None = None,
    workers: int | None = None,
    *,
    threads_per_worker: int = 1,
    memory_limit: str | int | None = "auto",
    **cluster_kwargs: Any,
) -> Any:
    """Connect to a scheduler or start a local cluster; return its ``Client``.

    The client becomes dask's default scheduler until it is closed. Close it
    with ``client.close()`` (its local cluster, if any, closes with it); or use
    :func:`use_scheduler`, which closes it for you.

    Parameters
    ----------
    address
        Address of a running scheduler (``tcp://host:8786``). Mutually
        exclusive with ``workers``.
    workers
        Start a :class:`distributed.LocalCluster` of this many worker processes.
    threads_per_worker
        Threads in each local worker.
    memory_limit
        Memory limit of each local worker (``"auto"``: share of the machine).
    cluster_kwargs
        More :class:`distributed.LocalCluster` arguments.

    Returns
    -------
    distributed.Client

    Examples
    --------
    >>> client = start_client(workers=1)  # doctest: +SKIP
    >>> client.close()  # doctest: +SKIP
    """
    if address is not None and workers is not None:
        raise InputError("give a scheduler address or a number of local workers, not both")
    if address is None and workers is None:
        raise InputError("start_client needs a scheduler address or a number of workers")
    distributed = require("distributed", "distributed")
    if address is not None:
        return distributed.Client(address)
    if int(workers) < 1:  # type: ignore[arg-type]
        raise InputError("the number of workers must be at least 1", field="workers", value=workers)
    cluster = distributed.LocalCluster(
        n_workers=int(workers),  # type: ignore[arg-type]
        threads_per_worker=threads_per_worker,
        processes=True,
        memory_limit=memory_limit,
        dashboard_address=cluster_kwargs.pop("dashboard_address", None),
        **cluster_kwargs,
    )
    client = distributed.Client(cluster)
    client._ndt_owned_cluster = cluster  # closed together with the client
    return client


@contextmanager
def use_scheduler(
    address: str | None = None,
    workers: int | None = None,
    **kwargs: Any,
) -> Iterator[Any]:
    """Run the dask computations of a block on a distributed scheduler.

    With neither argument this does nothing (the current scheduler, by default
    dask's threaded one, stays in use) and yields ``None``.

    Parameters
    ----------
    address
        Address of a running scheduler to connect to.
    workers
        Number of local worker processes to start instead.
    kwargs
        Passed to :func:`start_client`.

    Yields
    ------
    distributed.Client or None

    Examples
    --------
    >>> import dask.array as da
    >>> with use_scheduler() as client:   # no arguments: threaded scheduler
    ...     int(da.ones(10, chunks=5).sum().compute())
    10
    >>> with use_scheduler(workers=2) as client:  # doctest: +SKIP
    ...     total = da.ones(10, chunks=5).sum().compute()
    """
    if address is None and workers is None:
        yield None
        return
    client = start_client(address, workers, **kwargs)
    try:
        yield client
    finally:
        close_client(client)


def close_client(client: Any) -> None:
    """Close a client from :func:`start_client` and the local cluster it started."""
    cluster = getattr(client, "_ndt_owned_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()
