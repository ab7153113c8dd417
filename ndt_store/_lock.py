"""Writer locks: one writer per experiment, released even when the process dies.

On a local directory the lock is an ``fcntl.flock`` on a file under
``<store>/.locks/``: the kernel drops it when the holding process exits for any
reason (SIGKILL included), so a crashed writer never leaves a stale lock. The
file itself stays (it records the last owner, for messages).

On ``s3://`` stores the lock is a lease object under ``<store>/.locks/`` written
only with S3 conditional puts (:mod:`ndt_store._objlock`): taken with
``If-None-Match``, renewed and released with ``If-Match``; a lease whose holder
stopped renewing it for ``NDT_STORE_S3_LOCK_TTL`` seconds (default 30) is
abandoned and may be taken over, and a writer whose lease lapsed is stopped
before its next write. Other URL schemes (``memory://``, ``gs://`` ...) have no
writer lock: one writer per experiment there (see ``docs/guarantees.md``).

Both locks refuse at once (non-blocking) with
:class:`~ndt_store.errors.ConflictError` naming the holder.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ndt_store.errors import ConflictError

try:  # pragma: no cover - platform dependent
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


@contextmanager
def local_lock(directory: Path, name: str, *, what: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock named ``name`` under ``directory``.

    Raises
    ------
    ConflictError
        If another process holds the lock.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                raise ConflictError(
                    f"{what} is being written by another process ({owner}); "
                    "wait for it to finish or write a different experiment"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_owner()).encode())
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}


def _read_owner(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096) or b"{}")
        return f"pid {info.get('pid')} on {info.get('host')}"
    except (OSError, ValueError):
        return "unknown owner"


def store_lock(
    zstore: Any, directory: Path | None, name: str, *, what: str
) -> AbstractContextManager[None]:
    """The writer lock ``name`` for a store: local flock, S3 lease, or none.

    Parameters
    ----------
    zstore
        The Zarr store of the ndt_store store.
    directory
        ``<store>/.locks`` for a local store, else ``None``.
    name
        Lock name (an experiment name, or ``table-<name>``).
    what
        What is locked, for messages.
    """
    if directory is not None:
        return local_lock(directory, name, what=what)
    from ndt_store._location import S3ZarrStore

    if isinstance(zstore, S3ZarrStore):
        return object_lock(zstore, name, what=what)
    return nullcontext()


@contextmanager
def object_lock(zstore: Any, name: str, *, what: str) -> Iterator[None]:
    """Hold the S3 lease ``name`` of ``zstore`` (see :mod:`ndt_store._objlock`).

    While held, every write through ``zstore`` first checks the lease.

    Raises
    ------
    ConflictError
        If another writer holds the lease, or this one lost it.
    """
    from ndt_store._objlock import ObjectLease, lease_key, lock_ttl

    lease = ObjectLease(zstore, lease_key(zstore, name), what=what, ttl=lock_ttl())
    lease.acquire()
    zstore.leases[name] = lease
    try:
        yield
    finally:
        zstore.leases.pop(name, None)
        lease.release()
