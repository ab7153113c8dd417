"""Writer locks: one writer per experiment, released even when the process dies.

On a local directory the lock is an ``fcntl.flock`` on a file under
``<store>/.locks/``: the kernel drops it when the holding process exits for any
reason (SIGKILL included), so a crashed writer never leaves a stale lock. On
other locations (object storage) the lock is a small object created only if it
does not exist; it records its owner and time and is considered stale after
``stale_after`` seconds (see ``docs/guarantees.md``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
