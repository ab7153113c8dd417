"""Turn a user's location (path or URL) into a Zarr store object.

Local paths get :class:`zarr.storage.LocalStore`. ``s3://`` URLs get
:class:`S3ZarrStore`: zarr's fsspec store with bounded request timeouts, one-line
errors (:class:`~ndt_store.errors.RemoteStoreError`) for an unreachable or frozen
endpoint, a missing bucket or missing credentials, its HTTP session closed when
the file system goes away or the interpreter exits, and the writer leases of
:mod:`ndt_store._objlock` checked before every write.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import re
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from zarr.abc.store import Store as ZarrStore
from zarr.storage import FsspecStore, LocalStore

from ndt_store.errors import NdtStoreError, RemoteStoreError, StorageError, require

_OURS = frozenset({".locks"})
"""Entries ndt_store itself may leave in a store directory before its root metadata."""
_ROOT_PARTIAL = re.compile(r"zarr\.[0-9a-f]{32}\.partial")
"""What zarr leaves of the root metadata when a process creating the store is killed
while writing it (a temporary file renamed into place once whole)."""

#: Seconds allowed to connect to, and between bytes read from, an S3 endpoint.
S3_TIMEOUT_ENV = "NDT_STORE_S3_TIMEOUT"
#: Attempts per S3 request (transient errors and timeouts are retried).
S3_ATTEMPTS_ENV = "NDT_STORE_S3_ATTEMPTS"
DEFAULT_S3_TIMEOUT = 20.0
DEFAULT_S3_ATTEMPTS = 3

F = TypeVar("F", bound=Callable[..., Any])


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


def _env_number(name: str, default: float, *, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise NdtStoreError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise NdtStoreError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def s3_limits() -> tuple[float, int]:
    """The per-request timeout (seconds) and attempts for S3, from the environment.

    ``NDT_STORE_S3_TIMEOUT`` (default 20) bounds connecting and each wait for
    bytes; ``NDT_STORE_S3_ATTEMPTS`` (default 3) is how often a request is tried.
    A frozen endpoint therefore fails after about ``timeout × attempts`` seconds.
    """
    timeout = _env_number(S3_TIMEOUT_ENV, DEFAULT_S3_TIMEOUT, minimum=0.1)
    attempts = int(_env_number(S3_ATTEMPTS_ENV, DEFAULT_S3_ATTEMPTS, minimum=1))
    return timeout, attempts


def _s3_options(options: dict[str, Any]) -> tuple[dict[str, Any], float, int]:
    """Add bounded timeouts to s3fs options (the caller's own ``config_kwargs`` win)."""
    timeout, attempts = s3_limits()
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("connect_timeout", timeout)
    config.setdefault("read_timeout", timeout)
    # s3fs retries on its own; botocore's retries would multiply the attempts
    config.setdefault("retries", {"total_max_attempts": 1})
    out = {**options, "config_kwargs": config}
    timeout = max(float(config["connect_timeout"]), float(config["read_timeout"]))
    return out, timeout, attempts


def make_zarr_store(
    location: str | os.PathLike[str],
    *,
    read_only: bool,
    storage_options: dict[str, Any] | None = None,
) -> ZarrStore:
    """Create the Zarr store for ``location``.

    Local paths use :class:`zarr.storage.LocalStore`; ``s3://`` URLs use
    :class:`S3ZarrStore`; other URLs go through fsspec unchanged (credentials
    and endpoints from the usual environment/config files).
    """
    path = local_path(location)
    if path is not None:
        if storage_options:
            raise NdtStoreError("storage_options apply to URLs only, not to a local directory")
        return LocalStore(path, read_only=read_only)
    url = os.fspath(location)
    protocol = url.split("://", 1)[0]
    options = dict(storage_options or {})
    if protocol not in {"s3", "s3a"}:
        return FsspecStore.from_url(url, storage_options=options, read_only=read_only)
    require("s3fs", "s3")
    options, timeout, attempts = _s3_options(options)
    try:
        store = S3ZarrStore.from_url(url, storage_options=options, read_only=read_only)
    except Exception as exc:
        raise _translate(exc, url, timeout, attempts) or exc from None
    assert isinstance(store, S3ZarrStore)
    store.url, store.timeout, store.attempts = url, timeout, attempts
    store.fs.retries = attempts  # s3fs's own retry loop (its default is 5)
    return store


class _Lease(Protocol):
    def check(self) -> None: ...


def _guarded(method: F, *, write: bool) -> F:
    """Wrap an async store method: lease check before writes, one-line errors."""

    @functools.wraps(method)
    async def wrapper(self: S3ZarrStore, *args: Any, **kwargs: Any) -> Any:
        if write:
            self.check_leases()
        try:
            return await method(self, *args, **kwargs)
        except Exception as exc:
            err = _translate(exc, self.url, self.timeout, self.attempts)
            if err is None:
                raise
            raise err from None
        finally:
            self._close_session_later()

    return cast(F, wrapper)


def _guarded_iter(method: F) -> F:
    """Wrap an async listing method: one-line errors."""

    @functools.wraps(method)
    async def wrapper(self: S3ZarrStore, *args: Any, **kwargs: Any) -> AsyncIterator[str]:
        try:
            async for item in method(self, *args, **kwargs):
                yield item
        except Exception as exc:
            err = _translate(exc, self.url, self.timeout, self.attempts)
            if err is None:
                raise
            raise err from None
        finally:
            self._close_session_later()

    return cast(F, wrapper)


class S3ZarrStore(FsspecStore):
    """Zarr's fsspec store for ``s3://`` with bounded timeouts, clear errors and leases.

    Writes (``set``, ``delete``) first check every writer lease this store holds
    (see :mod:`ndt_store._objlock`): a writer whose lease has lapsed stops before
    it writes anything more.
    """

    url: str = ""
    timeout: float = DEFAULT_S3_TIMEOUT
    attempts: int = DEFAULT_S3_ATTEMPTS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.leases: dict[str, _Lease] = {}

    def with_read_only(self, read_only: bool = False) -> S3ZarrStore:
        out = super().with_read_only(read_only)
        assert isinstance(out, S3ZarrStore)
        out.url, out.timeout, out.attempts = self.url, self.timeout, self.attempts
        return out

    def __getstate__(self) -> dict[str, Any]:
        # a pickled copy (a dask task) reads; it holds no lease and builds its own clients
        state = dict(self.__dict__)
        state["leases"] = {}
        state.pop("_obstore", None)
        return state

    def check_leases(self) -> None:
        """Raise :class:`~ndt_store.errors.ConflictError` if a held writer lease lapsed."""
        for lease in list(self.leases.values()):
            lease.check()

    def _close_session_later(self) -> None:
        """Close the file system's HTTP session when it is collected or at exit.

        zarr opens s3fs in asynchronous mode, where s3fs registers no finalizer, so
        its aiohttp session would otherwise be reported unclosed at exit.
        """
        fs = self.fs
        creator = getattr(fs, "_s3creator", None)
        if creator is None or getattr(fs, "_ndt_finalizer", None) is not None:
            return
        fs._ndt_finalizer = weakref.finalize(fs, _close_s3_session, creator)

    async def _exists(self, key: str) -> bool:
        found = await FsspecStore.exists(self, key)
        if not found and key == "zarr.json":  # no store here: say so if the bucket is missing
            bucket = self.path.split("/", 1)[0]
            if not await self.fs._exists(bucket):
                raise FileNotFoundError(f"NoSuchBucket: {bucket}")
        return found

    get = _guarded(FsspecStore.get, write=False)
    get_partial_values = _guarded(FsspecStore.get_partial_values, write=False)
    exists = _guarded(_exists, write=False)
    getsize = _guarded(FsspecStore.getsize, write=False)
    set = _guarded(FsspecStore.set, write=True)
    delete = _guarded(FsspecStore.delete, write=True)
    delete_dir = _guarded(FsspecStore.delete_dir, write=True)
    list = _guarded_iter(FsspecStore.list)
    list_dir = _guarded_iter(FsspecStore.list_dir)
    list_prefix = _guarded_iter(FsspecStore.list_prefix)


def _close_s3_session(creator: Any) -> None:
    """Close an aiobotocore client (and its aiohttp session) on zarr's event loop."""
    from zarr.core.sync import _get_loop

    try:
        loop = _get_loop()
    except Exception:  # pragma: no cover - interpreter shutting down
        return
    if not loop.is_running() or loop.is_closed():  # pragma: no cover - at shutdown
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:  # collected on the loop's own thread: schedule, never block it
        loop.create_task(creator.__aexit__(None, None, None))
        return
    future = asyncio.run_coroutine_threadsafe(creator.__aexit__(None, None, None), loop)
    try:
        future.result(timeout=5)
    except Exception:  # pragma: no cover - best effort at exit
        future.cancel()


def _endpoint_of(exc: BaseException) -> str:
    text = str(exc)
    for marker in ('URL: "', "url='"):
        if marker in text:
            return text.split(marker, 1)[1].split('"', 1)[0].split("'", 1)[0]
    return "the endpoint"


def _translate(
    exc: BaseException, url: str, timeout: float, attempts: int
) -> RemoteStoreError | None:
    """A one-line :class:`RemoteStoreError` for a known S3 failure, else ``None``."""
    if isinstance(exc, NdtStoreError):
        return None
    try:
        from botocore import exceptions as bc
    except ImportError:  # pragma: no cover - s3fs always brings botocore
        return None
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    hint = f"{S3_TIMEOUT_ENV} / {S3_ATTEMPTS_ENV}"
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    if isinstance(exc, bc.NoCredentialsError | bc.PartialCredentialsError):
        return RemoteStoreError(
            f"{url}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass storage_options"
        )
    if isinstance(exc, bc.ReadTimeoutError | asyncio.TimeoutError | TimeoutError):
        return RemoteStoreError(
            f"{url}: the S3 endpoint did not answer within {timeout:g} s "
            f"({attempts} attempt(s); set {hint} to change) [{_endpoint_of(exc)}]"
        )
    if isinstance(exc, bc.ConnectTimeoutError | bc.EndpointConnectionError):
        return RemoteStoreError(
            f"{url}: cannot connect to the S3 endpoint {_endpoint_of(exc)} "
            f"({attempts} attempt(s), {timeout:g} s timeout; set {hint} to change)"
        )
    if isinstance(exc, bc.HTTPClientError | ConnectionError):
        return RemoteStoreError(f"{url}: S3 request failed ({name}: {text})")
    if isinstance(exc, FileNotFoundError) and (
        "bucket does not exist" in text or "NoSuchBucket" in text
    ):
        return RemoteStoreError(f"{url}: S3 bucket {bucket!r} does not exist")
    if isinstance(exc, PermissionError) or (
        isinstance(exc, bc.ClientError)
        and any(
            code in text
            for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403")
        )
    ):
        return RemoteStoreError(f"{url}: access denied by S3 ({text})")
    return None


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
    found = sorted(n for n in names if n not in _OURS and not _ROOT_PARTIAL.fullmatch(n))
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
