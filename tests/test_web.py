"""The web views driven in a real headless Chromium: values on screen equal the store's.

One browser and one server per module. Screenshots go to a temporary folder and,
when ``NDT_WEB_ARTIFACTS`` names a folder, there too.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("plotly")

import ndt_store
from ndt_store import _dims as D
from ndt_store.synth import phase1_dataset
from ndt_store.testing import tree_snapshot
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

RECORDING = "live_run"
LAYERS = ["enc.0", "enc.1"]
ROW_NAMES = (
    "return [...document.querySelectorAll('#runs-table tbody tr')].map(t => t.dataset.experiment)"
)
HOVER_TEXT = (
    "const h = document.querySelector('#curves .hoverlayer'); return h ? h.textContent : ''"
)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("web") / "s.zarr"
    store = ndt_store.synth_store(
        path, experiments=3, steps=6, layers=2, records=120, seed=3, snapshot_every=100
    )
    store.create_run(RECORDING, {"arch_name": "rec", "capture": {"recorder": "test"}}, LAYERS)
    store.append_phase1(RECORDING, _records(0, 30))
    return path


def _records(start: int, n: int) -> xr.Dataset:
    ds, _ = phase1_dataset(np.random.default_rng(start), LAYERS, n, 5)
    return ds.assign_coords({D.STEP: ds[D.STEP].values + start * 5})


@pytest.fixture(scope="module")
def store(store_path: Path) -> ndt_store.Store:
    return ndt_store.open_store(store_path, mode="r")


@pytest.fixture(scope="module")
def url(store_path: Path):
    with running_server(str(store_path), poll_ms=300, refresh_s=0.1) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    drv = headless_chromium()
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def _open(browser: Any, url: str) -> None:
    browser.get(url)
    wait_ready(browser)


def _shot(browser: Any, shots: Path, name: str) -> Path:
    path = shots / f"web_{name}.png"
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    extra = os.environ.get("NDT_WEB_ARTIFACTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)
    return path


def _traces(browser: Any, div: str) -> list[dict[str, Any]]:
    """The data of a plotly chart as the chart holds it."""
    return browser.execute_script(
        "return document.getElementById(arguments[0]).data.map(t => ({meta: t.meta || null, "
        "name: t.name || null, x: t.x ? Array.from(t.x) : null, y: t.y ? Array.from(t.y) : null, "
        "z: t.z ? Array.from(t.z, r => Array.from(r)) : null, customdata: t.customdata || null}))",
        div,
    )


def _wait(cond: Any, timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _jump_reference(store: ndt_store.Store, exp: str, metric: str) -> dict[tuple[str, int], float]:
    """(layer, record index) -> p-value, from the measures called directly."""
    x = store.phase1(exp)[metric].transpose(D.LAYER, D.STEP)
    res = ndt_store.detect_jumps(x, alpha=0.05).compute()
    layers = [str(v) for v in x[D.LAYER].values]
    return {
        (layers[li], int(i)): float(res["p_value"].values[li, i])
        for li, i in zip(*np.nonzero(res["is_jump"].values), strict=True)
    }


def _experiment(store: ndt_store.Store) -> str:
    return next(e for e in store.experiments() if e.startswith("synth_mlp"))


# ---------------------------------------------------------------------- runs
def test_runs_view_table_sort_filter_and_url(browser, url, store, shots):
    _open(browser, url + "/")
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#runs-table tbody tr')].map(tr => "
        "[...tr.cells].slice(1).map(td => td.textContent))"
    )
    cols = browser.execute_script("return window.ndt.payload.columns")
    assert [r[0] for r in rows] == store.experiments()
    for row in rows:
        meta = store.metadata(row[0])
        cells = dict(zip(cols, row, strict=True))
        assert cells["arch_name"] == meta["arch_name"]
        if D.FINAL_ACCURACY in meta:
            assert float(cells["final_accuracy"]) == pytest.approx(meta["final_accuracy"], abs=1e-4)
        assert int(cells["snapshots"]) == len(store.snapshot_steps(row[0]))
    status = {r[0]: dict(zip(cols, r, strict=True))["status"] for r in rows}
    assert status[RECORDING] == "recording" and status[_experiment(store)] == "stored"

    browser.find_element("css selector", 'th[data-col="final_accuracy"]').click()
    browser.find_element("css selector", 'th[data-col="final_accuracy"]').click()  # descending
    order = browser.execute_script(ROW_NAMES)
    acc = {e: store.metadata(e).get(D.FINAL_ACCURACY) for e in store.experiments()}
    with_acc = sorted((e for e in acc if acc[e] is not None), key=lambda e: -acc[e])
    assert order == [*with_acc, RECORDING]  # runs without the field last
    box = browser.find_element("css selector", 'input.col-filter[data-col="dataset"]')
    box.send_keys("mnist")
    shown = browser.execute_script(ROW_NAMES)
    want = [e for e in with_acc if "mnist" in store.metadata(e)[D.DATASET]]
    assert shown == want and 0 < len(want) < len(store.experiments())
    _shot(browser, shots, "runs")
    # the URL reproduces the view
    state = browser.current_url
    assert "sort=final_accuracy" in state and "desc=1" in state and "f.dataset=mnist" in state
    _open(browser, state)
    again = browser.execute_script(ROW_NAMES)
    assert again == want
    assert console_errors(browser) == []


# ----------------------------------------------------------------------- run
def test_run_view_plots_the_stored_values_and_p_values(browser, url, store, shots):
    exp = _experiment(store)
    _open(browser, f"{url}/run?exp={exp}")
    ds = store.phase1(exp)
    traces = _traces(browser, "curves")
    curves = {t["name"]: t for t in traces if t["meta"] == "curve"}
    assert list(curves) == [str(v) for v in ds[D.LAYER].values]
    for layer, t in curves.items():
        np.testing.assert_array_equal(t["x"], ds[D.STEP].values)
        np.testing.assert_allclose(t["y"], ds[D.STABLE_RANK].sel({D.LAYER: layer}).values)
    heat = _traces(browser, "heatmap")[0]
    np.testing.assert_allclose(heat["z"], ds[D.STABLE_RANK].transpose(D.LAYER, D.STEP).values)
    loss = _traces(browser, "loss")[0]
    np.testing.assert_allclose(loss["y"], ds[D.LOSS].values)
    # jump markers: every z-score jump, with its p-value, significant ones apart
    ref = _jump_reference(store, exp, D.STABLE_RANK)
    steps = ds[D.STEP].values
    shown = {}
    for t in traces:
        if str(t["meta"]).startswith("jumps"):
            for x, c in zip(t["x"], t["customdata"], strict=True):
                shown[(c[0], int(c[5]))] = (c[1], t["meta"], x)
    assert set(shown) == set(ref) and ref
    for key, (p, meta, x) in shown.items():
        assert p == pytest.approx(ref[key])
        assert x == steps[key[1]]
        assert meta == ("jumps-significant" if ref[key] <= 0.05 else "jumps-not-significant")
    # hovering a marker shows its p-value
    layer, index = min(ref, key=ref.get)
    _hover_jump(browser, steps[index], ds[D.STABLE_RANK].sel({D.LAYER: layer}).values[index])
    _wait(lambda: "p = " in browser.execute_script(HOVER_TEXT))
    text = browser.execute_script(HOVER_TEXT)
    assert layer in text and "significant jump" in text
    _shot(browser, shots, "run")
    assert console_errors(browser) == []


def _marker_offset(browser: Any, x: float, y: float) -> tuple[int, int]:
    return browser.execute_script(
        "const gd = document.getElementById('curves'), fl = gd._fullLayout;"
        "const r = gd.getBoundingClientRect();"
        "const px = fl.xaxis._offset + fl.xaxis.l2p(arguments[0]);"
        "const py = fl.yaxis._offset + fl.yaxis.l2p(arguments[1]);"
        "return [Math.round(px - r.width / 2), Math.round(py - r.height / 2)];",
        float(x),
        float(y),
    )


def _hover_jump(browser: Any, x: float, y: float, click: bool = False) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    div = browser.find_element("id", "curves")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", div)
    dx, dy = _marker_offset(browser, x, y)
    chain = ActionChains(browser).move_to_element_with_offset(div, dx, dy)
    (chain.click() if click else chain).perform()


def test_change_metric(browser, url, store):
    from selenium.webdriver.support.ui import Select

    exp = _experiment(store)
    _open(browser, f"{url}/run?exp={exp}")
    Select(browser.find_element("id", "metric")).select_by_value(D.PARTICIPATION_RATIO)
    _wait(lambda: "metric=participation_ratio" in browser.current_url)
    wait_ready(browser)
    ds = store.phase1(exp)
    curves = [t for t in _traces(browser, "curves") if t["meta"] == "curve"]
    for t in curves:
        want = ds[D.PARTICIPATION_RATIO].sel({D.LAYER: t["name"]}).values
        np.testing.assert_allclose(t["y"], want)
    assert browser.execute_script("return window.ndt.payload.metric") == D.PARTICIPATION_RATIO


# ------------------------------------------------------------------- moments
def _entropy(p: np.ndarray) -> np.ndarray:
    """Mean entropy per head of attention [sample, head, query, key]."""
    logp = np.log(np.where(p > 0, p, 1.0))
    return -(p * logp).sum(-1).mean(axis=(0, 2))


def _hsic_unbiased(k: np.ndarray, m: np.ndarray) -> float:
    """Song et al. (2012), eq. 5: the unbiased HSIC estimator from two Gram matrices."""
    n = k.shape[0]
    k, m = k - np.diag(np.diag(k)), m - np.diag(np.diag(m))
    one = np.ones(n)
    return float(
        np.trace(k @ m)
        + (one @ k @ one) * (one @ m @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ k @ m @ one)
    ) / (n * (n - 3))


def _cka(x: np.ndarray, y: np.ndarray, estimator: str) -> float:
    x = x.reshape(len(x), -1)
    y = y.reshape(len(y), -1)
    if estimator == "debiased":
        k, m = x @ x.T, y @ y.T
        return _hsic_unbiased(k, m) / np.sqrt(_hsic_unbiased(k, k) * _hsic_unbiased(m, m))
    assert estimator == "biased", estimator
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_click_jump_opens_its_moment_with_stored_values(browser, url, store, shots):
    from selenium.webdriver.support.ui import Select

    exp = _experiment(store)
    _open(browser, f"{url}/run?exp={exp}")
    ds = store.phase1(exp)
    steps = ds[D.STEP].values
    snaps = np.asarray(store.snapshot_steps(exp))
    ref = _jump_reference(store, exp, D.STABLE_RANK)
    candidates = [
        k
        for k in sorted(ref, key=ref.get)
        if ref[k] <= 0.05
        and snaps[snaps <= steps[k[1]]].size
        and snaps[snaps >= steps[k[1] + 1]].size
    ]
    layer, index = candidates[0]
    before = int(snaps[snaps <= steps[index]][-1])
    after = int(snaps[snaps >= steps[index + 1]][0])
    value = ds[D.STABLE_RANK].sel({D.LAYER: layer}).values[index]
    _hover_jump(browser, steps[index], value, click=True)
    _wait(lambda: "/moments?" in browser.current_url)
    wait_ready(browser)
    assert f"before={before}" in browser.current_url and f"after={after}" in browser.current_url
    p = browser.execute_script("return window.ndt.payload")
    assert (p["before"], p["after"]) == (before, after)

    attn = store.attention(exp, p["layer"]).sel({D.STEP: [before, after]}).values
    for head in (0, 2):
        if head:
            Select(browser.find_element("id", "head")).select_by_value(str(head))
            _wait(lambda h=head: f"head={h}" in browser.current_url)
        np.testing.assert_allclose(
            _traces(browser, "attn-before")[0]["z"], attn[0].mean(0)[head], rtol=1e-6
        )
        np.testing.assert_allclose(
            _traces(browser, "attn-after")[0]["z"], attn[1].mean(0)[head], rtol=1e-6
        )
    bars = _traces(browser, "entropy")[0]
    np.testing.assert_allclose(bars["y"], _entropy(attn[1]) - _entropy(attn[0]), rtol=1e-4)

    weights = _traces(browser, "weights")[0]
    w = store.weights(exp)
    for row, (name, arr) in zip(weights["z"], w.items(), strict=True):
        a = arr.values.astype(np.float64)
        rel = [np.linalg.norm(a[i + 1] - a[i]) / np.linalg.norm(a[i]) for i in range(len(a) - 1)]
        np.testing.assert_allclose(row, rel, rtol=1e-5, err_msg=name)
    cka = _traces(browser, "cka")[0]
    act = store.activations(exp, p["cka"]["layer"]).values.astype(np.float64)
    est = p["cka"]["estimator"]
    want = [[_cka(act[i], act[j], est) for j in range(len(act))] for i in range(len(act))]
    np.testing.assert_allclose(cka["z"], want, rtol=1e-5, atol=1e-7)
    _shot(browser, shots, "moments")
    # the URL (head included) reproduces the view
    _open(browser, browser.current_url)
    z = _traces(browser, "attn-after")[0]["z"]
    np.testing.assert_allclose(z, attn[1].mean(0)[2], rtol=1e-6)
    assert console_errors(browser) == []


# ------------------------------------------------------------------- compare
def test_compare_view_overlays_runs_by_phase(browser, url, store, shots):
    from selenium.webdriver.support.ui import Select

    names = [e for e in store.experiments() if e.startswith("synth")][:2]
    _open(browser, f"{url}/compare?exp={names[0]}&exp={names[1]}&align=phase")
    traces = _traces(browser, "overlay")
    assert [t["name"] for t in traces] == names
    for t, name in zip(traces, names, strict=True):
        ds = store.phase1(name)
        total = store.metadata(name)[D.NUM_STEPS]
        np.testing.assert_allclose(t["x"], ds[D.STEP].values / total)
        np.testing.assert_allclose(t["y"], ds[D.STABLE_RANK].mean(D.LAYER).values)
    _shot(browser, shots, "compare")
    Select(browser.find_element("id", "align")).select_by_value("step")
    Select(browser.find_element("id", "metric")).select_by_value(D.NUCLEAR_NORM_RATIO)
    browser.find_element("id", "apply").click()
    _wait(lambda: "align=step" in browser.current_url)
    wait_ready(browser)
    t = _traces(browser, "overlay")[0]
    ds = store.phase1(names[0])
    np.testing.assert_allclose(t["x"], ds[D.STEP].values)
    np.testing.assert_allclose(t["y"], ds[D.NUCLEAR_NORM_RATIO].mean(D.LAYER).values)


# ------------------------------------------------------------------ download
def test_download_link_gives_the_shown_data(browser, url, store):
    exp = _experiment(store)
    _open(browser, f"{url}/run?exp={exp}&metric=effective_rank_90")
    link = browser.find_element("id", "download").get_attribute("href")
    assert "/download/run.csv?" in link
    with urllib.request.urlopen(link) as r:
        rows = list(csv.DictReader(io.StringIO(r.read().decode())))
    ds = store.phase1(exp)
    for layer in ds[D.LAYER].values:
        got = [float(r["effective_rank_90"]) for r in rows if r["layer"] == str(layer)]
        np.testing.assert_allclose(got, ds[D.EFFECTIVE_RANK_90].sel({D.LAYER: layer}).values)


# ------------------------------------------------------------------- refresh
def test_open_page_shows_records_appended_while_it_is_open(browser, url, store_path):
    _open(browser, f"{url}/run?exp={RECORDING}")
    n0 = len(_traces(browser, "curves")[0]["x"])
    assert n0 == 30
    writer = ndt_store.open_store(store_path)
    writer.append_phase1(RECORDING, _records(30, 12))
    _wait(lambda: len(_traces(browser, "curves")[0]["x"]) == 42)
    xs = _traces(browser, "curves")[0]["x"]
    np.testing.assert_array_equal(xs, writer.phase1(RECORDING)[D.STEP].values)
    writer.update_metadata(RECORDING, capture={"recorder": "test", "status": "complete"})
    _wait(lambda: browser.execute_script("return window.ndt.payload.status") == "complete")


def test_runs_table_shows_a_new_recording_run_and_its_status(browser, url, store_path):
    _open(browser, url + "/")
    status = (
        "const tr = document.querySelector('#runs-table tbody tr[data-experiment=\"live_2\"]');"
        "return tr ? tr.querySelector('td.status').textContent : null"
    )
    assert browser.execute_script(status) is None
    writer = ndt_store.open_store(store_path)
    writer.create_run("live_2", {"arch_name": "rec", "capture": {"recorder": "test"}}, LAYERS)
    _wait(lambda: browser.execute_script(status) == "recording")
    writer.update_metadata("live_2", capture={"recorder": "test", "status": "complete"})
    _wait(lambda: browser.execute_script(status) == "complete")


# ---------------------------------------------------------------- read-only
def test_server_refuses_writes(url, store_path):
    before = tree_snapshot(store_path)
    for method in ("POST", "PUT", "DELETE"):
        req = urllib.request.Request(f"{url}/api/runs", data=b"{}", method=method)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req)
        assert err.value.code == 405
    assert tree_snapshot(store_path) == before


# -------------------------------------------------------------------- safety
HOSTILE_EXP = "ünï 运行 🚀 run"
HOSTILE_LAYERS = ["слой.0", "x&lt;y", "层_1"]
HOSTILE_META = {
    "arch_name": "<script>window.__pwned=1</script>",
    "dataset": '<img src=x onerror="window.__pwned=2">',
    "note": "../../etc/passwd",
    "final_accuracy": 0.5,
}


@pytest.fixture(scope="module")
def hostile_url(tmp_path_factory: pytest.TempPathFactory):
    store = ndt_store.open_store(tmp_path_factory.mktemp("hostile") / "h.zarr")
    ds, _ = phase1_dataset(np.random.default_rng(0), HOSTILE_LAYERS, 40, 5)
    store.write_experiment(HOSTILE_EXP, ds, HOSTILE_META)
    with running_server(store, poll_ms=0) as base:
        yield base


def _not_pwned(browser: Any) -> None:
    assert browser.execute_script("return typeof window.__pwned") == "undefined"


def test_hostile_names_and_metadata_are_shown_escaped(browser, hostile_url, shots):
    _open(browser, hostile_url + "/")
    cells = browser.execute_script(
        "const tr = document.querySelector('#runs-table tbody tr');"
        "const cols = window.ndt.payload.columns;"
        "return Object.fromEntries([...tr.cells].slice(1)"
        ".map((td, i) => [cols[i], td.textContent]))"
    )
    assert cells["experiment"] == HOSTILE_EXP
    for key in ("arch_name", "dataset", "note"):
        assert cells[key] == HOSTILE_META[key]
    found = "return document.querySelectorAll('main img, main script').length"
    assert browser.execute_script(found) == 0
    _not_pwned(browser)
    _shot(browser, shots, "hostile_runs")
    browser.find_element("css selector", "a.run-link").click()
    _wait(lambda: "/run?" in browser.current_url)
    wait_ready(browser)
    assert browser.find_element("id", "run-name").text == HOSTILE_EXP
    legend = browser.execute_script(
        "return [...document.querySelectorAll('#curves .legendtext')].map(t => t.textContent)"
    )
    assert legend[: len(HOSTILE_LAYERS)] == HOSTILE_LAYERS  # "&lt;" shown as typed
    _not_pwned(browser)
    assert console_errors(browser) == []


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("/run?exp=../../etc", "../../etc"),
        (
            "/run?exp=%3Cscript%3Ewindow.__pwned%3D3%3C/script%3E",
            "<script>window.__pwned=3</script>",
        ),
        ("/moments?exp=x&layer=..%2F..%2Fetc", "x"),
        ("/run?exp=no_such_run", "no_such_run"),
    ],
)
def test_bad_names_in_urls_are_refused_and_escaped(browser, hostile_url, query, shown):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(hostile_url + query)
    assert err.value.code in (400, 404)
    browser.get(hostile_url + query)
    text = browser.find_element("id", "error").text
    assert shown in text
    assert browser.execute_script("return document.querySelectorAll('main script').length") == 0
    _not_pwned(browser)


def test_paths_outside_the_app_are_not_served(hostile_url):
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(hostile_url)
    for raw in ("/static/../../../../etc/passwd", "/static/..%2F..%2Fetc%2Fpasswd", "/../etc"):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("GET", raw)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 404 and b"root:" not in body
        conn.close()
