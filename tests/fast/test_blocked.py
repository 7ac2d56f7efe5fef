"""Why a job cannot move on, judged from who announced themselves (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobsys.api.items import check_item
from jobsys.api.statuses import one_or_more, parse_statuses, status_list
from jobsys.errors import InvalidInput
from jobsys.lifecycle.blocked import WAITING_FOR_RETRY, blocked_reason
from jobsys.nats.presence import GONE_AFTER_S, Member, Refusal

NOW = datetime(2026, 1, 1, tzinfo=UTC)
JOB = 7


def member(kind: str, seen_s_ago: float = 1.0, **fields: Any) -> Member:
    return Member(kind=kind, id=f"{kind}{seen_s_ago}".replace(".", ""), host="h", pid=1,
                  version="0", started_at=NOW, seen_at=NOW - timedelta(seconds=seen_s_ago),
                  **fields)  # fmt: skip


def refusing(reason: str = "not allowed by JOBSYS_PIPELINE_MODULES") -> Member:
    return member("processor", refused=[Refusal(job_id=JOB, pipeline="x:y", reason=reason)])


@pytest.mark.parametrize(
    ("status", "team", "reason"),
    [
        ("queued", [], "no worker is running"),
        ("queued", [member("worker")], None),
        ("canceling", [member("processor")], "no worker is running"),
        ("started", [], "no processor or worker is running"),
        ("started", [member("worker")], "no processor is running"),
        ("started", [member("processor", jobs=[JOB])],
         "no worker is running: results are not recorded"),
        ("started", [member("worker"), member("processor", jobs=[JOB])], None),
        # Seen too long ago, or stopped: not running.
        ("started", [member("worker"), member("processor", GONE_AFTER_S + 1, jobs=[JOB])],
         "no processor is running"),
        ("started", [member("worker", state="stopped"), member("processor", jobs=[JOB])],
         "no worker is running: results are not recorded"),
        ("started", [member("worker"), refusing(), refusing()],
         'pipeline "x:y" refused by 2 processors: not allowed by JOBSYS_PIPELINE_MODULES'),
        ("started", [member("worker"), refusing(), refusing("cannot be loaded here: boom")],
         'pipeline "x:y" refused by 2 processors: not allowed by JOBSYS_PIPELINE_MODULES '
         "(and 1 other reason)"),
        # One serves it: another's refusal does not block it.
        ("started", [member("worker"), refusing(), member("processor", jobs=[JOB])], None),
        # Alive, neither serving nor refusing (it will pick the job up): not blocked.
        ("started", [member("worker"), member("processor")], None),
        ("success", [], None),
    ],
)  # fmt: skip
def test_blocked_reason(status: str, team: list[Member], reason: str | None) -> None:
    assert blocked_reason(JOB, status, team, NOW) == reason


def test_waiting_for_retry_is_said_only_when_nothing_else_stops_a_started_job() -> None:
    team = [member("worker"), member("processor", jobs=[JOB])]
    assert blocked_reason(JOB, "started", team, NOW, waits=True) == WAITING_FOR_RETRY
    assert blocked_reason(JOB, "started", team[:1], NOW, waits=True) == "no processor is running"
    assert blocked_reason(JOB, "queued", team, NOW, waits=True) is None


def test_statuses_are_lists_and_strings_are_refused() -> None:
    assert status_list(["failed", "lost", "failed"]) == ("failed", "lost")
    with pytest.raises(InvalidInput, match=r"statuses: give a list, e\.g\. \['cancelled'\]"):
        status_list("cancelled")
    with pytest.raises(InvalidInput, match="statuses: nope is not one of"):
        status_list(["nope"])
    assert one_or_more("done") == ("done",) and one_or_more("all") is None
    assert one_or_more(["done", "failed"]) == ("done", "failed")
    with pytest.raises(InvalidInput, match="for several, give a list"):
        one_or_more("done,failed")
    assert parse_statuses("failed, lost") == ("failed", "lost")


def test_a_dict_item_is_written_as_strict_json() -> None:
    assert check_item({"n": 1, "s": "é"}, "item 1") == '{"n": 1, "s": "é"}'
    with pytest.raises(InvalidInput, match="item 3: cannot be written as strict JSON"):
        check_item({"x": float("inf")}, "item 3")
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(InvalidInput, match="item 4: cannot be written as strict JSON"):
        check_item(loop, "item 4")
    with pytest.raises(InvalidInput, match="item 5: expected a dict or JSON text, got list"):
        check_item([1], "item 5")
