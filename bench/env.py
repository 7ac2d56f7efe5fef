"""Bench isolation: its own database, NATS namespace and Dramatiq Redis namespace.

Import this module before anything from jobsys: it sets ``JOBSYS_*`` in the
environment (child processes - the workers and processors a bench starts -
inherit it) and resets jobsys's cached settings. `setup()` creates and
migrates the database; `teardown()` deletes every stream and Redis key of the
namespace and drops the database. The user's own database is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
from psycopg.conninfo import make_conninfo

from jobsys.settings import Settings, reset_settings

RUN_ID = uuid.uuid4().hex[:8]
NAMESPACE = f"b{RUN_ID}"
_base = Settings()
BENCH_DB = f"jobsys_bench_{RUN_ID}"
ADMIN_URL = make_conninfo(_base.database_url, dbname="postgres")
BENCH_URL = make_conninfo(_base.database_url, dbname=BENCH_DB)

os.environ.update(
    {
        "JOBSYS_NAMESPACE": NAMESPACE,
        "JOBSYS_SECRET": os.environ.get("JOBSYS_SECRET") or uuid.uuid4().hex,
        "JOBSYS_DATABASE_URL": BENCH_URL,
        "JOBSYS_REDIS_URL": _base.redis_url,
        "JOBSYS_NATS_URL": _base.nats_url,
        # The benches' own pipelines (bench.cancel_latency) and the test
        # suite's may run (jobsys.pipelines.allow).
        "JOBSYS_PIPELINE_MODULES": "bench,tests",
        "JOBSYS_LOG_LEVEL": os.environ.get("JOBSYS_LOG_LEVEL", "WARNING"),
    }
)
reset_settings()


def admin() -> psycopg.Connection:
    """An autocommit connection to the server's `postgres` database (CREATE/DROP)."""
    return psycopg.connect(ADMIN_URL, autocommit=True)


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A temporary empty database (its URL), dropped on exit."""
    name = f"{prefix}_{RUN_ID}_{uuid.uuid4().hex[:4]}"
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(_base.database_url, dbname=name)
    finally:
        with admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup() -> None:
    """Create and migrate the bench database."""
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    from jobsys.pg.migrate import migrate

    migrate()


def wipe_streams() -> int:
    """Delete every NATS stream of the bench namespace (its job streams and its
    presence bucket's); returns how many."""
    from jobsys.nats.admin import delete_streams, namespace_stream
    from jobsys.nats.connect import connect, jetstream

    async def wipe() -> int:
        nc = await connect()
        # Every page of the listing: 10,000 streams are 40 pages.
        n = await delete_streams(jetstream(nc), namespace_stream(NAMESPACE))
        await nc.close()
        return n

    return asyncio.run(wipe())


def wipe_redis() -> None:
    """Delete the bench namespace's Dramatiq keys."""
    import redis

    from jobsys.settings import get_settings

    client = redis.Redis.from_url(get_settings().redis_url)
    keys = list(client.scan_iter(f"{get_settings().dramatiq_namespace}*"))
    if keys:
        client.delete(*keys)
    client.close()


def teardown() -> None:
    """Remove everything the bench created (streams, Redis keys, its database)."""
    from jobsys.nats.bridge import close_bridge
    from jobsys.pg.db import close_pool

    with contextlib.suppress(Exception):
        wipe_streams()
    with contextlib.suppress(Exception):
        wipe_redis()
    close_bridge()
    close_pool()
    with admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
