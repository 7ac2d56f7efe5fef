"""Publishing tasks survives NATS going away mid-publish.

Found by the chaos suite (seed 2, 60 s): NATS restarted while a worker's
bootstrap had a whole async-publish window in flight. Those acks never came,
every permit of the window stayed taken, and from then on every publish in
that worker process (bootstraps, stream repairs) waited for a permit for ever:
three jobs stayed `started` with their tasks unpublished.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StreamConfig

from jobsys.nats import publish
from jobsys.nats.bridge import NatsBridge
from jobsys.nats.publish import publish_tasks
from jobsys.nats.subjects import JobNames
from jobsys.settings import get_settings, reset_settings
from tests.chaos import PrivateServers

WINDOW = 10
TASKS = 50


@pytest.fixture
def private_nats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateServers]:
    # A small window, so the first publishes fill it (the default is 1,000);
    # a short ack wait, so a publish whose acks are lost gives up quickly.
    monkeypatch.setenv("JOBSYS_PUBLISH_WINDOW", str(WINDOW))
    monkeypatch.setattr(publish, "PUBLISH_TIMEOUT_S", 2.0)
    reset_settings()
    servers = PrivateServers(tmp_path / "servers")
    servers.start_nats()
    yield servers
    servers.stop_all()
    monkeypatch.undo()
    reset_settings()


def _stored(bridge: NatsBridge, names: JobNames) -> int:
    async def count(nc: Any, js: Any) -> int:
        return int((await js.stream_info(names.stream)).state.messages)

    return bridge.run(count, timeout=10)


def test_a_publish_whose_whole_window_of_acks_nats_lost_fails_and_the_next_publish_works(
    private_nats: PrivateServers,
) -> None:
    assert get_settings().publish_window == WINDOW
    names = JobNames.of("pubtest", 1)
    bridge = NatsBridge(private_nats.env["JOBSYS_NATS_URL"])
    try:
        config = StreamConfig(name=names.stream, subjects=[names.subject])
        bridge.run(lambda nc, js: js.add_stream(config))
        tasks = [(n, f'{{"n": {n}}}'.encode()) for n in range(TASKS)]

        # The server stops answering, then dies: the window's publishes went
        # into the old connection and their acks will never come.
        assert private_nats.nats is not None
        private_nats.nats.send_signal(signal.SIGSTOP)
        with pytest.raises(Exception):  # noqa: B017 - lost acks: any error, but not a hang
            bridge.run(lambda nc, js: publish_tasks(nc, names, 1, tasks[:WINDOW * 2]),
                       timeout=6)  # fmt: skip
        private_nats.nats.send_signal(signal.SIGKILL)
        private_nats.nats.wait(10)
        private_nats.start_nats()

        # The connection is back: the next publish must not wait for permits
        # the lost acks hold.
        bridge.run(lambda nc, js: publish_tasks(nc, names, 1, tasks), timeout=20)
        assert _stored(bridge, names) == TASKS
    finally:
        bridge.close()


def _with_stream(names: JobNames, body: Any) -> Any:
    """Run `body(nc, js)` on the shared bridge with a fresh stream for `names`."""
    from jobsys.nats.bridge import bridge

    async def run(nc: Any, js: Any) -> Any:
        await js.add_stream(StreamConfig(name=names.stream, subjects=[names.subject]))
        try:
            return await body(nc, js)
        finally:
            await js.delete_stream(names.stream)

    return bridge().run(run, timeout=60)


def test_each_task_gets_the_place_its_puback_names_and_a_duplicate_the_first_ones() -> None:
    names = JobNames.of(get_settings().namespace, 990_001)
    first = [(n, f'{{"n": {n}}}'.encode()) for n in range(2_500)]
    # Tasks 100..199 again (same Nats-Msg-Id: deduplicated), then new ones.
    again = [*first[100:200], *((n, b'{"n": 0}') for n in range(2_500, 2_600))]

    async def body(nc: Any, js: Any) -> tuple[list[int], list[int], int]:
        seqs = await publish_tasks(nc, names, 7, first, window=64)
        more = await publish_tasks(nc, names, 7, again, window=64)
        return seqs, more, int((await js.stream_info(names.stream)).state.messages)

    seqs, more, stored = _with_stream(names, body)
    assert seqs == list(range(1, 2_501))
    assert more == [*range(101, 201), *range(2_501, 2_601)]
    assert stored == 2_600
    assert _with_stream(names, lambda nc, js: publish_tasks(nc, names, 7, [])) == []


def test_a_publish_to_a_subject_no_stream_listens_on_is_refused_at_once() -> None:
    from jobsys.nats.bridge import bridge

    names = JobNames.of(get_settings().namespace, 990_002)  # no stream made
    tasks = [(n, b"{}") for n in range(3_000)]
    with pytest.raises(publish.PublishRefused, match="no stream"):
        bridge().run(lambda nc, js: publish_tasks(nc, names, 7, tasks, window=50), timeout=20)
