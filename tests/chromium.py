"""Headless Chromium for browser tests: Debian's `chromium` and `chromium-driver`, by path,
driven with Selenium. Selenium Manager is never asked (it would try to download a driver);
the test skips, giving the reason, where the binaries are absent. `.ci/run` installs them, so
CI always runs these tests.

    with chromium(tmp_path) as browser:
        browser.get(url)
        browser.save_screenshot(str(tmp_path / "page.png"))
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# No request may leave the machine: every proxied scheme goes to a port nothing listens on.
# Loopback is not proxied (Chromium bypasses it by default), so the tests' own servers work.
OFFLINE_PROXY = "http://127.0.0.1:9"


def require_chromium() -> None:
    """Skip the calling test, saying why, unless Debian's chromium and chromedriver exist."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (path.exists() and os.access(path, os.X_OK)):
            pytest.skip(f"{path} is missing: install Debian's {package} (.ci/run does)")
    with contextlib.suppress(ImportError):
        import selenium  # noqa: F401

        return
    pytest.skip("selenium is not installed (pip install -e '.[test]')")


@contextlib.contextmanager
def chromium(
    profile_dir: Path, *, offline: bool = False, width: int = 1400, height: int = 1000
) -> Iterator[Any]:
    """A headless Chromium (selenium WebDriver) with its profile under profile_dir, quit (and
    its processes gone) at the end. offline: every request that is not to loopback fails."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    profile = profile_dir / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    if offline:
        options.add_argument(f"--proxy-server={OFFLINE_PROXY}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(str(CHROMEDRIVER), log_output=str(profile_dir / "chromedriver.log"))
    browser = webdriver.Chrome(service=service, options=options)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def until(condition: Callable[[], Any], timeout_s: float = 5.0, what: str = "condition") -> Any:
    """Poll condition (a page changes on its own time) until it is truthy; its value.
    AssertionError, naming `what`, at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.02)
