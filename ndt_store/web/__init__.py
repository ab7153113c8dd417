"""Browse a store in a web browser: ``ndt-store serve`` and the interactive HTML report.

Needs the ``[web]`` extra (``pip install 'ndt-store[web]'``), which installs
plotly for its bundled plotly.js; the server is the standard library's
:class:`http.server.ThreadingHTTPServer`. Nothing here is imported by the core
package. See ``docs/web.md``.
"""

from __future__ import annotations

from ndt_store.web.report_page import report_page
from ndt_store.web.server import make_server, running_server, serve
from ndt_store.web.views import compare_view, moments_view, run_view, runs_view

__all__ = [
    "compare_view",
    "make_server",
    "moments_view",
    "report_page",
    "run_view",
    "running_server",
    "runs_view",
    "serve",
]
