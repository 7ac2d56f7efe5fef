"""The NATS wire format, parsed in one place (jobsys.nats.subjects). No server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobsys.nats.subjects import (
    JobNames,
    delivered_at_ns,
    job_id_of_stream,
    job_notices,
    parse_ack_subject,
    parse_job_notice,
    serial_of_confirm,
)
from jobsys.processor.feeds import pending_of


def test_both_forms_of_an_ack_subject_say_the_same() -> None:
    short = parse_ack_subject("$JS.ACK.ns_job_3.ns_job_3_workers.2.41.40.1700000000000000001.9")
    long = parse_ack_subject(
        "$JS.ACK.hub.ACCHASH.ns_job_3.ns_job_3_workers.2.41.40.1700000000000000001.9.tok"
    )
    assert short == long
    assert short is not None
    assert (short.stream, short.consumer, short.delivered, short.stream_seq) == (
        "ns_job_3",
        "ns_job_3_workers",
        2,
        41,
    )


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "_INBOX.x",
        "$JS.ACK.s.c.1.2",
        "$JS.ACK.s.c.x.2.3.4.5",
        "$JS.ACK.s.c.1.y.3.4.5",
        "$JS.ACK.a.b.s.c.1.2.3.4",  # ten tokens: neither form
        "$JS.NAK.s.c.1.2.3.4.5",
    ],
)
def test_what_is_not_an_ack_subject_is_none(reply: str) -> None:
    assert parse_ack_subject(reply) is None


@given(
    st.lists(
        st.sampled_from(["$JS", "ACK", "s", "c", "1", "17", "x", "", "1700000000000000001", "-3"]),
        max_size=13,
    )
)
def test_the_delivery_time_alone_is_what_the_full_parse_says(tokens: list[str]) -> None:
    """The acks' cheap reading of an ack subject agrees with the full one."""
    for reply in (".".join(tokens), ".".join(["$JS", "ACK", *tokens])):
        ack = parse_ack_subject(reply)
        assert delivered_at_ns(reply) == (ack.delivered_at_ns if ack is not None else None)


def test_the_delivery_time_of_both_forms() -> None:
    assert delivered_at_ns("$JS.ACK.s.c.2.41.40.1700000000000000001.9") == 1700000000000000001
    assert delivered_at_ns("$JS.ACK.hub.H.s.c.2.41.40.1700000000000000001.9.t") == (
        1700000000000000001
    )
    assert delivered_at_ns("$JS.ACK.s.c.2.41.40.x.9") is None
    assert delivered_at_ns("_INBOX.a") is None


def test_job_names_and_streams_of_a_namespace() -> None:
    names = JobNames.of("ns", 12)
    assert names.stream == "ns_job_12" and names.subject == "ns.tasks.12"
    assert names.pull == "$JS.API.CONSUMER.MSG.NEXT.ns_job_12.ns_job_12_workers"
    assert job_id_of_stream("ns", "ns_job_12") == 12
    assert job_id_of_stream("ns", "other_job_12") is None
    assert job_id_of_stream("ns", "ns_job_12x") is None


def test_job_notice_and_confirmation_subjects() -> None:
    names = JobNames.of("ns", 1)
    for event in ("CREATED", "UPDATED", "DELETED"):
        assert names.notice(event) == f"ns.jobs.{event}.ns_job_1"
        assert parse_job_notice("ns", names.notice(event)) == (event, 1)
    assert job_notices("ns") == "ns.jobs.*.*"
    # Another namespace's, an unknown event, a stream not a job's, other subjects.
    assert parse_job_notice("ns", JobNames.of("other", 1).notice("CREATED")) is None
    assert parse_job_notice("n", JobNames.of("ns", 1).notice("CREATED")) is None
    assert parse_job_notice("ns", "ns.jobs.PURGED.ns_job_1") is None
    assert parse_job_notice("ns", "ns.jobs.CREATED.ns_job_x") is None
    assert parse_job_notice("ns", "ns.jobs.CREATED") is None
    assert parse_job_notice("ns", "$JS.EVENT.ADVISORY.STREAM.CREATED.ns_job_1") is None
    assert serial_of_confirm("_INBOX.abc.17") == 17
    assert serial_of_confirm("_INBOX.abc.x") is None


def test_a_deliverys_pending_count_is_read_from_both_forms_of_its_subject() -> None:
    assert pending_of("$JS.ACK.ns_job_3.ns_job_3_workers.2.41.40.1700000000000000001.9") == 9
    assert pending_of("$JS.ACK.hub.HASH.ns_job_3.ns_job_3_workers.2.41.40.17000.0.tok") == 0
    assert pending_of("_INBOX.abc") is None
    assert pending_of("$JS.ACK.s.c.1.2.3.4.x") is None
