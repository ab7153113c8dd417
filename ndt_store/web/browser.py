"""A headless Chromium for driving the web views (tests, screenshots, benchmarks).

Uses Selenium with the system's ``chromium`` and ``chromedriver`` (Debian:
``apt-get install chromium chromium-driver``); nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

__all__ = [
    "CHROMIUM_FLAGS",
    "browser_problem",
    "console_errors",
    "headless_chromium",
    "wait_ready",
]

CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
"""Flags every browser is started with."""


def _paths() -> tuple[str | None, str | None]:
    chrome = (
        os.environ.get("NDT_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    driver = os.environ.get("NDT_CHROMEDRIVER") or shutil.which("chromedriver")
    return chrome, driver


def browser_problem() -> str | None:
    """Why no headless browser can be started here (``None`` when one can).

    Examples
    --------
    >>> isinstance(browser_problem(), (str, type(None)))
    True
    """
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    chrome, driver = _paths()
    if chrome is None:
        return "no chromium on PATH (apt-get install chromium)"
    if driver is None:
        return "no chromedriver on PATH (apt-get install chromium-driver)"
    return None


def headless_chromium(*, width: int = 1400, height: int = 1000, offline: bool = False) -> Any:
    """Start headless Chromium under Selenium.

    Parameters
    ----------
    width, height
        Window size in CSS pixels.
    offline
        Cut all networking (DevTools network emulation plus a host resolver
        that resolves nothing): pages must load everything from themselves.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    problem = browser_problem()
    if problem:
        raise RuntimeError(f"cannot start a headless browser: {problem}")
    chrome, driver = _paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(chrome)
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--window-size={width},{height}")
    opts.add_argument("--hide-scrollbars")
    if offline:
        opts.add_argument("--host-resolver-rules=MAP * ~NOTFOUND")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(str(driver)), options=opts)
    if offline:
        drv.execute_cdp_cmd("Network.enable", {})
        drv.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0},
        )
    return drv


def wait_ready(driver: Any, *, timeout: float = 30.0, renders: int = 1) -> float:
    """Wait until the page script has drawn ``renders`` times; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        done = driver.execute_script(
            "return !!(window.ndt && window.ndt.ready && window.ndt.renders >= arguments[0])",
            renders,
        )
        if done:
            return time.perf_counter() - t0
        time.sleep(0.02)
    errors = driver.execute_script("return window.ndt ? window.ndt.errors : 'no page script'")
    raise TimeoutError(f"page {driver.current_url} did not render in {timeout} s ({errors})")


def console_errors(driver: Any) -> list[str]:
    """Messages of level SEVERE in the browser console since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
