"""HTML pages: a small shell, the view's data as a JSON island, the scripts.

The data a page shows travel as JSON in ``<script type="application/json">``
(never executed; ``<``, ``>`` and ``&`` escaped as ``\\u003c`` ... so no name or
metadata value can close the element). The page script builds the DOM with
``textContent`` only, so nothing from the store is ever parsed as HTML.
"""

from __future__ import annotations

import html
import json
from typing import Any

from ndt_store.web._assets import app_css, app_js, plotly_js

__all__ = ["json_island", "render_page"]


def json_island(data: Any) -> str:
    """``data`` as JSON safe to place inside a ``<script type="application/json">`` element.

    Examples
    --------
    >>> json_island({"name": "</script><b>"})
    '{"name": "\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e"}'
    """
    text = json.dumps(data, allow_nan=False, ensure_ascii=False)
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _inline_script(js: str) -> str:
    return "<script>" + js.replace("</script", "<\\/script") + "</script>"


def render_page(
    title: str,
    data: dict[str, Any],
    *,
    inline: bool = False,
    plots: bool = True,
    extra_html: str = "",
) -> str:
    """One HTML page showing ``data`` (``{"config": ..., "payload": ...}``).

    Parameters
    ----------
    title
        Page title (escaped).
    data
        What the page script draws: ``config`` (mode, API address, polling) and
        ``payload`` (a view from :mod:`ndt_store.web.views`, or the report's views).
    inline
        Inline plotly.js, the script and the styles (a self-contained file);
        otherwise they are linked from the server's ``/static/``.
    plots
        Load plotly.js (the runs table draws no chart and loads only the page script).
    extra_html
        Trusted HTML (already escaped by its maker) placed after the views.
    """
    head = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
    ]
    if inline:
        head.append(f"<style>{app_css()}</style>")
        scripts = (_inline_script(plotly_js()) if plots else "") + _inline_script(app_js())
    else:
        head.append('<link rel="stylesheet" href="/static/app.css">')
        scripts = '<script src="/static/plotly.min.js"></script>' if plots else ""
        scripts += '<script src="/static/app.js"></script>'

    body = (
        '</head><body><header id="top"></header><main id="app">'
        '<p class="loading">Loading…</p></main>'
        + (f'<section id="written-report">{extra_html}</section>' if extra_html else "")
        + f'<script type="application/json" id="ndt-data">{json_island(data)}</script>'
        f"{scripts}</body></html>\n"
    )
    return "\n".join(head) + body
