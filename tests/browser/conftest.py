"""Fixtures for the browser tests: a real headless Chromium against the real prediction API.

What this tier may use, and nothing else:
- a real browser: Debian's Chromium and its chromedriver at /usr/bin/chromium and
  /usr/bin/chromedriver (`make browser` installs them, and `make test` runs it), driven by
  Selenium; Selenium Manager is never asked for a driver or a browser, so nothing is downloaded;
- the real API: `itsacat serve` (the `chalice local` server, `api_support.serve_api`) on
  127.0.0.1, allowed to fetch pictures from 127.0.0.2 only;
- the S3 emulator: a moto server on 127.0.0.1 holding the model the API serves;
- a picture server on 127.0.0.2 (`api_support.PictureServer`) and files in a temporary folder.
Nothing leaves the loopback range. A missing browser fails the tests with the command that
installs it: these tests are the check that the page works in a browser, so they never skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.api.api_support import (
    BLUE,
    RED,
    Api,
    PictureServer,
    picture,
    serve_api,
    store_with_model,
)
from tests.browser.browser_support import RednessModel

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PICTURE_HOST = "127.0.0.2"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def model() -> RednessModel:
    return RednessModel.make(f"browser-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="module")
def pictures() -> Iterator[PictureServer]:
    """/gen/red.png (a cat to the model) and /gen/blue.png (not a cat) on 127.0.0.2."""
    server = PictureServer(PICTURE_HOST)
    server.files["red.png"] = ("image/png", picture(RED))
    server.files["blue.png"] = ("image/png", picture(BLUE))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(
    moto_endpoint: str, model: RednessModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """`itsacat serve` over moto S3, serving `model` (published: production)."""
    bucket = store_with_model(
        moto_endpoint, "itsacat-browser", model.run_id, model.weights, model.metadata
    ).bucket
    log_path = tmp_path_factory.mktemp("browser-serve") / "serve.log"
    env = {"ITSACAT_FETCH_PORTS": "any"}  # the picture server listens on a random port
    with serve_api(moto_endpoint, bucket, log_path, env, allow=PICTURE_HOST) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Headless Chromium (Debian's), its console log kept for `console_errors`."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: run `make browser` (apt-get install chromium "
            "chromium-driver), which `make test` runs first",
            pytrace=False,
        )
    folder = tmp_path_factory.mktemp("chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # we run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--disable-background-networking",  # no calls home: only the pages we ask for
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        "--window-size=1024,768",
        f"--user-data-dir={folder / 'profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium then skips Selenium Manager (no download, no lookup).
    service = Service(
        executable_path=str(CHROMEDRIVER), log_output=str(folder / "chromedriver.log")
    )
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
