"""A real headless Chromium (Debian's ``chromium`` driven through its ``chromium-driver``
by Selenium) against a real served service with a publishable key. Where the machine has
no Chromium (``scripts/test-system-packages`` installs it as root with apt-get), these
tests are skipped, each printing why."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bespoke.serving.keys import ApiKeys
from bespoke.serving.local import local_settings, start_local_service, stop_local_service

#: Chromium's flags for a test machine without a display or a network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--window-size=1280,1000")  # fmt: skip
#: Where a test saves what a person would look at (a screenshot of the storefront).
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _chromium_missing() -> str | None:
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        return (f"{' and '.join(missing)} not installed: `make test` installs Debian's chromium "
                "and chromium-driver where it runs as root with apt-get (scripts/test-system-packages)")  # fmt: skip
    return None


@pytest.fixture(scope="module")
def served(
    prepared_service_home: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """A server of this module's own and a publishable key for its origin (the demo page)."""
    if (reason := _chromium_missing()) is not None:
        pytest.skip(reason)
    prepared, secret = prepared_service_home
    home = tmp_path_factory.mktemp("browser") / "home"
    shutil.copytree(prepared, home, ignore=shutil.ignore_patterns("service.log"))
    url, process = start_local_service(home)
    key = ApiKeys(local_settings(home).online_store_url or "").create(
        "storefront", publishable=True, origins=[url]
    )
    try:
        yield {"url": url, "home": home, "key": key, "secret": secret}
    finally:
        stop_local_service(process)


@pytest.fixture
def browser(served) -> Iterator[object]:
    """A fresh headless Chromium (no cookies, no storage) that records its requests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=Service(executable_path=shutil.which("chromedriver"))
    )
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
