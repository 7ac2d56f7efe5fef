"""Job streams in memory (JOBSYS_STREAM_STORAGE=memory): a NATS restart loses
them, and the worker's reconcile pass after NATS comes back publishes their
pending tasks again from Postgres; nothing is lost or counted twice."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StorageType
from nats.js.errors import APIError

import jobsys
from jobsys.api.read import get_job, wait_until_final
from jobsys.nats import admin
from jobsys.nats.admin import ensure_job_stream
from jobsys.nats.bridge import NatsBridge, bridge
from jobsys.nats.subjects import JobNames
from jobsys.ops.runner import LocalSystem
from jobsys.settings import get_settings, reset_settings
from tests.chaos import PrivateServers
from tests.helpers import assert_counters_match_ledger, configured_nats

TASKS = 40
SLEEP_MS = 100
SLOTS = 2


@pytest.fixture
def private_nats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateServers]:
    servers = PrivateServers(tmp_path / "servers")
    servers.start_nats()
    monkeypatch.setenv("JOBSYS_NATS_URL", servers.env["JOBSYS_NATS_URL"])
    monkeypatch.setenv("JOBSYS_STREAM_STORAGE", "memory")
    reset_settings()
    yield servers
    servers.stop_all()
    monkeypatch.undo()
    reset_settings()


def _storage(nats: NatsBridge, job_id: int) -> StorageType | None:
    names = JobNames.of(get_settings().namespace, job_id)

    async def info(nc: Any, js: Any) -> StorageType | None:
        return (await js.stream_info(names.stream)).config.storage

    return nats.run(info, timeout=10)


def test_memory_streams_lost_in_a_nats_restart_are_filled_again(
    private_nats: PrivateServers, tmp_path: Path
) -> None:
    # No scheduler: only the worker's pass after NATS comes back can repair.
    env = {"JOBSYS_RECONCILE_EVERY_S": "3600"}
    with LocalSystem(workers=1, processors=1, concurrency=SLOTS, log_dir=tmp_path, env=env):
        items = (json.dumps({"n": i, "sleep_ms": SLEEP_MS}) for i in range(TASKS))
        job_id = jobsys.submit("echo", items, name="in-memory").id
        deadline = time.monotonic() + 60
        while get_job(job_id).done < 4:
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.05)
        nats = NatsBridge(private_nats.env["JOBSYS_NATS_URL"])
        try:
            assert _storage(nats, job_id) == StorageType.MEMORY
            private_nats.restart_nats()  # the stream and its messages are gone
            view = wait_until_final(job_id, timeout=90)
            assert view.status == "success"
            assert (view.done, view.failed, view.lost) == (TASKS, 0, 0)
        finally:
            nats.close()
    assert_counters_match_ledger(job_id)


def test_a_stream_made_in_another_storage_keeps_it() -> None:
    # NATS cannot change a stream's storage: a stream made under "file" is
    # updated (here: its priority) with its own storage, not refused for ever.
    names = JobNames.of(get_settings().namespace, 999_001)
    job = {"pipeline": "echo", "max_deliver": 5}
    as_file = get_settings().model_copy(update={"stream_storage": "file"})
    as_memory = get_settings().model_copy(update={"stream_storage": "memory"})

    async def both(nc: Any, js: Any) -> tuple[Any, Any]:
        first = await ensure_job_stream(nc, js, names, job, as_file)
        again = await ensure_job_stream(nc, js, names, {**job, "priority": 2}, as_memory)
        await js.delete_stream(names.stream)
        return first, again

    first, again = bridge().run(both)
    assert first.config.storage == again.config.storage == StorageType.FILE
    assert json.loads(again.config.description)["priority"] == 2


def test_by_default_a_small_job_streams_in_memory_and_a_large_one_on_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What most of a small job's NATS cost is (its stream's files made and
    # removed) is worth a republish of a few tasks after a restart; a large
    # job's is not, nor is one whose size is not known.
    monkeypatch.delenv("JOBSYS_STREAM_STORAGE", raising=False)
    monkeypatch.delenv("JOBSYS_MEMORY_STREAM_MAX_TASKS", raising=False)
    reset_settings()
    settings = get_settings()
    limit = settings.memory_stream_max_tasks
    assert settings.stream_storage == "auto" and limit > 0
    sizes = {999_002: 1, 999_003: limit, 999_004: limit + 1, 999_005: None}
    job = {"pipeline": "echo", "max_deliver": 3}

    async def make_all(nc: Any, js: Any) -> dict[int, Any]:
        made = {}
        for job_id, total in sizes.items():
            names = JobNames.of(settings.namespace, job_id)
            row = {**job, "total_count": total} if total is not None else job
            made[job_id] = (await ensure_job_stream(nc, js, names, row, settings)).config.storage
            await js.delete_stream(names.stream)
        return made

    made = bridge().run(make_all)
    assert made == {
        999_002: StorageType.MEMORY,
        999_003: StorageType.MEMORY,
        999_004: StorageType.FILE,
        999_005: StorageType.FILE,
    }


def test_a_server_without_jetstream_memory_gets_file_streams_under_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A nats-server (or an account) that allows JetStream no memory refuses
    # every memory stream (err 10028): under "auto" a small job must still
    # start, on file; asked for "memory" outright, the refusal is raised.
    # This process's memory of the refusal is put back as it was after.
    monkeypatch.setattr(admin._MemoryRefused, "at", None)
    names = JobNames.of(get_settings().namespace, 999_006)
    small = {"pipeline": "echo", "max_deliver": 3, "total_count": 5}
    auto = get_settings().model_copy(update={"stream_storage": "auto"})
    memory = get_settings().model_copy(update={"stream_storage": "memory"})

    async def make(nc: Any, js: Any) -> tuple[Any, Any]:
        made = await ensure_job_stream(nc, js, names, small, auto)
        again = await ensure_job_stream(nc, js, names, small, auto)
        await js.delete_stream(names.stream)
        return made.config.storage, again.config.storage

    async def make_in_memory(nc: Any, js: Any) -> None:
        await ensure_job_stream(nc, js, names, small, memory)

    with configured_nats(tmp_path, jetstream="max_memory_store: 0") as url:
        nats = NatsBridge(url)
        try:
            assert nats.run(make, timeout=10) == (StorageType.FILE, StorageType.FILE)
            with pytest.raises(APIError, match="insufficient memory"):
                nats.run(make_in_memory, timeout=10)
        finally:
            nats.close()
