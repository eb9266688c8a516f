"""A headless Chromium for the dashboard tests, driven by Selenium and the system's chromedriver.

Selenium talks to ``chromedriver`` (Debian's ``chromium-driver``, matched to its ``chromium``);
nothing is downloaded. Without a browser, a driver or selenium, the tests skip with the reason.
Screenshots go to ``tests/artifacts/dashboard/`` (ignored by git).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"

T = TypeVar("T")


def _which(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def start_chrome() -> Any:
    """A headless Chromium, or ``pytest.skip`` with what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.skip(f"selenium is not installed ({exc}); pip install selenium")
    binary = _which("chromium", "chromium-browser", "google-chrome")
    driver = _which("chromedriver")
    if binary is None or driver is None:
        pytest.skip(
            "no Chromium and chromedriver on PATH (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,2400",
    ):
        options.add_argument(arg)
    try:
        return webdriver.Chrome(service=Service(driver), options=options)
    except Exception as exc:  # a browser that does not start: skip with its reason
        pytest.skip(f"Chromium does not start headless here: {exc}")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # the element is being redrawn: try again
            last = exc
        time.sleep(0.1)
    raise AssertionError(
        f"timed out waiting for {what}" + (f" (last error: {last})" if last else "")
    )


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path
