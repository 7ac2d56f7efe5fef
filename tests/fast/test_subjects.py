"""Pure parsing of what NATS hands back: message ids, ack subjects, server times."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from jobsys.nats.admin import parse_server_time
from jobsys.nats.subjects import parse_ack_subject, parse_msg_id


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2026-11-23T13:09:34.123456789Z", datetime(2026, 11, 23, 13, 9, 34, 123456, UTC)),
        # Go trims trailing zeros of the fraction: 4 digits, or none at all.
        ("2026-11-23T13:09:34.1234Z", datetime(2026, 11, 23, 13, 9, 34, 123400, UTC)),
        ("2026-11-23T13:09:34Z", datetime(2026, 11, 23, 13, 9, 34, tzinfo=UTC)),
        ("2026-11-23T13:09:34.5+00:00", datetime(2026, 11, 23, 13, 9, 34, 500000, UTC)),
    ],
)
def test_server_times_parse_whatever_the_fraction(text: str, want: datetime) -> None:
    assert parse_server_time(text) == want


def test_a_parsed_time_is_passed_through() -> None:
    now = datetime.now(UTC)
    assert parse_server_time(now) is now and parse_server_time(None) is None


@pytest.mark.parametrize(
    ("value", "want"),
    [("12:7", (12, 7)), ("12:x", None), ("", None), (None, None), ("1:2:3", None)],
)
def test_message_ids(value: str | None, want: tuple[int, int] | None) -> None:
    assert parse_msg_id(value) == want


def _at(reply: str) -> int | None:
    ack = parse_ack_subject(reply)
    assert ack is not None
    return ack.delivered_at_ns


def test_delivered_at_comes_from_the_ack_subject() -> None:
    v1 = "$JS.ACK.stream.consumer.1.5.7.1700000000123456789.3"
    v2 = "$JS.ACK.domain.hash.stream.consumer.1.5.7.1700000000123456789.3.token"
    assert _at(v1) == _at(v2) == 1700000000123456789
    assert parse_ack_subject("_INBOX.abc") is None
