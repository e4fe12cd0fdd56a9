"""Test helpers: a headless Chromium driven by Selenium, for the chat-page test and the screenshot
of ``bench/bench_serve.py``. Neither is needed to serve."""

from __future__ import annotations

import os
import shutil
from typing import Any


def browser_missing() -> str | None:
    """Why no headless browser can be driven here (``None`` when Selenium, Chromium and its driver
    are all installed)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if not _chrome() or not shutil.which("chromedriver"):
        return ("no headless browser: install Chromium and its driver (Debian: apt-get install chromium "
                "chromium-driver)")
    return None


def _chrome() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromium(width: int = 1100, height: int = 900) -> Any:
    """A headless Chromium ``selenium.webdriver.Chrome`` of ``width`` × ``height`` pixels (quit it
    when done). Raises RuntimeError with :func:`browser_missing`'s reason when there is none."""
    why = browser_missing()
    if why:
        raise RuntimeError(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    opts = webdriver.ChromeOptions()
    opts.binary_location = _chrome() or ""
    flags = ["--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--window-size={width},{height}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to start as root otherwise
    for flag in flags:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(30)
    return driver
