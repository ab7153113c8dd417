"""The interactive ``report.html`` opens from file:// with networking off, and is right."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("plotly")

import ndt_store
from ndt_store import _dims as D
from ndt_store.report import write_report
from ndt_store.web.browser import (
    browser_problem,
    console_errors,
    headless_chromium,
    wait_ready,
)
from ndt_store.web.server import running_server

pytestmark = pytest.mark.skipif(
    browser_problem() is not None, reason=f"no headless browser: {browser_problem()}"
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    store = ndt_store.synth_store(
        base / "s.zarr", experiments=1, steps=6, layers=2, records=120, seed=5, snapshot_every=100
    )
    exp = store.experiments()[0]
    written = write_report(store, exp, base / "out", num_jumps=1, html_page=True)
    return store, exp, written["report.html"]


@pytest.fixture(scope="module")
def offline():
    drv = headless_chromium(offline=True)
    yield drv
    drv.quit()


def test_report_is_one_file_with_nothing_to_fetch(report):
    _, _, path = report
    text = path.read_text()
    markup = re.sub(r"<script>.*?</script>", "", text, flags=re.S)  # the HTML outside scripts
    assert text.count("<script") == 3  # plotly.js, the page script (inline), the JSON data
    assert not re.search(r"<script[^>]+src=", text)
    assert not re.search(r"<link[^>]+href=", text)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", markup)
    assert 'id="ndt-data"' in text and "Plotly" in text


def test_report_opens_offline_renders_and_shows_the_stores_values(report, offline, tmp_path):
    from PIL import Image
    from selenium.webdriver.support.ui import Select

    store, exp, path = report
    offline.get(path.as_uri())
    wait_ready(offline)
    assert offline.execute_script("return window.ndt.errors") == []
    assert console_errors(offline) == []
    # networking is really off for this page
    with running_server(store) as url:
        got = offline.execute_async_script(
            "const done = arguments[1];"
            "fetch(arguments[0]).then(() => done('fetched'), () => done('failed'))",
            url + "/api/runs",
        )
    assert got == "failed"
    console_errors(offline)  # drain: that refused fetch was the probe's own
    shot = tmp_path / "report.png"
    offline.save_screenshot(str(shot))
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.std() > 10 and len(np.unique(img)) > 50  # not blank
    ds = store.phase1(exp)
    curves = offline.execute_script(
        "return document.getElementById('curves').data.filter(t => t.meta === 'curve')"
        ".map(t => [t.name, Array.from(t.y)])"
    )
    for name, y in curves:
        np.testing.assert_allclose(y, ds[D.STABLE_RANK].sel({D.LAYER: name}).values)
    # pickers work without a server
    Select(offline.find_element("id", "metric")).select_by_value(D.NUCLEAR_NORM_RATIO)
    curves = offline.execute_script(
        "return document.getElementById('curves').data.filter(t => t.meta === 'curve')"
        ".map(t => [t.name, Array.from(t.y)])"
    )
    for name, y in curves:
        np.testing.assert_allclose(y, ds[D.NUCLEAR_NORM_RATIO].sel({D.LAYER: name}).values)
    payload = offline.execute_script("return window.ndt.payload.moments[0]")
    attn = store.attention(exp, payload["layer"]).sel({D.STEP: payload["after"]}).values
    Select(offline.find_element("id", "head")).select_by_value("3")
    z = offline.execute_script("return document.getElementById('attn-after').data[0].z")
    np.testing.assert_allclose(z, attn.mean(0)[3], rtol=1e-6)
    layers = offline.execute_script("return window.ndt.payload.moments[0].attention_layers")
    Select(offline.find_element("id", "layer")).select_by_value(layers[-1])
    z = offline.execute_script("return document.getElementById('attn-after').data[0].z")
    attn = store.attention(exp, layers[-1]).sel({D.STEP: payload["after"]}).values
    np.testing.assert_allclose(z, attn.mean(0)[3], rtol=1e-6)
    assert offline.execute_script("return window.ndt.errors") == []
    assert console_errors(offline) == []


def test_report_static_fallback_without_plotly(report, monkeypatch, tmp_path):
    from ndt_store.errors import MissingDependencyError
    from ndt_store.web import _assets

    def missing() -> str:
        raise MissingDependencyError("no plotly: pip install 'ndt-store[web]'")

    monkeypatch.setattr(_assets, "plotly_js", missing)
    monkeypatch.setattr("ndt_store.web.page.plotly_js", missing)
    store, exp, _ = report
    written = write_report(store, exp, tmp_path / "static", num_jumps=1, html_page=True)
    text = Path(written["report.html"]).read_text()
    assert "Plotly" not in text and "<img" in text
