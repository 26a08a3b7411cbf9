"""The UI in real headless Chromium (Debian's package, driven by Playwright), on a real database with a real
worker process: load, both toggles, expand logs, retry, trigger, pause, create a task from the form and see it
succeed. Hostile strings in logs stay text. Screenshots go to the test's tmp_path; KUBETASKS_UPDATE_SCREENSHOT=1
also refreshes docs/dashboard.png, the README's."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard.browser import ARGS, chromium_or_reason
from dashboard.helpers import XSS, seed
from workers import WorkerProcess

from kubetasks.worker import controls, db, queue
from kubetasks.worker.dashboard.command import start_background
from kubetasks.worker.dashboard.server import RunningDashboard

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chromium() -> str:
    path, reason = chromium_or_reason()
    if path is None:
        if os.environ.get("KUBETASKS_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture
def dashboard(dsn: str) -> Iterator[RunningDashboard]:
    running = start_background(dsn, modules=["worker_actors"])
    yield running
    running.stop()


@pytest.fixture
def page(chromium: str, tmp_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(20_000)
        yield tab
        context.close()
        browser.close()


def test_system_tasks_page_in_chromium(page: Any, dashboard: RunningDashboard, conn: db.Conn,
                                       start_worker: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    ids = seed(conn)
    dialogs: list[str] = []

    def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(dashboard.url)
    expect(page.locator("#tasks")).to_be_visible()
    expect(page.locator("#schedules tr.schedule")).to_have_count(2)
    standalone, exclude = page.locator("#toggle-standalone"), page.locator("#toggle-exclude-successful")
    expect(standalone).to_be_checked()
    expect(exclude).to_be_checked()

    def row(task_id: int) -> Any:
        return page.locator(f"tr.task[data-id='{task_id}']")

    expect(row(ids["error"])).to_be_visible()
    expect(row(ids["successful"])).to_have_count(0)  # exclude successful
    expect(row(ids["object"])).to_have_count(0)  # standalone only
    exclude.uncheck()
    expect(row(ids["successful"])).to_be_visible()
    standalone.uncheck()
    expect(row(ids["object"])).to_be_visible()
    page.locator(f"tr.task[data-id='{ids['object']}'] a").click()
    expect(page.locator("h2", has_text="Object")).to_be_visible()
    expect(row(ids["object"])).to_be_visible()
    page.go_back()
    expect(page.locator("#tasks")).to_be_visible()

    # expand: current and previous executions, the script tag shown as text
    page.locator("#toggle-exclude-successful").uncheck()
    page.locator("#toggle-standalone").uncheck()
    row(ids["error"]).locator("td.actor").click()
    detail = page.locator(f"tr[data-detail='{ids['error']}']")
    expect(detail.get_by_text("Current execution")).to_be_visible()
    expect(detail.get_by_text("Previous executions")).to_be_visible()
    expect(detail.locator("pre.log", has_text=f"log 2 {XSS}")).to_be_visible()
    expect(detail.locator("pre.log", has_text="first try failed")).to_be_visible()
    assert page.evaluate("document.scripts.length") == 1
    page.screenshot(path=str(tmp_path / "system-tasks.png"))
    if os.environ.get("KUBETASKS_UPDATE_SCREENSHOT") == "1":  # the README's picture, refreshed on demand
        page.screenshot(path=str(REPO / "docs" / "dashboard.png"))

    # a real worker runs what the buttons queue
    start_worker()
    row(ids["error"]).locator("button.retry").click()
    expect(row(ids["error"]).locator(".state")).to_have_text("successful", timeout=30_000)
    assert queue.get_task(conn, ids["error"]).attempts == 1

    schedule = page.locator("tr.schedule[data-name='a/nightly']")
    runs_before = len(queue.list_tasks(conn, queue.TaskFilter(schedule="a/nightly")))
    schedule.locator("button.trigger").click()
    expect(page.locator("#flash")).to_have_text("trigger a/nightly: done")
    assert len(queue.list_tasks(conn, queue.TaskFilter(schedule="a/nightly"))) == runs_before + 1
    answers = iter(["*/10 * * * *", "Europe/Berlin"])
    page.remove_listener("dialog", dismiss)

    def answer(dialog: Any) -> None:
        dialog.accept(next(answers))

    page.on("dialog", answer)
    schedule.locator("button.edit").click()
    expect(schedule.locator("td.cron")).to_have_text("*/10 * * * * Europe/Berlin")
    page.remove_listener("dialog", answer)
    page.on("dialog", dismiss)
    schedule.locator("button.pause").click()
    expect(schedule.locator("button.resume")).to_be_visible()
    paused = conn.execute("SELECT paused FROM kubetasks.schedules WHERE name = 'a/nightly'").fetchone()
    assert paused == {"paused": True}
    schedule.locator("button.resume").click()
    expect(schedule.locator("button.pause")).to_be_visible()
    owned = page.locator("tr.schedule[data-name='b/hourly']")
    owned.locator("button.pause").click()
    expect(page.locator("#flash")).to_contain_text("owned by a Schedule resource")

    # the task manager: a form from t.record's schema, run now, watched until it succeeds
    marker = tmp_path / "from-ui.txt"
    page.locator("#nav-manager").click()
    page.locator("#actor-select").select_option("t.record")
    page.locator("#arg-path").fill(str(marker))
    page.locator("#arg-value").fill(XSS)
    page.locator("#description").fill("made in Chromium")
    page.locator("#submit-task").click()
    expect(page.locator("#created-task")).to_have_attribute("data-state", "successful", timeout=30_000)
    assert marker.read_text() == XSS + "\n"
    made = queue.list_tasks(conn, queue.TaskFilter(actors=["t.record"]), limit=1)[0]
    assert made.args == {"path": str(marker), "value": XSS} and made.state == "successful"

    # overview with its chart, and the runbook's preview
    controls.set_limits(conn, controls.QueueControl("billing", concurrency_limit=2))  # listed while empty
    page.locator("#nav-overview").click()
    expect(page.locator("#throughput-chart")).to_be_visible()
    expect(page.locator("#queues")).to_be_visible()
    queue_row = page.locator('#queues tr.queue[data-name="billing"]')
    expect(queue_row.locator("td").nth(5)).to_have_text("2 running")
    queue_row.locator("button.pause").click()
    expect(queue_row.locator("td").nth(4)).to_have_text("paused")
    assert controls.get(conn, "billing").paused
    queue_row.locator("button.resume").click()
    expect(queue_row.locator("td").nth(4)).to_have_text("active")
    assert not controls.get(conn, "billing").paused
    page.screenshot(path=str(tmp_path / "overview.png"))
    page.locator("#nav-runbook").click()
    page.locator("#rb-action").select_option("delete")
    page.locator("#rb-state").fill("cancelled")
    page.locator("#rb-preview-button").click()
    expect(page.locator("#rb-preview")).to_have_text("1 task(s) would be touched by delete")
    assert queue.get_task(conn, ids["cancelled"]).state == "cancelled"  # a preview deletes nothing

    assert not errors, errors
    assert not any(message == "x" for message in dialogs), dialogs  # the script tag never ran
