"""The web console's rules that need no server: text shown literally, the CSRF check,
where the sign-in cookie is accepted, safe redirects, the chart, one query per
refresh however many pages watch, and the refusals answered before any lookup."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
from markupsafe import Markup
from starlette.datastructures import Headers
from starlette.types import Message

from jobsys.api.overview import JobLine, Minute, Progress, judge_blocked
from jobsys.models import JobView
from jobsys.server import session
from jobsys.server.app import CONTENT_SECURITY_POLICY, create_app
from jobsys.server.console.actions import local_path
from jobsys.server.console.chart import MAX_POINTS, grouped, points, progress_chart
from jobsys.server.console.live import Hub, job_state
from jobsys.server.console.render import ENV, bar, one_line, visible

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def view(job_id: int = 1, name: str = "n", pipeline: str = "echo", **counts: int) -> JobView:
    row: dict[str, Any] = {
        "id": job_id, "name": name, "pipeline": pipeline, "status": "started",
        "total_count": 100, "published_count": 100, "done_count": 0, "failed_count": 0,
        "lost_count": 0, "cancelled_count": 0, "failure_threshold": 0.0, "max_deliver": 5,
        "created_at": T0, "started_at": T0, "finished_at": None, "progress_at": T0,
    }  # fmt: skip
    row.update({f"{k}_count": v for k, v in counts.items()})
    return JobView.from_row(row)


def line(job_id: int = 1, pipeline: str = "echo", **counts: int) -> JobLine:
    return JobLine(view=view(job_id, pipeline=pipeline, **counts), children=0, rate=0.0)


# ------------------------------------------------------------ text shown literally


def test_control_and_invisible_characters_are_shown_as_escapes() -> None:
    assert visible("a\x1b[2J\x1b[31mEVIL") == "a\\x1b[2J\\x1b[31mEVIL"
    assert visible("nul\x00 del\x7f c1\x9b") == "nul\\x00 del\\x7f c1\\x9b"
    assert visible("rtl\u202eevil zw\u200b bom\ufeff") == "rtl\\u202eevil zw\\u200b bom\\ufeff"
    assert visible("line one\n\tline two") == "line one\n\tline two"
    assert one_line("a\nb\tc\u2028d") == "a\\x0ab\\x09c\\u2028d"
    assert visible("plain ünïcødé 漢字") == "plain ünïcødé 漢字"


def test_every_value_a_template_prints_is_escaped_and_made_visible() -> None:
    template = ENV.from_string("<p>{{ name }}</p><p>{{ svg }}</p>")
    html = template.render(name="<img src=x onerror=alert(1)>\x1b[31m", svg=Markup("<svg/>"))
    assert html == "<p>&lt;img src=x onerror=alert(1)&gt;\\x1b[31m</p><p><svg/></p>"


def test_a_job_named_like_markup_is_text_in_the_jobs_list() -> None:
    evil = JobLine(view=view(7, name='<script>alert("x")</script>'), children=0, rate=0.0)
    html = ENV.get_template("jobs.html").render(
        who=None, csrf="", can_submit=False, path="/jobs", lines=[evil], status=None, q="",
        before=None, next_before=None, statuses=["active"], optional=[], live=True,
    )  # fmt: skip
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


def test_progress_bar_segments_add_up_to_the_settled_share() -> None:
    parts = bar(200, {"done": 100, "failed": 20, "lost": 10, "cancelled": 10})
    assert [k for k, _, _ in parts] == ["done", "failed", "lost", "cancelled"]
    assert parts[0] == ("done", 0, 500.0)
    assert parts[3] == ("cancelled", 650.0, 50.0)
    assert sum(w for _, _, w in parts) == 700.0


# ------------------------------------------------------------ CSRF and the cookie


def headers(**values: str) -> Headers:
    return Headers({k.replace("_", "-"): v for k, v in values.items()})


def body_of(*chunks: bytes) -> Any:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]  # fmt: skip

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


TOKEN = "jst_" + "a" * 43


def test_the_csrf_token_depends_on_the_sign_in_token_and_reveals_nothing_of_it() -> None:
    assert session.csrf_token(TOKEN) == session.csrf_token(TOKEN)
    assert session.csrf_token(TOKEN) != session.csrf_token("jst_" + "b" * 43)
    assert TOKEN[4:12] not in session.csrf_token(TOKEN)


def test_a_change_carries_the_csrf_token_in_a_header_or_its_form() -> None:
    good = session.csrf_token(TOKEN)

    async def check(h: Headers, *chunks: bytes) -> bytes:
        receive = await session.check_csrf(h, body_of(*chunks), TOKEN)
        message = await receive()
        return bytes(message.get("body", b""))

    assert anyio.run(check, headers(x_csrf_token=good)) == b""
    form = headers(content_type="application/x-www-form-urlencoded")
    # The form's body is read to find the token, then handed to the route whole.
    assert anyio.run(check, form, b"status=failed&csrf=", good.encode()) == (
        b"status=failed&csrf=" + good.encode()
    )
    refused = [
        (headers(), b""),
        (headers(x_csrf_token="0" * 64), b""),
        (form, b"csrf=" + b"0" * 64),
        (form, b"status=failed"),
        (headers(content_type="multipart/form-data"), b"csrf=" + good.encode()),
        (headers(x_csrf_token=good, sec_fetch_site="cross-site"), b""),
        (headers(x_csrf_token=good, sec_fetch_site="same-site"), b""),
        (form, b"csrf=" + good.encode() + b"&x=" + b"y" * session.MAX_FORM_BYTES),
    ]
    for h, body in refused:
        with pytest.raises(session.CsrfRefused):
            anyio.run(check, h, body)


def test_a_secure_sign_in_cookie_is_kept_to_this_host() -> None:
    assert session.session_cookie(True) == "__Host-jobsys_token"
    assert session.session_cookie(False) == "jobsys_token"
    both = headers(cookie=f"jobsys_token=plain; __Host-jobsys_token={TOKEN}")
    assert session.signed_in_token(both) == TOKEN
    assert session.signed_in_token(headers(cookie="jobsys_token=plain")) == "plain"
    assert session.signed_in_token(headers()) is None


def test_the_cookie_is_for_console_paths_only() -> None:
    assert session.is_console_path("/jobs/1")
    assert session.is_console_path("/")
    for path in ("/api/jobs", "/api/jobs/1/cancel", "/api", "/openapi.json"):
        assert not session.is_console_path(path)


def test_after_sign_in_a_person_is_sent_only_to_a_path_of_this_server() -> None:
    assert local_path("/jobs/7?status=failed") == "/jobs/7?status=failed"
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "", None,
                   "javascript:alert(1)"):  # fmt: skip
        assert local_path(target) == "/jobs"


def asgi_calls(*requests: tuple[str, str, dict[str, str]]) -> list[httpx.Response]:
    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return [await c.request(m, p, headers=h) for m, p, h in requests]

    return anyio.run(calls)


def test_refusals_before_any_lookup_browser_to_sign_in_api_never_by_cookie() -> None:
    html = {"accept": "text/html"}
    bad_cookie = {"cookie": f"{session.COOKIE}=not-a-token", "accept": "text/html"}
    page, api, api_cookie, change, signin, script = asgi_calls(
        ("GET", "/jobs/3?status=failed", html),
        ("GET", "/api/jobs", {}),
        ("GET", "/api/jobs", {"cookie": f"{session.COOKIE}={TOKEN}"}),
        ("POST", "/jobs/3/cancel", bad_cookie),
        ("GET", "/signin", html),
        ("GET", "/static/console.js", {}),
    )
    assert page.status_code == 303
    assert page.headers["location"] == "/signin?next=%2Fjobs%2F3%3Fstatus%3Dfailed"
    assert api.status_code == 401 and api_cookie.status_code == 401
    assert "Bearer" in api_cookie.json()["detail"]  # the cookie was not even looked at
    assert change.status_code == 401 and "text/html" in change.headers["content-type"]
    assert signin.status_code == 200
    nonce_cookie = signin.headers["set-cookie"]
    assert "HttpOnly" in nonce_cookie and "SameSite=strict" in nonce_cookie
    assert script.status_code == 200 and "EventSource" in script.text
    for answer in (page, api, change, signin, script):
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert answer.headers["x-frame-options"] == "DENY"
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert "'unsafe-eval'" not in CONTENT_SECURITY_POLICY


def test_signing_in_needs_the_sign_in_pages_own_value() -> None:
    (answer,) = asgi_calls(
        ("POST", "/signin", {"content-type": "application/x-www-form-urlencoded",
                             "cookie": f"{session.SIGNIN_COOKIE}=abc", "accept": "text/html"}),
    )  # fmt: skip
    assert answer.status_code == 403
    assert "sign in again" in answer.text


# ------------------------------------------------------------ the chart


def test_the_chart_sums_the_rollup_and_draws_without_style_or_script() -> None:
    minutes = [Minute(T0 + timedelta(minutes=i), 10, 1 if i % 2 else 0, 0) for i in range(5)]
    progress = Progress(Minute(T0, 0, 0, 0), minutes)
    pts = points(progress, T0, T0 + timedelta(minutes=6))
    assert pts[0].done == 0 and pts[-1].done == 50 and pts[-1].failed == 2
    assert [p.at for p in pts] == sorted(p.at for p in pts)
    svg = progress_chart(progress, 100, T0, T0 + timedelta(minutes=6))
    assert isinstance(svg, Markup)
    assert "style=" not in svg and "<script" not in svg and "on" + "load" not in svg
    assert "done 50, failed 2, lost 0 of 100" in svg


def test_a_long_job_is_drawn_with_a_bounded_number_of_points() -> None:
    minutes = [Minute(T0 + timedelta(minutes=i), 1, 0, 0) for i in range(10_000)]
    few = grouped(minutes)
    assert len(few) <= MAX_POINTS
    assert sum(m.done for m in few) == 10_000


# ------------------------------------------------------------ one query per refresh


def test_one_read_per_refresh_however_many_pages_watch() -> None:
    reads: list[float] = []
    snapshot = [line(1, done=1), line(2, pipeline="secret", done=1)]

    def read(recent_s: float) -> list[JobLine]:
        reads.append(recent_s)
        return snapshot

    async def scenario() -> tuple[int, list[list[dict[str, Any]]], int]:
        hub = Hub(0.05, read)
        runner = asyncio.get_running_loop().create_task(hub.run())
        subs = [hub.subscribe(None) for _ in range(100)]
        limited = hub.subscribe(frozenset({"echo"}))
        await asyncio.sleep(0.6)
        snapshot[0] = line(1, done=2)
        await asyncio.sleep(0.3)
        runner.cancel()
        seen = [json.loads(subs[0].queue.get_nowait()) for _ in range(subs[0].queue.qsize())]
        mine = [json.loads(limited.queue.get_nowait()) for _ in range(limited.queue.qsize())]
        return hub.reads, [seen, mine], len(reads)

    hub_reads, (seen, mine), calls = asyncio.run(scenario())
    # About one read per 0.05 s for 0.9 s, not 101 per refresh.
    assert calls == hub_reads and 3 <= calls <= 30
    assert seen[0]["full"] is True and set(seen[0]["jobs"]) == {"1", "2"}
    # Then only what changed: job 1's count, once.
    assert [m["jobs"] for m in seen[1:]] == [{"1": job_state(line(1, done=2))}]
    # A token limited to `echo` never hears of the other pipeline's job.
    assert all("2" not in m["jobs"] for m in mine)
    assert mine[0]["full"] is True and set(mine[0]["jobs"]) == {"1"}


def test_no_read_while_no_page_is_open() -> None:
    reads: list[float] = []

    async def scenario() -> None:
        hub = Hub(0.01, lambda s: reads.append(s) or [])
        runner = asyncio.get_running_loop().create_task(hub.run())
        await asyncio.sleep(0.2)
        runner.cancel()

    asyncio.run(scenario())
    assert reads == []


def test_a_page_that_falls_behind_gets_the_whole_snapshot_again() -> None:
    async def scenario() -> list[dict[str, Any]]:
        hub = Hub(60, lambda s: [])
        sub = hub.subscribe(None)
        for n in range(30):
            hub.publish([line(1, done=n)])
        return [json.loads(sub.queue.get_nowait()) for _ in range(sub.queue.qsize())]

    messages = asyncio.run(scenario())
    # What it had not read was dropped; it starts again from a whole, recent snapshot.
    assert len(messages) < 30
    assert messages[0]["full"] is True and messages[0]["jobs"]["1"]["done"] > 0
    assert messages[-1]["jobs"]["1"]["done"] == 29


def test_each_active_job_is_judged_blocked_from_one_look_at_who_runs() -> None:
    finished = JobLine(view=view(3).model_copy(update={"status": "success"}), children=0,
                       rate=0.0)  # fmt: skip
    judged = judge_blocked([line(1), finished], team=[])
    assert judged[0].view.blocked == "no processor or worker is running"
    assert judged[1].view.blocked is None
    unseen = judge_blocked([line(1)], team="cannot see workers and processors: NATS down")
    assert unseen[0].view.blocked == "cannot see workers and processors: NATS down"
    assert job_state(judged[0])["blocked"] == "no processor or worker is running"
