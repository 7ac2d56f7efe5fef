"""Two tiers. Tests in tests/fast/ need no server (`make test-fast`). Every other test
needs Postgres, NATS and Redis: it is marked `services` by its folder, and only then
does the run make its own database, NATS namespace and Redis namespace (removed at
the end of the session).

The environment is set before jobsys is imported, and child processes (the
workers and processors tests start) inherit it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from psycopg.conninfo import make_conninfo

from jobsys.settings import Settings, reset_settings

RUN_ID = uuid.uuid4().hex[:8]
NAMESPACE = f"t{RUN_ID}"
_base = Settings()
TEST_DB = f"jobsys_test_{RUN_ID}"
ADMIN_URL = make_conninfo(_base.database_url, dbname="postgres")
os.environ.update(
    {
        "JOBSYS_NAMESPACE": NAMESPACE,
        "JOBSYS_DATABASE_URL": make_conninfo(_base.database_url, dbname=TEST_DB),
        "JOBSYS_REDIS_URL": _base.redis_url,
        "JOBSYS_NATS_URL": _base.nats_url,
        # Short timings so redelivery and recovery happen within a test.
        "JOBSYS_ACK_WAIT_S": os.environ.get("JOBSYS_ACK_WAIT_S", "3"),
        "JOBSYS_RETRY_DELAY_S": "0.2",
        "JOBSYS_RESULT_FLUSH_MS": "50",
        "JOBSYS_HEARTBEAT_TIMEOUT_MS": "5000",
        # The suite's own pipelines and hook targets (tests.pipelines,
        # tests.hook_targets) are allowed to run (jobsys.pipelines.allow).
        "JOBSYS_PIPELINE_MODULES": "tests",
        # The crash, hang and odd-value tests run `fault-echo` (jobsys.testing.faults).
        "JOBSYS_FAULT_PIPELINES": "true",
        # Every message is signed (jobsys.dramatiq.signing); one secret for the run.
        "JOBSYS_SECRET": os.environ.get("JOBSYS_SECRET") or uuid.uuid4().hex,
    }
)
reset_settings()


def _admin() -> psycopg.Connection:
    return psycopg.connect(ADMIN_URL, autocommit=True)


FAST = Path(__file__).parent / "fast"

# Generated-input tests judge outcomes, never speed: a loaded machine must not
# fail them for being slow (no deadline, no too-slow health check).
settings.register_profile("jobsys", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("jobsys")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "services: needs Postgres, NATS and Redis (every test outside tests/fast/)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if FAST not in item.path.parents:
            item.add_marker(pytest.mark.services)


@pytest.fixture(autouse=True)
def _servers_for_services_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked `services` gets this run's database, namespace and cleanup.

    The database is the whole run's: a completion hook a test left undelivered
    (its receiver gone) would be due again in a later test, sent by that test's
    worker (stopping at its pause point) and listed by its resend pass. So the
    hooks of the jobs a test made end `failed` with it.
    """
    if request.node.get_closest_marker("services") is None:
        yield
        return
    request.getfixturevalue("services")
    url = os.environ["JOBSYS_DATABASE_URL"]
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()
    first_after = row[0] if row else 0
    yield
    with contextlib.suppress(psycopg.Error), psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE job_hooks SET state = 'failed' WHERE job_id > %s"
            " AND state IN ('pending', 'sending')",
            (first_after,),
        )


@pytest.fixture(scope="session")
def services(database: str, nats_cleanup: None, redis_cleanup: None) -> str:
    """This run's servers: its database (migrated), NATS and Redis namespaces."""
    return database


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    """A fresh database with the schema applied, dropped after the run."""
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{TEST_DB}"')
    from jobsys.pg.migrate import migrate

    migrate()
    yield TEST_DB
    from jobsys.nats.bridge import close_bridge
    from jobsys.pg.db import close_pool

    close_bridge()
    close_pool()
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')


@pytest.fixture(scope="session")
def nats_cleanup() -> Iterator[None]:
    """Delete every stream of this run's namespace at the end."""
    yield
    from jobsys.nats.admin import delete_streams, namespace_stream
    from jobsys.nats.connect import connect, jetstream

    async def wipe() -> None:
        nc = await connect()
        # Every page: one page (nats-py's streams_info) left streams behind
        # whenever the shared server held more than 256.
        await delete_streams(jetstream(nc), namespace_stream(NAMESPACE))
        await nc.close()

    asyncio.run(wipe())


@pytest.fixture(scope="session")
def redis_cleanup() -> Iterator[None]:
    """Delete this run's Redis keys at the end: its Dramatiq namespace's and those of
    the namespaces its tests make from it (``<namespace><suffix>``, each run's own)."""
    yield
    import redis

    from jobsys.settings import get_settings

    client = redis.Redis.from_url(get_settings().redis_url)
    keys = list(client.scan_iter(f"{NAMESPACE}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One real worker process and one real processor, stopped after the test."""
    from jobsys.ops.runner import LocalSystem

    log_dir = tmp_path_factory.mktemp("logs")
    sys_ = LocalSystem(workers=1, processors=1, concurrency=8, log_dir=log_dir)
    with sys_:
        yield sys_
