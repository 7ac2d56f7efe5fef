"""The feeds' inboxes take task messages from nats-py's parser as nats-py itself would
have handed them over: same subject, reply, data and headers; other subscriptions and
unusual headers go nats-py's way; a handler that raises does not stop the reading.
No server needed: the bytes a server sends are fed to nats-py's parser."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol.parser import Parser

from jobsys.processor.inboxes import Inboxes, task_headers

REPLY = "$JS.ACK.ns_tasks_7.ns_c_7.1.{n}.{n}.1733390000000000000.0"


def hmsg(sid: int, n: int, headers: bytes) -> bytes:
    data = b'{"i":%d}' % n
    reply = REPLY.format(n=n)
    line = f"HMSG _INBOX.x {sid} {reply} {len(headers)} {len(headers) + len(data)}\r\n"
    return line.encode() + headers + data + b"\r\n"


def task_header(n: int) -> bytes:
    return f"NATS/1.0\r\nNats-Msg-Id: 7:{n}\r\n\r\n".encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"NATS/1.0\r\nNats-Msg-Id: 7:12\r\n\r\n",
        b"NATS/1.0\r\nNats-Msg-Id:7:12\r\n\r\n",
        b"NATS/1.0\r\nNats-Msg-Id:  7:12 \r\n\r\n",
        b"NATS/1.0\r\nNats-Msg-Id: \xff\r\n\r\n",
    ],
)
def test_a_task_messages_header_reads_as_nats_py_reads_it(raw: bytes) -> None:
    assert task_headers(raw) == asyncio.run(Client()._process_headers(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\n\r\n",
        b"NATS/1.0 404 No Messages\r\n\r\n",
        b"NATS/1.0\r\nNats-Msg-Id: 7:12\r\nOther: x\r\n\r\n",
        b"NATS/1.0\r\nOther: x\r\n\r\n",
    ],
)
def test_any_other_header_is_left_to_nats_py(raw: bytes) -> None:
    assert task_headers(raw) is None


def test_messages_reach_the_handler_as_nats_py_would_build_them_and_a_raise_is_survived() -> None:
    async def scenario() -> tuple[list[Msg], list[Msg]]:
        nc = Client()
        inboxes = Inboxes(nc)
        fast: list[Msg] = []
        slow: list[Msg] = []

        def handler(msg: Msg) -> None:
            if msg.data == b'{"i":1}':
                raise RuntimeError("a handler bug")
            fast.append(msg)

        async def other(msg: Msg) -> None:
            slow.append(msg)

        nc._subs[1] = Subscription(nc, 1, "_INBOX.x")
        inboxes._handlers[1] = handler
        plain = nc._subs[2] = Subscription(nc, 2, "_INBOX.y", cb=other)
        plain._start(None)
        parser = Parser(nc)
        status = b"NATS/1.0 408 Request Timeout\r\n\r\n"
        # Sid 1 is an inbox (a task that raises, a status); sid 2 a plain subscription.
        stream = b"".join(
            [
                hmsg(1, 0, task_header(0)),
                hmsg(1, 1, task_header(1)),
                hmsg(1, 2, status),
                hmsg(2, 3, task_header(3)),
                hmsg(1, 4, task_header(4)),
            ]
        )
        await parser.parse(stream[:50])  # split reads, as they come
        await parser.parse(stream[50:])
        await asyncio.sleep(0.01)
        return fast, slow

    fast, slow = asyncio.run(scenario())
    assert [m.data for m in fast] == [b'{"i":0}', b'{"i":2}', b'{"i":4}']
    assert fast[0].headers == {"Nats-Msg-Id": "7:0"} and fast[0].reply == REPLY.format(n=0)
    assert fast[0].subject == "_INBOX.x" and fast[0]._sid == 1
    assert fast[1].headers is not None and fast[1].headers["Status"] == "408"
    assert [m.headers for m in slow] == [{"Nats-Msg-Id": "7:3"}]
