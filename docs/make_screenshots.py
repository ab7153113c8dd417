"""Regenerate the screenshots of the web views in docs/web.md (docs/images/web_*.png).

Run from the repository root (needs the ``[web]`` extra, selenium, chromium and
chromedriver)::

    python docs/make_screenshots.py

A synthetic store (``ndt_store.synth``) with Phase 1 series and snapshots
(attention, activations, weights), plus one run still being recorded, is served
on a free loopback port and each view is opened in headless Chromium.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import ndt_store
from ndt_store.report import write_report
from ndt_store.synth import phase1_dataset
from ndt_store.web.browser import console_errors, headless_chromium, wait_ready
from ndt_store.web.server import running_server

IMAGES = Path(__file__).resolve().parent / "images"
RUN = "synth_mlp_0000"


def make_store(path: Path) -> ndt_store.Store:
    """Eight runs with snapshots, and one run a Recorder is still writing."""
    store = ndt_store.synth_store(
        path, experiments=8, steps=10, layers=4, heads=4, seq=12, records=200,
        snapshot_every=100, seed=7,
    )  # fmt: skip
    layers = ["blocks.0", "blocks.1", "blocks.2"]
    store.create_run(
        "live_gpt_small",
        {"arch_name": "gpt_4l", "dataset": "tinystories", "capture": {"recorder": "Recorder"}},
        layers,
    )
    ds, _ = phase1_dataset(np.random.default_rng(1), layers, 60, 5)
    store.append_phase1("live_gpt_small", ds)
    return store


def shoot(driver: Any, url: str, name: str, out: Path, *, height: int | None = None) -> Path:
    """Open ``url``, wait for the drawing, save ``out/web_<name>.png`` (full page or ``height``)."""
    driver.set_window_size(1400, 900)
    driver.get(url)
    wait_ready(driver, timeout=120)
    full, chrome = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]"
    )
    driver.set_window_size(1400, min(height or full, 2400) + chrome)
    driver.execute_script("window.dispatchEvent(new Event('resize'))")
    wait_ready(driver, timeout=120)
    driver.execute_script("return new Promise(r => setTimeout(r, 600))")
    errors = console_errors(driver)
    if errors:
        raise RuntimeError(f"{url}: console errors {errors}")
    path = out / f"web_{name}.png"
    driver.save_screenshot(str(path))
    print(path)
    return path


def main(out: Path = IMAGES) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ndt_web_shots_"))
    store = make_store(tmp / "runs.zarr")
    exp = RUN
    driver = headless_chromium()
    paths = []
    try:
        with running_server(ndt_store.open_store(tmp / "runs.zarr", mode="r"), poll_ms=0) as url:
            others = [e for e in store.experiments() if e.startswith("synth_")][:4]
            pages = [
                ("runs", "/?sort=final_accuracy&desc=1", None),
                ("run", f"/run?exp={exp}", None),
                ("moments", f"/moments?exp={exp}&before=300&after=600&layer=layers.1&head=2", None),
                ("compare", "/compare?" + "&".join(f"exp={e}" for e in others) + "&align=phase",
                 None),
            ]  # fmt: skip
            for name, page, height in pages:
                paths.append(shoot(driver, url + page, name, out, height=height))
        report = write_report(store, exp, tmp / "report", num_jumps=1, html_page=True)
        offline = headless_chromium(offline=True)
        try:
            paths.append(shoot(offline, report["report.html"].as_uri(), "report", out, height=1400))
        finally:
            offline.quit()
    finally:
        driver.quit()
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=IMAGES)
    main(parser.parse_args().out)
