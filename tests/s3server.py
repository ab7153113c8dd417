"""A real S3 HTTP endpoint for tests: moto's server on loopback, with S3's atomic conditions.

moto checks ``If-None-Match`` / ``If-Match`` and then writes, in two steps, so two
concurrent conditional puts can both pass its check (seen: 2 of 100 races of
four ``If-Match`` puts). Real S3 evaluates the condition and the write atomically;
:func:`start_server` serialises moto's object PUT and DELETE handling to give the
test endpoint the same semantics. Nothing else about moto is changed.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

BUCKET = "ndt-test-bucket"
NO_LEAKS = [
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]
"""``pytestmark`` of the S3 test modules: an unclosed HTTP session or socket fails the
test (not just a message at exit)."""
_ATOMIC = threading.Lock()


def _serialised(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _ATOMIC:
            return method(*args, **kwargs)

    wrapper.__ndt_atomic__ = True  # type: ignore[attr-defined]
    return wrapper


def make_conditions_atomic() -> None:
    """Make moto's conditional object writes atomic, as on S3 (idempotent)."""
    from moto.s3.responses import S3Response

    for name in ("put_object", "delete_object"):
        method = getattr(S3Response, name)
        if not getattr(method, "__ndt_atomic__", False):
            setattr(S3Response, name, _serialised(method))


def start_server() -> tuple[Any, str]:
    """Start moto's threaded server on 127.0.0.1 (a free port); return it and its URL."""
    from moto.server import ThreadedMotoServer

    make_conditions_atomic()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
CLEARED_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3")


def client_env(endpoint: str) -> dict[str, str]:
    """Environment for a client process of ``endpoint`` (fake credentials)."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env.update(FAKE_ENV, AWS_ENDPOINT_URL=endpoint)
    return env


def reset(endpoint: str, bucket: str = BUCKET) -> None:
    """Empty the server and create ``bucket``."""
    import boto3
    import requests

    requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    client.close()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A moto S3 server for the test module; its URL."""
    server, url = start_server()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, empty bucket; fake credentials and the endpoint in the environment."""
    import s3fs

    for key in CLEARED_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in FAKE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    reset(s3_server)
    s3fs.S3FileSystem.clear_instance_cache()
    yield f"s3://{BUCKET}"
    s3fs.S3FileSystem.clear_instance_cache()
