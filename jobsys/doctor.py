"""Health checks behind ``jobsys doctor``: can this machine run jobsys right now?

``check_all`` returns one ``Check`` per concern (Postgres, schema, Redis, NATS).
Each message is one line that says what is wrong and how to fix it, so the CLI
only has to print them. Nothing here raises: a failing check is a result.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from jobsys.settings import Settings

TIMEOUT_S = 2.0
FIX_SERVICES = "run `make services`"
FIX_MIGRATE = "run `jobsys db migrate`"
_MIGRATION_FILE = re.compile(r"^(\d{3})_[\w-]+\.sql$")
_DB_MISSING = re.compile(r'database ".*" does not exist')


@dataclass(frozen=True)
class Check:
    """The outcome of one check."""

    service: str
    ok: bool
    message: str


def check_all(settings: Settings) -> list[Check]:
    """Every check, in the order a user should fix them."""
    postgres = check_postgres(settings.database_url)
    if postgres.ok:
        schema = check_schema(settings.database_url)
    else:
        schema = Check("schema", False, "not checked: Postgres is not reachable")
    return [postgres, schema, check_redis(settings.redis_url), check_nats(settings.nats_url)]


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def _redact(url: str) -> str:
    # Messages end up in terminals and CI logs: never show a password.
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def check_postgres(url: str) -> Check:
    """Can we log in to the configured database?"""
    try:
        with psycopg.connect(url, connect_timeout=int(TIMEOUT_S)):
            pass
    except psycopg.Error as exc:
        reason = _first_line(exc)
        # A login error carries no SQLSTATE in psycopg; the server's text is all there is.
        if _DB_MISSING.search(reason):
            return Check(
                "postgres",
                False,
                f"database missing at {_redact(url)}: {FIX_SERVICES} (creates it)",
            )
        return Check(
            "postgres", False, f"cannot connect to {_redact(url)} ({reason}): {FIX_SERVICES}"
        )
    return Check("postgres", True, f"connected to {_redact(url)}")


def check_schema(url: str) -> Check:
    """Is the schema migrated up to the newest file shipped with this code?"""
    try:
        latest = latest_migration()
    except OSError as exc:
        return Check("schema", False, f"cannot read the migration files ({_first_line(exc)})")
    try:
        with psycopg.connect(url, connect_timeout=int(TIMEOUT_S)) as conn:
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    except psycopg.errors.UndefinedTable:
        return Check("schema", False, f"schema not migrated: {FIX_MIGRATE}")
    except psycopg.Error as exc:
        return Check("schema", False, f"cannot read the schema version ({_first_line(exc)})")
    current = row[0] if row else None
    if current is None:
        return Check("schema", False, f"schema not migrated: {FIX_MIGRATE}")
    if current < latest:
        return Check(
            "schema", False, f"schema at version {current}, code needs {latest}: {FIX_MIGRATE}"
        )
    if current > latest:
        return Check(
            "schema",
            False,
            f"schema at version {current} is newer than this code ({latest}): upgrade jobsys",
        )
    return Check("schema", True, f"schema at version {current} (latest)")


def latest_migration() -> int:
    """The highest ``NNN`` of ``sql/NNN_*.sql`` shipped with this code."""
    try:
        from jobsys.migrate import latest_version
    except ImportError:
        # The migrate module may be absent or broken; the files are the truth anyway.
        sql_dir = Path(__file__).resolve().parent.parent / "sql"
        found = (_MIGRATION_FILE.match(p.name) for p in sql_dir.glob("[0-9][0-9][0-9]_*.sql"))
        return max((int(m.group(1)) for m in found if m), default=0)
    return latest_version()


def check_redis(url: str) -> Check:
    """Does Redis (Dramatiq's broker) answer a ping?"""
    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    try:
        client.ping()
    except redis.RedisError as exc:
        return Check(
            "redis", False, f"no answer at {_redact(url)} ({_first_line(exc)}): {FIX_SERVICES}"
        )
    finally:
        client.close()
    return Check("redis", True, f"ping ok at {_redact(url)}")


def check_nats(url: str) -> Check:
    """Does NATS answer, with JetStream enabled for our account?"""
    try:
        return asyncio.run(asyncio.wait_for(_check_nats(url), timeout=3 * TIMEOUT_S))
    except TimeoutError:
        return Check("nats", False, f"no answer at {_redact(url)} (timed out): {FIX_SERVICES}")


async def _check_nats(url: str) -> Check:
    import nats
    from nats.errors import NoRespondersError
    from nats.js.errors import ServiceUnavailableError

    errors: list[Exception] = []

    async def remember(exc: Exception) -> None:
        # nats-py reports connection errors here, and only NoServersError is raised.
        errors.append(exc)

    try:
        nc = await nats.connect(
            url,
            connect_timeout=TIMEOUT_S,
            allow_reconnect=False,
            # One retry, then NoServersError (0 would retry forever).
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            error_cb=remember,
        )
    except Exception as exc:  # nats-py raises several unrelated types here
        reason = _first_line(errors[-1] if errors else exc)
        return Check("nats", False, f"no answer at {_redact(url)} ({reason}): {FIX_SERVICES}")
    try:
        info = await nc.jetstream(timeout=TIMEOUT_S).account_info()
    except (NoRespondersError, ServiceUnavailableError):
        return Check(
            "nats",
            False,
            f"JetStream is not enabled at {_redact(url)}: restart nats-server with -js "
            f"(or {FIX_SERVICES})",
        )
    except Exception as exc:
        return Check("nats", False, f"JetStream account info failed ({_first_line(exc)})")
    finally:
        await nc.close()
    return Check("nats", True, f"JetStream ok at {_redact(url)} ({info.streams} streams)")
