"""The web views' data without a browser: laziness (what is read), validation, CSV, CLI."""

from __future__ import annotations

import doctest
import importlib
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("plotly")

import ndt_store
from ndt_store import _dims as D
from ndt_store.errors import InputError, InvalidNameError, NotFoundError
from ndt_store.web import views
from ndt_store.web.measure import count_store_reads
from ndt_store.web.page import json_island
from ndt_store.web.server import running_server

ROOT = Path(__file__).resolve().parents[1]


def _store(path: Path, n: int) -> ndt_store.Store:
    return ndt_store.synth_store(path, experiments=n, steps=0, layers=2, records=60)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("lazy")
    return {n: _store(base / f"s{n}.zarr", n) for n in (3, 12)}


def test_runs_view_reads_only_metadata_entries(stores):
    for n, store in stores.items():
        store.refresh()
        with count_store_reads() as reads:
            payload = views.runs_view(store)
        assert len(payload["rows"]) == n
        assert all(k.endswith("/zarr.json") for k in reads.keys), reads.keys
        assert len(reads.keys) == n  # one small read per experiment, no arrays


def test_run_view_reads_do_not_grow_with_the_number_of_experiments(stores):
    read = {}
    for n, store in stores.items():
        store.refresh()
        exp = "synth_mlp_0000"  # the same content in both stores (same seed and index)
        with count_store_reads() as reads:
            views.run_view(store, exp)
        assert all(f"/{exp}/" in k for k in reads.keys), reads.keys
        read[n] = (len(reads.keys), reads.nbytes)
    assert read[3] == read[12]


def test_bad_input_is_refused_before_reading(stores):
    store = stores[3]
    for bad in ("../x", "a/b", "..", "<script>", ""):
        with count_store_reads() as reads, pytest.raises(InvalidNameError):
            views.run_view(store, bad)
        assert reads.keys == []
    with pytest.raises(InputError, match="metric"):
        views.run_view(store, "synth_mlp_0000", metric="nope")
    with pytest.raises(NotFoundError, match="no_such"):
        views.run_view(store, "no_such")
    with pytest.raises(InputError, match="align"):
        views.compare_view(store, ["synth_mlp_0000"], align="sideways")
    with pytest.raises(InvalidNameError):
        views.compare_view(store, ["synth_mlp_0000"], layer="../../x")


def test_moments_view_picks_and_checks_snapshot_steps(tmp_path):
    store = ndt_store.synth_store(tmp_path / "m.zarr", experiments=1, steps=4, records=40)
    exp = store.experiments()[0]
    p = views.moments_view(store, exp)
    assert (p["before"], p["after"]) == (0, 30)
    assert views.moments_view(store, exp, before=10)["after"] == 20
    assert views.moments_view(store, exp, after=20)["before"] == 10
    with pytest.raises(NotFoundError, match="snapshot at before step 5"):
        views.moments_view(store, exp, before=5)
    with pytest.raises(InputError, match="head 9"):
        views.moments_view(store, exp, head=9)
    assert views.moments_view(store, exp, layer="layers.1")["layer"] == "layers.1"
    with pytest.raises(NotFoundError, match=r"layers\.7"):
        views.moments_view(store, exp, layer="layers.7")


def test_csv_of_every_view(tmp_path):
    store = ndt_store.synth_store(tmp_path / "c.zarr", experiments=2, steps=3, records=40)
    exp = store.experiments()[0]
    for payload in (
        views.runs_view(store),
        views.run_view(store, exp),
        views.moments_view(store, exp),
        views.compare_view(store, store.experiments()),
    ):
        text = views.view_csv(payload)
        header = text.splitlines()[0]
        assert len(text.splitlines()) > 2, payload["view"]
        assert "," in header
    run = views.run_view(store, exp, metric=D.PARTICIPATION_RATIO)
    lines = views.view_csv(run).splitlines()
    assert lines[0] == "step,layer,participation_ratio,loss,jump_p_value"
    assert len(lines) - 1 == store.phase1(exp)[D.PARTICIPATION_RATIO].size


def test_json_island_cannot_close_its_element():
    text = json_island({"a": "</script><script>alert(1)</script>", "b": "&\u2028"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"a": "</script><script>alert(1)</script>", "b": "&\u2028"}


def test_api_and_pages_over_http(tmp_path):
    store = ndt_store.synth_store(tmp_path / "h.zarr", experiments=2, steps=2, records=30)
    exp = store.experiments()[0]
    with running_server(str(tmp_path / "h.zarr")) as url:
        with urllib.request.urlopen(f"{url}/api/run?exp={exp}") as r:
            payload = json.loads(r.read())
        np.testing.assert_allclose(
            payload["values"], store.phase1(exp)[D.STABLE_RANK].transpose().values
        )
        with urllib.request.urlopen(f"{url}/run?exp={exp}") as r:
            page = r.read().decode()
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert '<script src="/static/plotly.min.js">' in page
        assert not re.search(r"<script>", page)  # no inline script in served pages
        req = urllib.request.Request(f"{url}/static/plotly.min.js")
        req.add_header("Accept-Encoding", "gzip")
        with urllib.request.urlopen(req) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert len(r.read()) < 2_000_000


def _serve_output(args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ndt_store.cli", "serve", *args, "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "at http://" in line or "Error" in line:
                break
    finally:
        proc.terminate()
        proc.wait(10)
    return "".join(lines)


def test_cli_serve_binds_loopback_and_warns_otherwise(tmp_path):
    _store(tmp_path / "s.zarr", 1)
    out = _serve_output(["--store", str(tmp_path / "s.zarr")])
    assert "at http://127.0.0.1:" in out and "warning" not in out
    out = _serve_output(["--store", str(tmp_path / "s.zarr"), "--host", "0.0.0.0"])
    assert "warning: listening on 0.0.0.0, which is not a loopback address" in out


def test_core_package_does_not_import_the_web_stack():
    code = (
        "import sys, ndt_store, ndt_store.report, ndt_store.cli;"
        "print([m for m in ('plotly', 'selenium', 'ndt_store.web') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module",
    ["views", "page", "server", "measure", "browser", "_assets", "report_page"],
)
def test_docstring_examples(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mod = importlib.import_module(f"ndt_store.web.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_web_doc_examples_run(tmp_path, monkeypatch):
    page = ROOT / "docs" / "web.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)


def test_serve_a_store_on_s3_and_see_new_records(monkeypatch):
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import boto3
    import s3fs

    from ndt_store.synth import phase1_dataset

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        s3fs.S3FileSystem.clear_instance_cache()
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="web")
        location = "s3://web/runs.zarr"
        writer = ndt_store.synth_store(location, experiments=2, steps=0, records=30)
        writer.create_run("live", {"capture": {"recorder": "test"}}, ["a", "b"])
        ds, _ = phase1_dataset(np.random.default_rng(0), ["a", "b"], 10, 5)
        writer.append_phase1("live", ds)
        with running_server(location, refresh_s=0.0) as url:
            with urllib.request.urlopen(url + "/api/runs") as r:
                rows = json.load(r)["rows"]
            assert [row["experiment"] for row in rows] == writer.experiments()
            with urllib.request.urlopen(url + "/api/run?exp=live") as r:
                assert len(json.load(r)["steps"]) == 10
            more = ds.assign_coords({D.STEP: ds[D.STEP].values + 50})
            writer.append_phase1("live", more)
            with urllib.request.urlopen(url + "/api/run?exp=live") as r:
                run = json.load(r)
            assert run["steps"] == writer.phase1("live")[D.STEP].values.tolist()
            assert len(run["steps"]) == 20
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def test_run_view_can_hide_non_significant_jumps(stores):
    store = stores[3]
    every = views.run_view(store, "synth_mlp_0000")
    significant = views.run_view(store, "synth_mlp_0000", show="significant")
    assert significant["jumps"] == [j for j in every["jumps"] if j["significant"]]
    assert len(significant["jumps"]) < len(every["jumps"])


def test_polled_payloads_are_recomputed_only_when_the_run_changed(tmp_path):
    from ndt_store.synth import phase1_dataset
    from ndt_store.web.server import WebApp

    store = ndt_store.synth_store(tmp_path / "p.zarr", experiments=1, steps=2, records=30)
    exp = store.experiments()[0]
    app = WebApp(ndt_store.open_store(tmp_path / "p.zarr", mode="r"), refresh_s=0.0)
    q = {"exp": [exp]}
    first = app.payload("run", q)
    assert app.payload("run", q) is first  # nothing changed: the cached payload
    moments = app.payload("moments", q)
    assert app.payload("moments", q) is moments
    ds, _ = phase1_dataset(np.random.default_rng(1), list(first["layers"]), 5, 5)
    store.append_phase1(exp, ds.assign_coords({D.STEP: ds[D.STEP].values + 10_000}))
    again = app.payload("run", q)
    assert again is not first and len(again["steps"]) == len(first["steps"]) + 5
    store.write_snapshot(exp, 10_000, weights={"layers.0.weight": np.ones((32, 32))})
    assert app.payload("moments", q) is not moments


def test_pair_independent_parts_are_shared_until_the_experiment_changes(tmp_path):
    store = ndt_store.open_store(tmp_path / "s.zarr")
    store.create_run("r", {}, ["fc"])
    rng = np.random.default_rng(0)
    w = {s: rng.standard_normal((4, 3)) for s in (0, 10, 20)}
    for s in (0, 10):
        store.write_snapshot("r", s, weights={"w": w[s]}, activations={"fc": rng.random((6, 4))})
    first = views.moments_view(store, "r")
    calls = []
    real = views._weight_changes
    views_weight_changes = lambda *a: calls.append(a) or real(*a)  # noqa: E731
    import unittest.mock as mock

    with mock.patch.object(views, "_weight_changes", views_weight_changes):
        again = views.moments_view(store, "r", before=0, after=10)
        assert again["weights"] == first["weights"] and calls == []  # shared, not recomputed
        store.write_snapshot("r", 20, weights={"w": w[20]}, activations={"fc": rng.random((6, 4))})
        other = ndt_store.open_store(tmp_path / "s.zarr", mode="r")  # another reader too
        for s in (store, other):
            changed = views.moments_view(s, "r")["weights"]
            assert changed["intervals"] == ["0→10", "10→20"]
    assert len(calls) == 1  # recomputed once for the new revision, then shared
    expected = np.linalg.norm(w[20] - w[10]) / np.linalg.norm(w[10])  # plain numpy
    assert changed["relative_change"][0][1] == pytest.approx(expected, rel=1e-6)
