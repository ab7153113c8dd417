"""Writer leases on S3: one writer per experiment, through conditional writes.

A lease is one small JSON object, ``<store>/.locks/<name>.lock``, written only with
S3 conditional puts (through ``obstore``):

- **acquire** creates it with ``If-None-Match: *``; if it exists and says
  ``released``, or has not been renewed for ``ttl`` seconds (its holder died),
  it is taken over with ``If-Match: <etag>`` — of two writers racing for it,
  exactly one succeeds, the other gets :class:`~ndt_store.errors.ConflictError`;
- **renew**: while held, a background thread rewrites it every ``ttl / 3``
  seconds with ``If-Match`` on the holder's own last etag; a failed
  precondition means the lease was taken over and it is marked lost;
- **check**: before every write the store asks the lease whether it is still
  safely held (renewed within ``2/3 · ttl`` by the local monotonic clock); a
  writer whose lease lapsed (a stalled process, a lost network) stops with
  ``ConflictError`` before writing anything more;
- **release** stops the thread (joined: no thread outlives the lease) and
  rewrites the object as ``released`` with ``If-Match``, so a release can never
  erase a lease that another writer took over.

Every body carries a fresh token, so two writes never share an etag. Staleness
compares the object's ``Last-Modified`` (the server's clock) with the local
clock: clocks must agree to within ``ttl / 3`` (NTP does much better).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from ndt_store._location import S3ZarrStore
from ndt_store.errors import ConflictError, RemoteStoreError, require

#: Seconds after which a lease nobody renewed is considered abandoned.
LOCK_TTL_ENV = "NDT_STORE_S3_LOCK_TTL"
DEFAULT_TTL = 30.0


def lock_ttl() -> float:
    """The lease time-to-live in seconds (``NDT_STORE_S3_LOCK_TTL``, default 30)."""
    raw = os.environ.get(LOCK_TTL_ENV, "").strip()
    if not raw:
        return DEFAULT_TTL
    try:
        value = float(raw)
    except ValueError:
        raise RemoteStoreError(f"{LOCK_TTL_ENV}={raw!r} is not a number") from None
    if value < 1:
        raise RemoteStoreError(f"{LOCK_TTL_ENV}={raw!r} must be at least 1 (seconds)")
    return value


def _obstore_for(zstore: S3ZarrStore) -> Any:
    """An obstore client for the bucket of ``zstore``, with the same endpoint,
    credentials and timeouts as its s3fs file system (cached on ``zstore``)."""
    client = getattr(zstore, "_obstore", None)
    if client is not None:
        return client
    require("obstore", "s3")
    from obstore.store import S3Store

    fs = zstore.fs
    bucket = zstore.path.split("/", 1)[0]
    client_kwargs = dict(getattr(fs, "client_kwargs", {}) or {})
    endpoint = (
        getattr(fs, "endpoint_url", None)
        or client_kwargs.get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    region = (
        client_kwargs.get("region_name")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )
    config: dict[str, Any] = {"region": region}
    if endpoint:
        config["endpoint"] = endpoint
    provider = None
    if getattr(fs, "anon", False):
        config["skip_signature"] = True
    elif getattr(fs, "key", None) and getattr(fs, "secret", None):
        config["access_key_id"] = fs.key
        config["secret_access_key"] = fs.secret
        if getattr(fs, "token", None):
            config["token"] = fs.token
    else:
        provider = _BotocoreCredentials(zstore.url)
    timeout = f"{zstore.timeout:g}s"
    client = S3Store(
        bucket,
        config=config,  # type: ignore[arg-type]
        client_options={
            "allow_http": bool(endpoint and endpoint.startswith("http://")),
            "connect_timeout": timeout,
            "timeout": timeout,
        },
        retry_config={"max_retries": max(zstore.attempts - 1, 0)},
        credential_provider=provider,  # type: ignore[arg-type]
    )
    zstore._obstore = client  # type: ignore[attr-defined]
    return client


class _BotocoreCredentials:
    """Credentials from botocore's usual chain (environment, profile, instance role)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self) -> dict[str, Any]:
        import botocore.session

        creds = botocore.session.get_session().get_credentials()
        if creds is None:
            raise RemoteStoreError(
                f"{self.url}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass storage_options"
            )
        frozen = creds.get_frozen_credentials()
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": None if frozen.token is None else _utcnow() + _minutes(5),
        }


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _minutes(n: int) -> Any:
    from datetime import timedelta

    return timedelta(minutes=n)


class ObjectLease:
    """A held (or to-be-held) writer lease on one object; see the module docstring.

    Parameters
    ----------
    zstore
        The store whose bucket holds the lease object.
    key
        Key of the lease object inside the bucket.
    what
        What the lease protects, for messages (``"experiment 'e1'"``).
    ttl
        Seconds without renewal after which the lease is abandoned.
    """

    def __init__(self, zstore: S3ZarrStore, key: str, *, what: str, ttl: float) -> None:
        self.zstore = zstore
        self.key = key
        self.what = what
        self.ttl = ttl
        self.lost: str | None = None
        self.took_over: dict[str, Any] | None = None
        self._etag: str | None = None
        self._renewed = 0.0  # monotonic time the last successful write was sent
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._io = threading.Lock()  # renewals and release never overlap

    # ------------------------------------------------------------ helpers
    def _body(self, state: str) -> bytes:
        info = {
            "state": state,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "time": time.time(),
            "token": uuid.uuid4().hex,
            "ttl": self.ttl,
        }
        return json.dumps(info).encode()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from obstore.exceptions import (
            AlreadyExistsError,
            NotFoundError,
            PreconditionError,
        )

        try:
            return fn(*args, **kwargs)
        except (AlreadyExistsError, PreconditionError, NotFoundError, FileNotFoundError):
            raise
        except RemoteStoreError:
            raise
        except Exception as exc:
            raise _lock_error(exc, self.zstore, self.key) from None

    # ------------------------------------------------------------ protocol
    def acquire(self) -> None:
        """Take the lease or raise :class:`~ndt_store.errors.ConflictError`."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

        client = _obstore_for(self.zstore)
        for _ in range(5):
            sent = time.monotonic()
            try:
                meta = self._call(obstore.put, client, self.key, self._body("held"), mode="create")
            except AlreadyExistsError:
                pass
            else:
                self._held(meta["e_tag"], sent)
                return
            try:
                current = self._call(obstore.get, client, self.key)
                raw = bytes(current.bytes())
            except (NotFoundError, FileNotFoundError):
                continue  # released by deletion in between (not done by us): retry
            etag = current.meta["e_tag"]
            info = _parse(raw)
            age = (_utcnow() - current.meta["last_modified"]).total_seconds()
            if info.get("state") == "held" and age <= self.ttl:
                raise ConflictError(
                    f"{self.what} is being written by another process "
                    f"(pid {info.get('pid')} on {info.get('host')}, lease renewed "
                    f"{max(age, 0):.0f} s ago); wait for it to finish or write a different "
                    f"experiment (a lease not renewed for {self.ttl:g} s is abandoned)"
                )
            sent = time.monotonic()
            try:
                meta = self._call(
                    obstore.put, client, self.key, self._body("held"), mode={"e_tag": etag}
                )
            except (PreconditionError, NotFoundError, FileNotFoundError):
                raise ConflictError(
                    f"{self.what}: another writer took the lock at the same moment; "
                    "retry when it has finished"
                ) from None
            if info.get("state") == "held":
                self.took_over = info
            self._held(meta["e_tag"], sent)
            return
        raise ConflictError(f"{self.what}: could not take the writer lock; retry")

    def _held(self, etag: str, sent: float) -> None:
        self._etag = etag
        self._renewed = sent
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._renew_loop, name=f"ndt-store-lease:{self.key}", daemon=True
        )
        self._thread.start()

    def _renew_loop(self) -> None:
        import obstore
        from obstore.exceptions import NotFoundError, PreconditionError

        client = _obstore_for(self.zstore)
        while not self._stop.wait(self.ttl / 3):
            with self._io:
                if self._stop.is_set() or self.lost:
                    return
                sent = time.monotonic()
                try:
                    meta = self._call(
                        obstore.put,
                        client,
                        self.key,
                        self._body("held"),
                        mode={"e_tag": self._etag},
                    )
                except (PreconditionError, NotFoundError, FileNotFoundError):
                    self.lost = "another writer took it over"
                    return
                except RemoteStoreError as exc:
                    if time.monotonic() - self._renewed > self.ttl:
                        self.lost = f"it could not be renewed for {self.ttl:g} s ({exc})"
                        return
                    continue  # transient: the lease is still valid, try again
                self._etag = meta["e_tag"]
                self._renewed = sent

    def check(self) -> None:
        """Raise :class:`~ndt_store.errors.ConflictError` unless the lease is safely held."""
        age = time.monotonic() - self._renewed
        if self.lost is None and age > self.ttl * 2 / 3:
            self.lost = f"it was last renewed {age:.0f} s ago (ttl {self.ttl:g} s)"
        if self.lost is not None:
            raise ConflictError(
                f"{self.what}: this writer lost its lock ({self.lost}); nothing more was "
                "written — what it committed before stays, retry the rest"
            )

    def release(self) -> None:
        """Stop renewing and mark the lease released (if it is still ours)."""
        import obstore
        from obstore.exceptions import NotFoundError, PreconditionError

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._etag is None:
            return
        with self._io:
            try:
                self._call(
                    obstore.put,
                    _obstore_for(self.zstore),
                    self.key,
                    self._body("released"),
                    mode={"e_tag": self._etag},
                )
            except (PreconditionError, NotFoundError, FileNotFoundError):
                self.lost = "another writer took it over"
            except RemoteStoreError:
                pass  # unreleased: it is abandoned after ttl seconds
            self._etag = None


def _lock_error(exc: Exception, zstore: S3ZarrStore, key: str) -> RemoteStoreError:
    """A one-line error for a failed lease request (obstore's messages span many lines)."""
    from ndt_store._location import S3_ATTEMPTS_ENV, S3_TIMEOUT_ENV

    text = " ".join(str(exc).split())
    where = f"{zstore.url}: writer lock {key!r}"
    limits = (
        f"{zstore.attempts} attempt(s), {zstore.timeout:g} s timeout; "
        f"set {S3_TIMEOUT_ENV} / {S3_ATTEMPTS_ENV} to change"
    )
    low = text.lower()
    if "connection refused" in low or "tcp connect" in low or "dns error" in low:
        return RemoteStoreError(f"{where}: cannot connect to the S3 endpoint ({limits})")
    if "timed out" in low or "timeout" in low or "error sending request" in low:
        return RemoteStoreError(f"{where}: the S3 endpoint did not answer ({limits})")
    if "credential" in low:
        return RemoteStoreError(f"{where}: no usable S3 credentials ({text[:200]})")
    if "403" in low or "accessdenied" in low or "forbidden" in low:
        return RemoteStoreError(f"{where}: access denied by S3 ({text[:200]})")
    if "nosuchbucket" in low:
        return RemoteStoreError(f"{where}: S3 bucket does not exist")
    return RemoteStoreError(f"{where}: S3 request failed ({type(exc).__name__}: {text[:200]})")


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        info = json.loads(raw)
    except ValueError:
        return {"state": "held"}  # unreadable: treat as held until it goes stale
    return info if isinstance(info, dict) else {"state": "held"}


def lease_key(zstore: S3ZarrStore, name: str) -> str:
    """The key (inside the bucket) of the lease object for ``name``."""
    root = zstore.path.split("/", 1)[1] if "/" in zstore.path else ""
    return f"{root}/.locks/{name}.lock" if root else f".locks/{name}.lock"
