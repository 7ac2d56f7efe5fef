"""A CREATED notice's body: what it carries, and what a processor refuses to read."""

from __future__ import annotations

import json

import pytest

from jobsys.nats.notices import MAX_NOTICE_BODY, StreamTerms, created_body, parse_created_body

TERMS = StreamTerms('{"pipeline": "echo", "max_deliver": 3}', 5, 30.0)


def test_a_body_says_the_terms_it_was_made_with() -> None:
    assert parse_created_body(created_body(TERMS)) == TERMS


def _body(**changes: object) -> bytes:
    value: dict[str, object] = {
        "description": TERMS.description,
        "max_deliver": 5,
        "ack_wait_s": 30,
    }
    value.update(changes)
    return json.dumps({k: v for k, v in value.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",  # an older sender: the processor asks the server
        b"not json",
        b"[1, 2]",
        b"\xff\xfe",
        _body(description=...),
        _body(description=7),
        _body(max_deliver=0),
        _body(max_deliver=True),
        _body(max_deliver=2.5),
        _body(max_deliver=10**12),
        _body(ack_wait_s=0),
        _body(ack_wait_s=-1),
        _body(ack_wait_s=False),
        _body(ack_wait_s="30"),
        _body(ack_wait_s=10**9),
        b'{"description": "", "max_deliver": 5, "ack_wait_s": NaN}',
        b'{"description": "", "max_deliver": 5, "ack_wait_s": Infinity}',
        _body(description="x" * MAX_NOTICE_BODY),
    ],
)
def test_a_body_that_is_missing_or_not_valid_carries_nothing(data: bytes) -> None:
    assert parse_created_body(data) is None
