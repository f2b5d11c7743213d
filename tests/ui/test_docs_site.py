"""The documentation site as a reader meets it: ``make docs``, then headless Chromium on docs/_build/html.

``make docs`` (the docs venv, Sphinx with ``-W -n``, the docstring and internal-link checks) runs once per
session; a warning fails it, and so this test. The browser then opens ``index.html`` from the file system, finds
every page a user needs from the navigation, opens each one and fails on a page that is missing, has no title,
shows a broken image or raises a JavaScript error. Screenshots of the index and of an operator page go to
tests/ui/output/ (gitignored). Nothing is requested from the network: the site is files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.ui

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "docs" / "_build" / "html"

#: Each page of the site a user must find from the navigation: its path and a word its title holds.
PAGES = {
    "quickstart.html": "Quickstart",
    "examples.html": "Example DAGs",
    "connection.html": "connection",
    "hook.html": "hook",
    "operators.html": "Operators",
    "taskflow.html": "TaskFlow",
    "batch.html": "Batch",
    "deferrable.html": "Deferrable",
    "review.html": "Review",
    "sensors.html": "Sensor",
    "sessions.html": "Sessions",
    "candela_page.html": "Candela page",
    "managed_agents.html": "common-ai",
    "deployment.html": "deployment",
    "configuration.html": "Configuration",
    "telemetry.html": "Metrics",
    "troubleshooting.html": "Troubleshooting",
    "emulator.html": "emulator",
    "testing.html": "Testing",
    "reliability.html": "Reliability",
    "benchmarks.html": "Benchmarks",
    "development.html": "Development",
    "api/index.html": "API reference",
    "api/operators.html": "Operators",
    "changelog.html": "Changelog",
}


@pytest.fixture(scope="session")
def docs_html() -> Path:
    """``make docs`` run now (it fails on any Sphinx warning); the built site's folder."""
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed: it builds the docs (apt-get install make)")
    done = subprocess.run(
        [make, "-s", "docs"], cwd=ROOT, capture_output=True, text=True, timeout=1200, env=dict(os.environ), check=False
    )
    if done.returncode != 0:
        pytest.fail(f"make docs failed ({done.returncode}):\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}")
    assert (HTML / "index.html").exists()
    return HTML


def _open(page: Page, url: str) -> list[str]:
    """Go to ``url``; the JavaScript errors it raised and the images it could not show."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"JavaScript error: {error}"))
    page.goto(url)
    page.wait_for_load_state("load")
    broken = page.evaluate(
        "() => Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    errors += [f"broken image {src}" for src in broken]
    return errors


def test_every_page_is_found_from_the_navigation_and_renders(
    docs_html: Path, browser_context: BrowserContext, ui_output_dir: Path
) -> None:
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    index = (docs_html / "index.html").as_uri()
    assert _open(page, index) == []
    assert "airflow-provider-candela" in page.title()
    page.screenshot(path=str(ui_output_dir / "index.png"), full_page=True)

    # The sidebar's links, as the browser resolved them (absolute file:// URLs).
    hrefs = page.eval_on_selector_all(".sidebar-tree a.reference.internal", "links => links.map(a => a.href)")
    found = {href.split("#", 1)[0].removeprefix(docs_html.as_uri() + "/") for href in hrefs}
    missing = sorted(set(PAGES) - found)
    assert not missing, f"pages not reachable from the navigation: {missing} (found {sorted(found)})"

    problems: list[str] = []
    for path, title_word in PAGES.items():
        errors = _open(page, f"{docs_html.as_uri()}/{path}")
        heading = page.locator("article h1").first.inner_text()
        if title_word.lower() not in heading.lower():
            errors.append(f"heading {heading!r} lacks {title_word!r}")
        if page.locator("article p, article table, article pre").count() < 1:
            errors.append("no content")
        problems += [f"{path}: {error}" for error in errors]
        if path == "operators.html":
            # The examples are included from example_dags/ (not typed into the page).
            assert page.locator("text=CandelaStartSessionOperator(").count() >= 1
            page.screenshot(path=str(ui_output_dir / "operators.png"), full_page=True)
        if path == "api/operators.html":
            # The operators' shared options show on their documented bases, linked from each public operator.
            assert page.locator("dt[id$='_StartOperatorBase']").count() == 1
            assert page.locator("text=slot_ready_timeout").count() >= 1
            page.screenshot(path=str(ui_output_dir / "api-operators.png"), full_page=True)
    assert not problems, "\n".join(problems)
