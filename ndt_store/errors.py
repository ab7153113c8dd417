"""The one exception hierarchy of ndt_store.

Every error the library raises on purpose derives from :class:`NdtStoreError`,
so ``except NdtStoreError`` catches all of them and nothing else. Messages name
the file, record, field and value at fault.
"""

from __future__ import annotations

from typing import Any


class NdtStoreError(Exception):
    """Root of every error raised by ndt_store."""


class NdtStoreWarning(UserWarning):
    """Root of every warning issued by ndt_store (errors under pytest)."""


class InvalidNameError(NdtStoreError, ValueError):
    """An experiment, layer or parameter name that could escape the store or is empty."""


class InputError(NdtStoreError, ValueError):
    """Input data (a file, a record, a field) is malformed.

    Parameters
    ----------
    message
        What is wrong.
    source
        The file (or other source) the bad input came from.
    record
        The record inside the source (index, or a description such as ``"row 12"``).
    field
        The field at fault.
    value
        The offending value (shown abbreviated).
    """

    def __init__(
        self,
        message: str,
        *,
        source: object | None = None,
        record: object | None = None,
        field: str | None = None,
        value: Any = None,
        has_value: bool = False,
    ) -> None:
        self.source = source
        self.record = record
        self.field = field
        self.value = value
        parts = []
        if source is not None:
            parts.append(str(source))
        if record is not None:
            parts.append(f"record {record}")
        if field is not None:
            parts.append(f"field {field!r}")
        where = ": ".join(parts)
        text = f"{where}: {message}" if where else message
        if has_value or value is not None:
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            text = f"{text} (got {shown})"
        super().__init__(text)


class ExperimentExistsError(NdtStoreError):
    """An experiment with different content already exists and overwrite was not asked for."""


class NotFoundError(NdtStoreError, KeyError):
    """A requested experiment, layer, step or array is not in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ConflictError(NdtStoreError):
    """Another writer holds the experiment being written."""


class RemoteStoreError(NdtStoreError, OSError):
    """An object store (S3) could not be reached, refused the credentials or lacks the bucket."""


class ReadOnlyError(NdtStoreError):
    """A write was attempted on a store opened read-only."""


class StorageError(NdtStoreError, OSError):
    """The storage refused a write or read: disk full, permission denied, I/O error."""


class CorruptStoreError(NdtStoreError):
    """Stored metadata or chunks are truncated, corrupt or inconsistent."""


class UnsafeCheckpointError(NdtStoreError):
    """A checkpoint would need to run arbitrary code to load; it was refused unrun."""


class MissingDependencyError(NdtStoreError, ImportError):
    """An optional dependency is needed for this call; the message says how to install it."""


def require(module: str, extra: str) -> Any:
    """Import an optional dependency or raise :class:`MissingDependencyError` with a hint.

    Parameters
    ----------
    module
        Module to import (``"torch"``).
    extra
        The ``ndt-store`` extra that installs it (``"torch"``).

    Returns
    -------
    module
        The imported module.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module!r} is needed for this feature but is not installed; "
            f"install it with: pip install 'ndt-store[{extra}]'"
        ) from exc
