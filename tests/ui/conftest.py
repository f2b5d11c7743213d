"""Fixtures of the browser test: Chromium, a real ``airflow api-server`` and a logged-in page.

Chromium comes from Debian (``make system-deps`` installs it before the suite starts) and is
driven by Playwright's Python package; no browser is downloaded. Every process started here is
stopped here, by the process group of the child that was started.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from airflow_ui import (
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWER_USER,
    AirflowServer,
    ensure_playwright,
    require_chromium,
    start_airflow_server,
)

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, Playwright

OUTPUT_DIR = Path(__file__).with_name("output")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ui: browser tests of the Airflow UI (headless Chromium, airflow api-server)")


@pytest.fixture(scope="session")
def airflow_server(
    tmp_path_factory: pytest.TempPathFactory, migrated_database: Callable[[Path], Path]
) -> Iterator[AirflowServer]:
    """A real Airflow 3 ``api-server`` (SQLite, temp AIRFLOW_HOME, the run's migrated database) for the session."""
    home = tmp_path_factory.mktemp("airflow-ui-home")
    server = start_airflow_server(home, users={VIEWER_USER: "viewer"}, database=migrated_database)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    """Playwright's driver, for one test module: its sync API runs an event loop in pytest's thread while it is
    open, where a later module's ``asyncio.run`` (the triggers' tests) would fail; closed, it leaves none."""
    require_chromium()
    ensure_playwright()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)  # the same guard as the pages' default timeout below (5 s by default)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture
def browser_context(playwright_driver: Playwright, tmp_path: Path) -> Iterator[BrowserContext]:
    """Headless Debian Chromium with a fresh profile (its own ``--user-data-dir``) per test."""
    context = playwright_driver.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 1100},
    )
    # A guard against a hang, not a bound on speed: the api-server shares 2 cores with the other test processes
    # (make test runs four), and a first page load there can take more than Playwright's usual 30 s.
    context.set_default_timeout(120_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def ui_output_dir(request: pytest.FixtureRequest) -> Path:
    """``tests/ui/output/<test name>/`` (gitignored): screenshots to look at after the run."""
    folder = OUTPUT_DIR / str(request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def page(browser_context: BrowserContext, airflow_server: AirflowServer) -> Page:
    """A page logged into the Airflow UI as the simple auth manager's admin user."""
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    page.goto(f"{airflow_server.url}/")
    page.wait_for_url("**/auth/login**")
    page.get_by_label("Username").fill(airflow_server.username)
    page.get_by_label("Password").fill(airflow_server.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{airflow_server.url}/")
    return page
