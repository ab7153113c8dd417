"""The web views: time to first render in headless Chromium and bytes read from the store.

Cases (each page load uses a fresh server, hence a fresh Store that has cached nothing):

* the runs view of a 1,000-experiment store (100 in ``--quick``) against what an
  eager app would do first: read every experiment's Phase 1 arrays;
* the run view of one experiment in a 55-experiment store against the same view
  of the same experiment in the 1,000-experiment store (bytes must be equal:
  a single-run view must not grow with the number of experiments).

Time to first render is ``performance.now()`` when the page's charts/table are
drawn (navigation start to drawn: request, the view's reads, parsing plotly.js,
drawing), median of 3 loads with the browser's cache warm (a second visit);
the first visit's figure is in the notes. Bytes are counted on the store's reads
(:func:`ndt_store.web.measure.count_store_reads`).

Usage: ``python benchmarks/bench_web.py`` (writes ``benchmarks/results/web.json``)
or ``--quick``.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ndt_store
from ndt_store.web.browser import browser_problem, headless_chromium, wait_ready
from ndt_store.web.measure import count_store_reads
from ndt_store.web.server import running_server

RUN = "synth_mlp_0000"  # identical content in both stores (same seed and index)
LOADS = 3


def _make(path: Path, n: int, records: int) -> None:
    ndt_store.synth_store(path, experiments=n, steps=0, layers=4, records=records, seed=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT = _free_port()  # one origin for every server, so the browser's cache carries over


def _first_render(browser: Any, location: Path, page: str) -> tuple[float, int, int]:
    """Median seconds to first render, and keys/bytes read by the server for one load."""
    times, reads = [], None
    for _ in range(LOADS):
        store = ndt_store.open_store(location, mode="r")
        server = running_server(store, poll_ms=0, port=PORT)
        with server as url, count_store_reads() as counted:
            browser.get(url + page)
            wait_ready(browser, timeout=120)
            times.append(browser.execute_script("return window.ndt.readyMs") / 1000)
        reads = reads or (len(counted.keys), counted.nbytes)
    assert reads is not None
    return statistics.median(times), reads[0], reads[1]


def _eager(location: Path) -> tuple[float, int]:
    """Seconds and bytes to read every experiment's Phase 1 arrays (a fresh Store)."""
    store = ndt_store.open_store(location, mode="r")
    t0 = time.perf_counter()
    with count_store_reads() as counted:
        for name in store.experiments():
            store.phase1(name)
    return time.perf_counter() - t0, counted.nbytes


def run(quick: bool = False, stores: Path | None = None) -> list[dict[str, Any]]:
    """The rows; ``stores``: a folder to keep the generated stores in (reused when there)."""
    problem = browser_problem()
    if problem:
        return [{"case": "web views", "ndt_store": None, "baseline": None, "unit": "s",
                 "notes": f"skipped: {problem}"}]  # fmt: skip
    big_n = 100 if quick else 1000
    tmp = Path(tempfile.mkdtemp(prefix="bench_web_"))
    keep = stores or tmp
    browser = headless_chromium()
    try:
        tag = "q" if quick else ""
        big, small = keep / f"big{big_n}{tag}.zarr", keep / f"small55{tag}.zarr"
        t0 = time.perf_counter()
        records = 100 if quick else 400  # the study's runs hold ~400 records
        for path, n in ((big, big_n), (small, 55)):
            done = path / "experiments"
            if not (done.is_dir() and sum(p.is_dir() for p in done.iterdir()) == n):
                shutil.rmtree(path, ignore_errors=True)
                _make(path, n, records)
        made = time.perf_counter() - t0
        # warm the browser's caches (plotly.js and its compiled code), as on a second visit
        with running_server(ndt_store.open_store(small, mode="r"), poll_ms=0, port=PORT) as url:
            cold = []
            for _ in range(3):
                browser.get(f"{url}/run?exp={RUN}")
                wait_ready(browser, timeout=120)
                cold.append(browser.execute_script("return window.ndt.readyMs") / 1000)
        runs_t, runs_keys, runs_bytes = _first_render(browser, big, "/")
        eager_t, eager_bytes = _eager(big)
        run_small = _first_render(browser, small, f"/run?exp={RUN}")
        big_small = ndt_store.open_store(big, mode="r").phase1(RUN).sizes
        small_sizes = ndt_store.open_store(small, mode="r").phase1(RUN).sizes
        same = dict(big_small) == dict(small_sizes)
        run_big = _first_render(browser, big, f"/run?exp={RUN}") if same else None
    finally:
        browser.quit()
        shutil.rmtree(tmp, ignore_errors=True)
    rows: list[dict[str, Any]] = [
        {
            "case": f"runs view of {big_n} experiments: time to first render (browser)",
            "ndt_store": runs_t,
            "baseline": eager_t,
            "baseline_name": "reading every experiment's Phase 1 arrays (no drawing)",
            "unit": "s",
            "notes": f"stores built (or found) in {made:.0f} s",
        },
        {
            "case": f"runs view of {big_n} experiments: bytes read from the store",
            "ndt_store": runs_bytes,
            "baseline": eager_bytes,
            "baseline_name": "reading every experiment's Phase 1 arrays",
            "unit": "bytes",
            "target": "one metadata entry per experiment, no arrays",
            "met": runs_keys == big_n,
            "notes": f"{runs_keys} keys read ({runs_keys / big_n:.2f} per experiment)",
        },
        {
            "case": "run view, 55-experiment store: time to first render (browser)",
            "ndt_store": run_small[0],
            "baseline": run_big[0] if run_big else None,
            "baseline_name": f"the same run's view in the {big_n}-experiment store",
            "unit": "s",
            "notes": f"first visit (plotly.js not yet cached or compiled): {cold[0]:.2f} s",
        },
    ]
    if run_big is not None:
        rows.append(
            {
                "case": f"run view: bytes read, 55 vs {big_n} experiments in the store",
                "ndt_store": run_small[2],
                "baseline": run_big[2],
                "baseline_name": f"the same run's view in the {big_n}-experiment store",
                "unit": "bytes",
                "target": "equal (does not grow with the number of experiments)",
                "met": run_small[1:] == run_big[1:],
                "notes": f"{run_small[1]} keys read in each",
            }
        )
    return rows


RESULTS = Path(__file__).resolve().parent / "results" / "web.json"


if __name__ == "__main__":
    import argparse
    import json
    import platform

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 experiments instead of 1,000")
    parser.add_argument("--stores", type=Path, help="keep (and reuse) the generated stores here")
    args = parser.parse_args()
    rows = run(args.quick, args.stores)
    for row in rows:
        print(json.dumps(row))
    if not args.quick:
        RESULTS.write_text(
            json.dumps(
                {
                    "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                    "date": time.strftime("%Y-%m-%d"),
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )
