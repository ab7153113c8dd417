"""Turn a user's location (path or URL) into a Zarr store object."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zarr.abc.store import Store as ZarrStore
from zarr.storage import FsspecStore, LocalStore

from ndt_store.errors import NdtStoreError, StorageError, require

_OURS = frozenset({".locks"})
"""Entries ndt_store itself may leave in a store directory before its root metadata."""


def is_url(location: str | os.PathLike[str]) -> bool:
    """True when ``location`` names a remote (non-file) URL such as ``s3://bucket/x``."""
    text = os.fspath(location)
    return "://" in text and not text.startswith("file://")


def local_path(location: str | os.PathLike[str]) -> Path | None:
    """The local directory behind ``location``, or ``None`` for a remote URL."""
    if is_url(location):
        return None
    text = os.fspath(location)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return Path(text).expanduser().resolve()


def make_zarr_store(
    location: str | os.PathLike[str],
    *,
    read_only: bool,
    storage_options: dict[str, Any] | None = None,
) -> ZarrStore:
    """Create the Zarr store for ``location``.

    Local paths use :class:`zarr.storage.LocalStore`; URLs go through fsspec
    (credentials and endpoints from the usual environment/config files).
    """
    path = local_path(location)
    if path is not None:
        if storage_options:
            raise NdtStoreError("storage_options apply to URLs only, not to a local directory")
        return LocalStore(path, read_only=read_only)
    url = os.fspath(location)
    protocol = url.split("://", 1)[0]
    if protocol in {"s3", "s3a"}:
        require("s3fs", "s3")
    options = dict(storage_options or {})
    return FsspecStore.from_url(url, storage_options=options, read_only=read_only)


def check_local_target(location: str | os.PathLike[str]) -> None:
    """Refuse a local ``location`` that cannot be a store directory.

    Raises
    ------
    NdtStoreError
        If the path is a regular file (or another non-directory).
    """
    path = local_path(location)
    if path is not None and path.exists() and not path.is_dir():
        raise NdtStoreError(
            f"{os.fspath(location)!r} is a file, not a store directory; "
            "give a directory path (it is created if missing)"
        )


def check_new_location(location: str | os.PathLike[str], names: list[str]) -> None:
    """Refuse to create a store where something else already lives.

    ``names`` are the entries found at ``location`` (which has no store root
    metadata). Only an empty location may become a store; a Zarr v2 dataset, or
    any other file, is never written into.

    Raises
    ------
    NdtStoreError
        Naming the location and what was found there.
    """
    found = sorted(n for n in names if n not in _OURS)
    if not found:
        return
    v2 = {".zgroup", ".zarray", ".zattrs", ".zmetadata"} & set(found)
    what = "a Zarr v2 dataset" if v2 else "not empty"
    shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
    raise NdtStoreError(
        f"{os.fspath(location)!r} is {what} and not an ndt_store store (found: {shown}); "
        "nothing was written: choose an empty or new location"
    )


def describe_os_error(location: str, exc: OSError) -> str:
    """A one-line description of a storage failure, naming the file and the cause."""
    where = exc.filename or location
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"{where}: no space left on the device holding store {location!r} "
            f"({exc.strerror}); nothing was committed by the failed write: free space and rerun"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"{where}: permission denied ({exc.strerror}); the store {location!r} is not "
            "writable by this user: open it with mode='r' to read it"
        )
    return f"{where}: storage error in store {location!r} ({exc.strerror or exc})"


@contextmanager
def storage_errors(location: str) -> Iterator[None]:
    """Turn operating-system errors of a store write into :class:`StorageError`.

    Errors of ndt_store itself pass unchanged; a ``StorageError`` is also an
    ``OSError``, so callers catching ``OSError`` still do.
    """
    try:
        yield
    except NdtStoreError:
        raise
    except OSError as exc:
        raise StorageError(describe_os_error(location, exc)) from exc
