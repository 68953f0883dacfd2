"""A headless Chromium driven by Selenium, for the web UI's tests: Debian's chromium and
chromium-driver, installed by `scripts/install-browser` when missing (never a browser
downloaded by Selenium's manager, which cannot reach its sources here)."""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING

from tests.support.node_process import REPO

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

INSTALL_SCRIPT = REPO / "scripts" / "install-browser"


def chromium_paths() -> tuple[tuple[str, str] | None, str]:
    """((chromium, chromedriver), "") or (None, why they could not be installed)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        result = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            return None, f"{INSTALL_SCRIPT.name} failed ({result.returncode}): {result.stderr.strip()[-500:]}"
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        return None, "chromium or chromedriver is still not on PATH after scripts/install-browser"
    return (chromium, driver), ""


def headless_chromium(chromium: str, driver: str) -> "WebDriver":
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
