"""The Candela page in a real browser: headless Debian Chromium, a real ``airflow api-server``, the emulator.

Log in, open Candela from the navigation, see the slot and the running session, stop it (the emulator then
runs none), delete a stored session; each action waits for the page's own confirmation dialog (Cancel does
nothing).  Screenshots land in tests/ui/output/<test>/ (the README's copy: docs/candela-page.png).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from airflow_ui import AirflowServer, wait_for
from candela_sessions import slot_with_sessions

from airflow_provider_candela.testing import CandelaEmulator

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.ui
CONN_ID = "candela_page_ui"
DOCS_SCREENSHOT = Path(__file__).parents[2] / "docs" / "candela-page.png"


def test_candela_page_shows_and_fixes_the_slot(
    page: Page,
    airflow_server: AirflowServer,
    candela_emulator: CandelaEmulator,
    ui_output_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from playwright.sync_api import expect

    if CONN_ID not in airflow_server.cli("connections", "list", "-o", "plain"):
        airflow_server.cli("connections", "add", CONN_ID, "--conn-json", candela_emulator.connection_json())
    old, running = slot_with_sessions(candela_emulator, monkeypatch, "default/demo-agent", "default/demo-pipeline")

    page.get_by_role("button", name="Admin").click()
    page.get_by_role("menuitem", name="Candela").click()
    page.wait_for_url("**/plugin/candela")
    frame = page.frame_locator("iframe").first
    row = frame.locator(f"tr[data-conn='{CONN_ID}']")
    expect(row).to_contain_text("HOST_READY")
    expect(row).to_contain_text("default/demo-pipeline")
    row.get_by_role("button", name=CONN_ID).click()
    stored = frame.locator("#sessions tbody tr")
    expect(stored).to_have_count(2)
    expect(stored.first).to_contain_text(running.obj_id.identifier)
    page.screenshot(path=str(ui_output_dir / "candela-page.png"), full_page=True)
    DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(ui_output_dir / "candela-page.png", DOCS_SCREENSHOT)

    dialog = frame.locator("dialog#confirm")
    message = frame.locator("#message")
    row.get_by_role("button", name="Stop session").click()
    expect(dialog).to_contain_text(f"Stop the running session for connection '{CONN_ID}'?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(message).to_contain_text("Nothing done")
    assert candela_emulator.stats()["running_sessions"][candela_emulator.username] is not None

    row.get_by_role("button", name="Stop session").click()
    dialog.get_by_role("button", name="Confirm").click()
    expect(message).to_contain_text("Stopped the session")
    wait_for(lambda: candela_emulator.stats()["running_sessions"][candela_emulator.username] is None, 10, "the stop")
    page.screenshot(path=str(ui_output_dir / "stopped.png"), full_page=True)

    stored.filter(has_text=old.obj_id.identifier).get_by_role("button", name="Delete").click()
    dialog.get_by_role("button", name="Confirm").click()
    expect(message).to_contain_text(f"Deleted 1 session version(s): {old.obj_id}")
    expect(stored).to_have_count(1)
    expect(stored.first).to_contain_text(running.obj_id.identifier)
    assert candela_emulator.stats()["sessions_stored"] == 1
    page.screenshot(path=str(ui_output_dir / "deleted.png"), full_page=True)
