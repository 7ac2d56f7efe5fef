"""Lease handles (jobsys.server.leases): what they name, and that none can be forged."""

from __future__ import annotations

import pytest

from jobsys.server.leases import BadHandle, Handle, make_handle, read_handle

REPLY = "$JS.ACK.ns_job_7.ns_job_7_workers.2.41.41.1700000000000000000.5"
SECRET = b"s" * 32


def test_a_handle_names_its_job_task_and_message() -> None:
    h = read_handle([SECRET], make_handle(SECRET, Handle(7, 3, REPLY)))
    assert (h.job_id, h.task_no, h.reply, h.delivered, h.stream_seq) == (7, 3, REPLY, 2, 41)


def test_a_handle_made_with_the_previous_secret_is_still_read() -> None:
    text = make_handle(b"old", Handle(7, 3, REPLY))
    assert read_handle([SECRET, b"old"], text).task_no == 3
    with pytest.raises(BadHandle):
        read_handle([SECRET], text)


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.replace(t[:4], "MTox", 1),  # another job / task
        lambda t: t[:-3] + ("AAA" if not t.endswith("AAA") else "BBB"),  # another MAC
        lambda t: t.split(".")[0],  # no MAC
        lambda t: "",
        lambda t: "x" * 700,
        lambda t: "a.b.c",
    ],
)
def test_an_edited_or_made_up_handle_is_refused(edit: object) -> None:
    text = make_handle(SECRET, Handle(7, 3, REPLY))
    with pytest.raises(BadHandle):
        read_handle([SECRET], edit(text))  # type: ignore[operator]


def test_a_handle_for_another_task_with_a_valid_mac_cannot_be_made_without_the_secret() -> None:
    mine = make_handle(b"attacker", Handle(7, 4, REPLY))
    with pytest.raises(BadHandle, match="forged or altered"):
        read_handle([SECRET], mine)
