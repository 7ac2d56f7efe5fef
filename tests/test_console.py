"""The web console in a real browser: Debian's chromium driven by Playwright, against a
real `jobsys serve`, workers and a processor.

A person signs in with a token, watches a running job's progress advance
without reloading, opens its failures grouped by error, cancels it and sees
it `revoked` (the cancel's events arriving in its log in follow mode);
submits a job from an items file, and retries its failed tasks, landing on
the child job. A job named like markup (or made of terminal escape
codes) is shown as text and no dialog fires; signing out forgets the cookie.
An action without the scope, or
without the CSRF token, is refused and changes nothing, and the sign-in
cookie never opens the API.

With JOBSYS_SCREENSHOTS=1 the run writes the screenshots of docs/console.md
(docs/images/console-*.png); ordinary runs write nothing there.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from devtools.chromium import ARGS, BINARY
from jobsys.api.read import get_job, wait_until_final
from jobsys.api.retry import retries_of
from jobsys.api.submit import submit
from jobsys.ops.runner import LocalSystem
from jobsys.server.tokens import create_token
from tests.serving import Server

# A loaded machine: every wait is for a condition, with room to spare.
WAIT_MS = 120_000
SCREENSHOTS = os.environ.get("JOBSYS_SCREENSHOTS") == "1"
IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
XSS_NAME = "<img src=x onerror=alert(1)>"
ESCAPE_NAME = "a\x1b[2J\x1b[31mEVIL\u202eevil"


def token(scope: str) -> str:
    """A fresh token of `scope`."""
    made, _ = create_token(f"console-{scope}-{uuid.uuid4().hex[:8]}", scope)
    return made


@pytest.fixture(scope="module")
def system(services: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """A worker and a processor, so that jobs run."""
    with LocalSystem(workers=1, processors=1, concurrency=4,
                     log_dir=tmp_path_factory.mktemp("logs")) as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def server(services: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`jobsys serve` refreshing the live counters every second."""
    env = {"JOBSYS_CONSOLE_REFRESH_S": "1", "JOBSYS_SERVE_AUTH_FAILURES": "100000/minute"}
    srv = Server(tmp_path_factory.mktemp("serve"), env=env).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's chromium (installed by `make test`: devtools.services install-chromium)."""
    assert BINARY.exists(), f"{BINARY} missing: run `python -m devtools.services install-chromium`"
    launched = playwright.chromium.launch(executable_path=str(BINARY), args=list(ARGS))
    yield launched
    launched.close()


class Visit:
    """A browser context of its own, with every dialog and page error it saw."""

    def __init__(self, browser: Browser, server: Server) -> None:
        self.server = server
        self.context: BrowserContext = browser.new_context(
            base_url=server.url, viewport={"width": 1400, "height": 900}
        )
        self.context.set_default_timeout(WAIT_MS)
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page: Page = self.context.new_page()
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def sign_in(self, with_token: str, start: str = "/jobs") -> Page:
        """Go to `start`, be sent to the sign-in page, sign in, land back on `start`."""
        page = self.page
        page.goto(start)
        page.wait_for_url(re.compile(r"/signin\?next="))
        page.fill("#token", with_token)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(re.escape(start) + r"$"))
        return page

    def csrf(self) -> str:
        return self.page.get_attribute('meta[name="csrf-token"]', "content") or ""

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser: Browser, server: Server) -> Iterator[Visit]:
    v = Visit(browser, server)
    yield v
    v.close()


def shoot(page: Page, name: str) -> None:
    """A screenshot for docs/console.md, only when asked (JOBSYS_SCREENSHOTS=1)."""
    if SCREENSHOTS:
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMAGES / f"console-{name}.png"), full_page=True)


def number_in(page: Page, selector: str) -> int:
    return int(page.inner_text(selector).replace(",", "") or 0)


def wait_for_more(page: Page, selector: str, than: int) -> None:
    """Wait until the number shown in `selector` is above `than` (updated in place)."""
    page.wait_for_function(
        "([sel, n]) => { const el = document.querySelector(sel);"
        " return el && Number(el.textContent.replace(/,/g, '')) > n; }",
        arg=[selector, than],
        timeout=WAIT_MS,
    )


def slow_job(name: str, tasks: int = 2_000, sleep_ms: int = 100) -> int:
    """A job that runs for a while (50 s or more on the suite's 4 slots: every test
    that watches one cancels it well before), every 10th task failing."""
    items = [json.dumps({"n": i, "sleep_ms": sleep_ms, "fail": i % 10 == 3}) for i in range(tasks)]
    return submit("echo", items, name=name, failure_threshold=1.0).id


def test_running_job_progress_advances_live_then_its_failures_then_cancel_revokes(
    system: LocalSystem, server: Server, visit: Visit
) -> None:
    job_id = slow_job("nightly thumbnails")
    page = visit.sign_in(token("submit"))
    row = f'tr[data-job="{job_id}"]'
    page.wait_for_selector(row)
    # A marker that a reload would wipe: the counts must move without one.
    page.evaluate("window.__notReloaded = true")
    before = number_in(page, f'{row} [data-field="done"]')
    wait_for_more(page, f'{row} [data-field="done"]', before)
    assert page.evaluate("window.__notReloaded === true")
    assert "live" in page.inner_text("#live-state")

    page.click(f'{row} a[href="/jobs/{job_id}"] >> nth=0')
    page.wait_for_url(f"**/jobs/{job_id}")
    page.evaluate("window.__notReloaded = true")
    done = '[data-job] [data-field="done"]'
    before = number_in(page, done)
    wait_for_more(page, done, before)
    assert page.evaluate("window.__notReloaded === true")
    assert page.inner_text(".job-head .status") == "started"
    shoot(page, "job")

    # Its failures, grouped by error, with an example task and its payload.
    wait_for_more(page, '[data-job] [data-field="failed"]', 0)
    page.click("#tab-failures")
    page.wait_for_url(f"**/jobs/{job_id}/failures")
    groups = page.locator("#error-groups .group")
    assert groups.count() == 1
    assert "payload asked to fail" in groups.first.inner_text()
    assert '"fail": true' in page.inner_text("#error-groups .payload")
    shoot(page, "failures")

    # Its event log in follow mode, in a second tab: the cancel's events arrive there.
    log = visit.context.new_page()
    log.goto(f"/jobs/{job_id}/events")
    assert log.is_checked("#follow")
    log.evaluate("window.__notReloaded = true")

    # Cancel, behind its confirmation page.
    page.goto(f"/jobs/{job_id}")
    page.click("#action-cancel")
    page.wait_for_url(f"**/jobs/{job_id}/cancel")
    assert get_job(job_id).status == "started"  # asking changed nothing
    page.click("#confirm-cancel")
    page.wait_for_url(f"**/jobs/{job_id}")
    page.wait_for_function(
        "() => document.querySelector('.job-head .status').textContent === 'revoked'",
        timeout=WAIT_MS,
    )
    assert get_job(job_id).status == "revoked"
    log.wait_for_selector("#events tbody tr.fresh >> text=cancel_requested")
    assert log.evaluate("window.__notReloaded === true")
    first = log.locator("#events tbody tr").first.get_attribute("data-event")
    ids = [
        int(i)
        for i in log.eval_on_selector_all("#events tbody tr", "rs => rs.map(r => r.dataset.event)")
    ]
    assert ids == sorted(ids, reverse=True) and int(first or 0) == ids[0]  # newest first
    assert visit.dialogs == [] and visit.errors == []


def test_submit_from_an_items_file_then_retry_its_failures_lands_on_the_child(
    system: LocalSystem, server: Server, visit: Visit, tmp_path: Path
) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"n": i, "fail": i % 4 == 0}) + "\n" for i in range(20)))
    page = visit.sign_in(token("submit"), start="/submit")
    name = f"uploaded {uuid.uuid4().hex[:6]}"
    page.fill("#s-pipeline", "echo")
    page.fill("#s-name", name)
    page.set_input_files("#s-file", str(items))
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    assert get_job(job_id).name == name and get_job(job_id).total == 20
    assert wait_until_final(job_id, timeout=180).status == "failure"

    page.goto(f"/jobs/{job_id}")
    page.click("#action-retry")
    page.wait_for_url(f"**/jobs/{job_id}/retry")
    assert retries_of(job_id) == []  # asking changed nothing
    page.click("#confirm-retry")
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    children = retries_of(job_id)
    assert len(children) == 1
    assert page.url.endswith(f"/jobs/{children[0]}")
    assert f"retry of job {job_id}" in page.inner_text(".job-head")
    assert get_job(children[0]).total == 5
    assert visit.dialogs == [] and visit.errors == []


def test_a_name_made_of_markup_or_escape_codes_is_shown_as_text(
    system: LocalSystem, server: Server, visit: Visit
) -> None:
    xss = submit("echo", [json.dumps({"n": 1})], name=XSS_NAME).id
    escapes = submit("echo", [json.dumps({"n": 1})], name=ESCAPE_NAME).id
    page = visit.sign_in(token("read"))
    page.goto(f"/jobs?q={xss}")
    cell = page.locator(f'tr[data-job="{xss}"] [data-field="name"]')
    assert cell.inner_text() == XSS_NAME
    assert page.locator("tr[data-job] img").count() == 0
    page.goto(f"/jobs/{xss}")
    assert page.inner_text("#job-name") == XSS_NAME
    page.goto(f"/jobs/{escapes}")
    assert page.inner_text("#job-name") == "a\\x1b[2J\\x1b[31mEVIL\\u202eevil"
    page.goto("/jobs")
    page.wait_for_selector(f'tr[data-job="{escapes}"]')
    time.sleep(2)  # a live update or two: text stays text
    assert page.locator("img").count() == 0
    assert visit.dialogs == [], visit.dialogs
    assert visit.errors == []
    # Signing out forgets the cookie: the next page asks to sign in again.
    page.click("header form[action='/signout'] button")
    page.wait_for_url(re.compile(r"/signin$"))
    page.goto("/jobs")
    page.wait_for_url(re.compile(r"/signin\?next="))


def test_actions_without_the_scope_or_the_csrf_token_are_refused(
    system: LocalSystem, server: Server, browser: Browser
) -> None:
    job_id = slow_job("not to be cancelled", sleep_ms=150)
    post = (
        "async ([url, body]) => { const r = await fetch(url, {method: 'POST', body,"
        " redirect: 'manual', headers: {'Content-Type': 'application/x-www-form-urlencoded',"
        " Accept: 'text/html'}}); return r.status; }"
    )
    reader = Visit(browser, server)
    try:
        page = reader.sign_in(token("read"), start=f"/jobs/{job_id}")
        assert page.locator("#action-cancel").count() == 0
        status = page.evaluate(post, [f"/jobs/{job_id}/cancel", f"csrf={reader.csrf()}"])
        assert status == 403
        page.goto(f"/jobs/{job_id}/cancel")
        assert "may not make submit calls" in page.inner_text("#problem-detail")
        # The sign-in cookie never opens the API.
        assert reader.context.request.get("/api/jobs").status == 401
    finally:
        reader.close()

    submitter = Visit(browser, server)
    try:
        page = submitter.sign_in(token("submit"))
        row = f'tr[data-job="{job_id}"] [data-field="done"]'
        wait_for_more(page, row, number_in(page, row))
        shoot(page, "jobs")  # with the jobs of the tests before: lineage, names as text
        page.goto(f"/jobs/{job_id}")
        csrf = submitter.csrf()
        assert page.evaluate(post, [f"/jobs/{job_id}/cancel", ""]) == 403
        assert page.evaluate(post, [f"/jobs/{job_id}/cancel", "csrf=" + "0" * 64]) == 403
        answer = submitter.context.request.post(f"/jobs/{job_id}/cancel", max_redirects=0)
        assert answer.status == 403
        assert get_job(job_id).status == "started"
        # The same request with the token is accepted: the refusals were the CSRF check.
        assert page.evaluate(post, [f"/jobs/{job_id}/cancel", f"csrf={csrf}"]) in (303, 0)
        assert get_job(job_id).status in ("canceling", "revoked")
        shoot_processors(submitter)
    finally:
        submitter.close()


def shoot_processors(visit: Visit) -> None:
    """The processors page shows the running worker and processor as they announce
    themselves, and a remote processor's token (its screenshot for the docs)."""
    name = f"gpu-box-{uuid.uuid4().hex[:4]}"
    create_token(name, "process", ["echo"])
    # A page of its own: the job page just cancelled redraws itself (a new status).
    page = visit.context.new_page()
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        page.goto("/processors")
        rows = page.locator("#members tr.member-alive")
        kinds = {rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())}
        if kinds >= {"worker", "processor"} or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert kinds >= {"worker", "processor"}
    assert name in page.inner_text("#remote")
    shoot(page, "processors")
