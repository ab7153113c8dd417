"""The page's JavaScript and CSS: plotly.js from the installed ``plotly`` package, ours from here.

Nothing is fetched from a network: plotly.js ships inside the ``plotly`` wheel
(``plotly/package_data/plotly.min.js``), ``app.js``/``app.css`` ship in this
package. :func:`plotly_js` raises :class:`~ndt_store.errors.MissingDependencyError`
with the install hint when the ``[web]`` extra is missing.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
from pathlib import Path

from ndt_store.errors import MissingDependencyError

__all__ = ["app_css", "app_js", "plotly_js", "plotly_js_path"]

INSTALL_HINT = "pip install 'ndt-store[web]'"


def plotly_js_path() -> Path:
    """Path of the plotly.js bundle inside the installed ``plotly`` package."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the web views need plotly (its bundled plotly.js draws the charts): {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise MissingDependencyError(
            f"the installed plotly has no package_data/plotly.min.js ({path}); "
            f"reinstall it: {INSTALL_HINT}"
        )
    return path


@functools.cache
def plotly_js() -> str:
    """The plotly.js bundle's text (read once)."""
    return plotly_js_path().read_text(encoding="utf-8")


def _static(name: str) -> str:
    return importlib.resources.files("ndt_store.web").joinpath("static", name).read_text("utf-8")


@functools.cache
def app_js() -> str:
    """The page script that draws every view from the page's JSON data."""
    return _static("app.js")


@functools.cache
def app_css() -> str:
    """The page style sheet."""
    return _static("app.css")
