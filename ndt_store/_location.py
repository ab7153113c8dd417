"""Turn a user's location (path or URL) into a Zarr store object."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zarr.abc.store import Store as ZarrStore
from zarr.storage import FsspecStore, LocalStore

from ndt_store.errors import NdtStoreError, require


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
