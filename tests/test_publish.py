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
        tasks = [(n, f'{{"n": {n}}}') for n in range(TASKS)]

        # The server stops answering, then dies: the window's publishes went
        # into the old connection and their acks will never come.
        assert private_nats.nats is not None
        private_nats.nats.send_signal(signal.SIGSTOP)
        with pytest.raises(Exception):  # noqa: B017 - lost acks: any error, but not a hang
            bridge.run(lambda nc, js: publish_tasks(js, names, 1, tasks[:WINDOW * 2]),
                       timeout=6)  # fmt: skip
        private_nats.nats.send_signal(signal.SIGKILL)
        private_nats.nats.wait(10)
        private_nats.start_nats()

        # The connection is back: the next publish must not wait for permits
        # the lost acks hold.
        bridge.run(lambda nc, js: publish_tasks(js, names, 1, tasks), timeout=20)
        assert _stored(bridge, names) == TASKS
    finally:
        bridge.close()
