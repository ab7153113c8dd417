"""``ndt-store serve``: a read-only web app over a store (standard-library HTTP server).

Pages (``/``, ``/run``, ``/moments``, ``/compare``) carry their view's data as a
JSON island and poll ``/api/<view>`` with the same query string, so a run that
a :class:`~ndt_store.capture.Recorder` is writing grows on screen. Every view's
data download at ``/download/<view>.csv``. Only ``GET`` is served; names in
query strings are validated as the store validates them; the store object is
used by one request at a time and re-reads other writers' commits at most once
per ``refresh_s``.
"""

from __future__ import annotations

import contextlib
import gzip
import html
import ipaddress
import json
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ndt_store.errors import InputError, InvalidNameError, NdtStoreError, NotFoundError
from ndt_store.store import Store, open_store
from ndt_store.web import views
from ndt_store.web._assets import app_css, app_js, plotly_js
from ndt_store.web.page import render_page

__all__ = ["WebApp", "is_loopback", "make_server", "running_server", "serve"]

log = logging.getLogger(__name__)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""Content-Security-Policy of every page: scripts only from this server, no inline script."""

CACHE_SIZE = 64
"""Run and moments payloads kept, keyed by their query and what they were computed from."""

_STATIC: dict[str, tuple[str, Callable[[], str]]] = {
    "plotly.min.js": ("text/javascript; charset=utf-8", plotly_js),
    "app.js": ("text/javascript; charset=utf-8", app_js),
    "app.css": ("text/css; charset=utf-8", app_css),
}


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost``, ``127.x``, ``::1``).

    Examples
    --------
    >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_loopback("localhost")
    (True, False, True)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _one(query: Mapping[str, list[str]], key: str, default: str | None = None) -> str | None:
    values = query.get(key)
    return values[-1] if values else default


class WebApp:
    """What the server shows: views of one store, serialised for pages and the API.

    Parameters
    ----------
    store
        The store (never written).
    poll_ms
        How often open pages ask for new data.
    refresh_s
        Other writers' commits are looked for at most this often.
    """

    def __init__(self, store: Store, *, poll_ms: int = 2000, refresh_s: float = 1.0) -> None:
        self.store = store
        self.poll_ms = int(poll_ms)
        self.refresh_s = float(refresh_s)
        self._lock = threading.Lock()
        self._refreshed = time.monotonic()
        self._cache: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()

    def payload(self, view: str, query: Mapping[str, list[str]]) -> dict[str, Any]:
        """The data of ``view`` for a parsed query string (raises NdtStoreError on bad input)."""
        with self._lock:
            now = time.monotonic()
            if now - self._refreshed >= self.refresh_s:
                self.store.refresh()
                self._refreshed = now
            key = self._cache_key(view, query)
            if key is not None and key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            payload = self._compute(view, query)
            if key is not None:
                self._cache[key] = payload
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
            return payload

    def _cache_key(self, view: str, q: Mapping[str, list[str]]) -> tuple[Any, ...] | None:
        """What a run or moments payload depends on, read cheaply (None: not cached)."""
        if view not in ("run", "moments"):
            return None
        exp = views.validate_experiment(self.store, _one(q, "exp"))
        query = tuple(sorted((k, tuple(v)) for k, v in q.items()))
        return (view, query, *views.fingerprint(self.store, exp, phase1=view == "run"))

    def _compute(self, view: str, q: Mapping[str, list[str]]) -> dict[str, Any]:
        s = self.store
        if view == "runs":
            return views.runs_view(s)
        if view == "run":
            alpha = _one(q, "alpha", "0.05")
            try:
                a = float(alpha or "0.05")
            except ValueError:
                raise InputError(f"alpha must be a number, got {alpha!r}", field="alpha") from None
            return views.run_view(
                s, _one(q, "exp"), metric=_one(q, "metric"), alpha=a, show=_one(q, "show") or "all"
            )
        if view == "moments":
            return views.moments_view(
                s,
                _one(q, "exp"),
                before=_one(q, "before"),
                after=_one(q, "after"),
                layer=_one(q, "layer"),
                head=_one(q, "head"),
            )
        if view == "compare":
            return views.compare_view(
                s,
                q.get("exp", []),
                metric=_one(q, "metric"),
                layer=_one(q, "layer", "mean"),
                align=_one(q, "align", "step") or "step",
            )
        raise NotFoundError(f"no view {view!r}; views: {', '.join(views.VIEWS)}")

    def page(self, view: str, query: Mapping[str, list[str]]) -> str:
        """The HTML page of ``view`` with its data embedded."""
        data = {
            "config": {
                "mode": "server",
                "api": f"/api/{view}",
                "download": f"/download/{view}.csv",
                "poll_ms": self.poll_ms,
                "store": self.store.location,
            },
            "payload": self.payload(view, query),
        }
        return render_page(f"ndt-store · {view}", data, plots=view != "runs")


class _Handler(BaseHTTPRequestHandler):
    server_version = "ndt-store"
    app: WebApp

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # ------------------------------------------------------------ responses
    def _send(
        self, status: int, body: bytes, ctype: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, *, api: bool) -> None:
        if api:
            body = json.dumps({"error": message}).encode()
            self._send(status, body, "application/json; charset=utf-8")
            return
        page = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>ndt-store · error {status}</title>"
            '<link rel="stylesheet" href="/static/app.css"></head><body>'
            f'<main><h1>Error {status}</h1><p class="error" id="error">{html.escape(message)}</p>'
            '<p><a href="/">All runs</a></p></main></body></html>\n'
        )
        self._send(status, page.encode(), "text/html; charset=utf-8")

    def _static(self, name: str) -> None:
        found = _STATIC.get(name)
        if found is None:
            self._error(404, f"no static file {name!r}", api=False)
            return
        ctype, text = found
        body = _cached_bytes(name, text)
        headers = {"Cache-Control": "max-age=3600"}
        if "gzip" in self.headers.get("Accept-Encoding", "") and len(body) > 4096:
            body = _cached_gzip(name, text)
            headers["Content-Encoding"] = "gzip"
        self._send(200, body, ctype, headers)

    # --------------------------------------------------------------- routes
    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        query = parse_qs(parts.query, keep_blank_values=False)
        api = path.startswith(("/api/", "/download/"))
        try:
            if path.startswith("/static/"):
                self._static(path[len("/static/") :])
            elif path in ("/", "/runs"):
                self._html(self.app.page("runs", query))
            elif path in ("/run", "/moments", "/compare"):
                self._html(self.app.page(path[1:], query))
            elif path.startswith("/api/"):
                body = json.dumps(self.app.payload(path[5:], query), allow_nan=False)
                self._send(
                    200,
                    body.encode(),
                    "application/json; charset=utf-8",
                    {"Cache-Control": "no-store"},
                )
            elif path.startswith("/download/") and path.endswith(".csv"):
                view = path[len("/download/") : -len(".csv")]
                csv = views.view_csv(self.app.payload(view, query))
                self._send(
                    200,
                    csv.encode(),
                    "text/csv; charset=utf-8",
                    {
                        "Content-Disposition": f'attachment; filename="ndt-store-{view}.csv"'
                        if view in views.VIEWS
                        else "attachment",
                        "Cache-Control": "no-store",
                    },
                )
            elif path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")
            else:
                self._error(404, f"no page at {path!r}", api=False)
        except (InvalidNameError, InputError) as exc:
            self._error(400, str(exc), api=api)
        except NotFoundError as exc:
            self._error(404, str(exc), api=api)
        except NdtStoreError as exc:
            self._error(500, str(exc), api=api)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("error serving %s", self.path)
            self._error(500, "internal error (see the server's log)", api=api)

    do_HEAD = do_GET

    def _html(self, text: str) -> None:
        self._send(200, text.encode(), "text/html; charset=utf-8", {"Cache-Control": "no-store"})

    def _refuse(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "the server is read-only", api=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse


_BYTES: dict[str, bytes] = {}
_GZIP: dict[str, bytes] = {}


def _cached_bytes(name: str, text: Callable[[], str]) -> bytes:
    if name not in _BYTES:
        _BYTES[name] = text().encode("utf-8")
    return _BYTES[name]


def _cached_gzip(name: str, text: Callable[[], str]) -> bytes:
    if name not in _GZIP:
        _GZIP[name] = gzip.compress(_cached_bytes(name, text), compresslevel=6, mtime=0)
    return _GZIP[name]


def make_server(
    store: Store | str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    poll_ms: int = 2000,
    refresh_s: float = 1.0,
    storage_options: dict[str, Any] | None = None,
) -> ThreadingHTTPServer:
    """A (not yet running) HTTP server of ``store``; ``port=0`` picks a free port.

    The app is at ``server.app``; the address at ``server.server_address``.
    """
    if not isinstance(store, Store):
        store = open_store(store, mode="r", storage_options=storage_options)
    plotly_js()  # fail now, with the install hint, if the [web] extra is missing
    app = WebApp(store, poll_ms=poll_ms, refresh_s=refresh_s)
    handler = type("Handler", (_Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.app = app  # type: ignore[attr-defined]
    return server


@contextlib.contextmanager
def running_server(store: Store | str, **kwargs: Any) -> Iterator[str]:
    """Run a server in a thread; yields its base URL (``http://127.0.0.1:PORT``).

    Examples
    --------
    >>> import tempfile, urllib.request, ndt_store
    >>> store = ndt_store.synth_store(tempfile.mkdtemp() + "/s.zarr", experiments=1,
    ...                               steps=0, records=20)
    >>> with running_server(store) as url:
    ...     urllib.request.urlopen(url + "/api/runs").status
    200
    """
    server = make_server(store, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="ndt-store-web")
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def serve(
    store: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    poll_ms: int = 2000,
    storage_options: dict[str, Any] | None = None,
    out: Any = None,
) -> None:
    """Serve ``store`` until interrupted (Ctrl-C); warns when ``host`` is not loopback."""
    out = out or sys.stderr
    if not is_loopback(host):
        print(
            f"ndt-store serve: warning: listening on {host}, which is not a loopback address: "
            "anyone who can reach this machine can read the store (no authentication). "
            "Use the default --host 127.0.0.1 and an SSH tunnel to share it.",
            file=out,
        )
    server = make_server(store, host, port, poll_ms=poll_ms, storage_options=storage_options)
    h, p = (str(v) for v in server.server_address[:2])
    shown = f"[{h}]" if ":" in h else h
    print(f"ndt-store serve: {store} at http://{shown}:{p}/ (Ctrl-C stops)", file=out, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
