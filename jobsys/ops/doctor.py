"""Health checks behind ``jobsys doctor``: can this machine run jobsys right now?

``check_all`` returns one ``Check`` per concern (Postgres, schema, pooling,
Redis, NATS, the secret, workers and processors running, where the settings
came from). Each message is one line that says what is wrong and how to fix
it, so the CLI only has to print them. Nothing here raises: a failing check is
a result. Probes and the one-line formatting are `jobsys.probes`, shared with
the dev tooling that starts local servers.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass

import httpx
import psycopg
import redis
from nats.errors import NoRespondersError
from nats.js.errors import ServiceUnavailableError

from jobsys.credentials import AccessSettingError, describe_redis, redis_connection_kwargs
from jobsys.display import nats_servers, one_line, redact
from jobsys.dramatiq.signing import SecretMissing, require_secret
from jobsys.nats.access import describe_nats, open_nats
from jobsys.nats.connect import jetstream
from jobsys.nats.presence import Member, now, read_members
from jobsys.ops.probes import PROBE_TIMEOUT_S, nats_cluster_size, probe_nats, probe_redis
from jobsys.pg.migrate import latest_version
from jobsys.settings import PREFIX, Settings, env_file_places, env_files, setting_sources

TIMEOUT_S = PROBE_TIMEOUT_S
# Rounds of the two-client test for a transaction-pooling proxy (see check_pooling).
POOLING_ROUNDS = 3
FIX_SERVICES = "run `make services`"
FIX_MIGRATE = "run `jobsys db migrate`"
FIX_SERVER = "start `jobsys serve` there, or correct JOBSYS_SERVER_URL"
_DB_MISSING = re.compile(r'database ".*" does not exist')
# What jobsys needs of Redis's memory settings, and why (one line).
REDIS_NEEDS = (
    "jobsys needs maxmemory-policy noeviction: an evicting policy deletes queued "
    "Dramatiq messages (result batches, bootstraps, hooks) to make room, losing them "
    "silently; set `CONFIG SET maxmemory-policy noeviction` (and in redis.conf)"
)
# A Redis this full of its maxmemory is reported (at the limit it refuses writes).
REDIS_FULL_SHARE = 0.8


@dataclass(frozen=True)
class Check:
    """The outcome of one check."""

    service: str
    ok: bool
    message: str
    # More lines under the message (which file each setting came from).
    details: tuple[str, ...] = ()


def check_all(settings: Settings) -> list[Check]:
    """Every check, in the order a user should fix them (the HTTP API's only when
    JOBSYS_SERVER_URL says where it is)."""
    postgres = check_postgres(settings.database_url)
    if postgres.ok:
        schema = check_schema(settings.database_url)
        pooling = check_pooling(
            settings.database_url, settings.db_prepared_statements, listen=settings.db_listen
        )
    else:
        schema = Check("schema", False, "not checked: Postgres is not reachable")
        pooling = Check("pooling", False, "not checked: Postgres is not reachable")
    nats = check_nats(settings.nats_url, settings.stream_replicas, settings)
    if nats.ok:
        workers, processors = check_members(settings)
    else:
        workers = Check("workers", False, "not checked: NATS is not reachable")
        processors = Check("processors", False, "not checked: NATS is not reachable")
    return [
        postgres,
        schema,
        pooling,
        check_redis(settings.redis_url, settings),
        check_redis_memory(settings.redis_url, settings),
        check_redis_access(settings),
        nats,
        check_nats_access(settings),
        check_secret(settings),
        workers,
        processors,
        check_settings(),
        *([check_server(settings)] if settings.server_url else []),
    ]


def check_members(settings: Settings) -> tuple[Check, Check]:
    """Are workers and processors running (as they announce: jobsys.nats.presence)?

    No worker fails the check: no job can start or be counted without one.
    No processor is said, not failed: processors may run elsewhere, started
    when there is work.
    """

    async def read() -> list[Member]:
        nc = await open_nats(settings.nats_url, settings, connect_timeout=TIMEOUT_S,
                             allow_reconnect=False, max_reconnect_attempts=1)  # fmt: skip
        try:
            return await read_members(jetstream(nc, settings), settings)
        finally:
            await nc.close()

    try:
        team = asyncio.run(asyncio.wait_for(read(), 3 * TIMEOUT_S))
    except Exception as exc:
        reason = f"cannot read who is running ({one_line(exc) or type(exc).__name__})"
        return Check("workers", False, reason), Check("processors", False, reason)
    at = now()
    checks = []
    for kind, fix in (("worker", "start one: `jobsys worker`"),
                      ("processor", "jobs wait until one starts: `jobsys process`")):  # fmt: skip
        alive = [m for m in team if m.kind == kind and m.alive(at)]
        if alive:
            hosts = ", ".join(sorted({m.host for m in alive}))
            slots = sum(m.slots for m in alive)
            message = f"{len(alive)} {kind}(s) alive ({slots} slots) on {hosts}"
        else:
            message = f"no {kind} is running: {fix}"
        checks.append(Check(f"{kind}s", bool(alive) or kind == "processor", message))
    return checks[0], checks[1]


def check_settings() -> Check:
    """Which env files were read, and where each setting that is not a default came from."""
    read = env_files()
    if read:
        message = "env files read, first wins: " + ", ".join(str(p.absolute()) for p in read)
    else:
        looked = ", ".join(str(p) for p in env_file_places())
        message = f"no env file found (looked at {looked}); only the environment"
    sources = setting_sources()
    details = tuple(
        f"{PREFIX}{field.upper()}: from {source}"
        for field, source in sources.items()
        if source != "default"
    )
    return Check("settings", True, message, details)


def check_server(settings: Settings) -> Check:
    """Does `jobsys serve` answer at JOBSYS_SERVER_URL (its /healthz: it reaches Postgres),
    over TLS checked against JOBSYS_SERVER_TLS_CA (default: the system's CAs)?"""
    url = (settings.server_url or "").rstrip("/")
    try:
        verify = (
            ssl.create_default_context(cafile=str(settings.server_tls_ca))
            if settings.server_tls_ca is not None
            else True
        )
        answer = httpx.get(f"{url}/healthz", timeout=TIMEOUT_S, verify=verify)
    except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
        return Check("server", False, f"no answer at {redact(url)} ({one_line(exc)}): {FIX_SERVER}")
    if answer.status_code != 200:
        try:
            detail = str(answer.json().get("detail") or answer.reason_phrase)
        except ValueError:
            detail = answer.reason_phrase
        return Check(
            "server",
            False,
            f"{redact(url)}/healthz answered {answer.status_code} ({one_line(detail)})",
        )
    tls = "TLS" if url.lower().startswith("https://") else "no TLS: tokens cross in clear text"
    return Check("server", True, f"jobsys serve answers at {redact(url)} ({tls})")


def check_secret(settings: Settings) -> Check:
    """Is the message-signing secret set (and a previous one, during a rotation)?"""
    try:
        require_secret(settings)
    except SecretMissing as exc:
        return Check("secret", False, str(exc))
    rotating = settings.secret_previous is not None
    note = " (JOBSYS_SECRET_PREVIOUS also accepted: a rotation is under way)" if rotating else ""
    return Check("secret", True, f"JOBSYS_SECRET is set; messages are signed{note}")


def check_postgres(url: str) -> Check:
    """Can we log in to the configured database?"""
    try:
        with psycopg.connect(url, connect_timeout=int(TIMEOUT_S)) as conn:
            tls = "TLS" if conn.info.pgconn.ssl_in_use else "no TLS"
    except psycopg.Error as exc:
        reason = one_line(exc)
        # A login error carries no SQLSTATE in psycopg; the server's text is all there is.
        if _DB_MISSING.search(reason):
            return Check(
                "postgres",
                False,
                f"database missing at {redact(url)}: {FIX_SERVICES} (creates it)",
            )
        return Check(
            "postgres", False, f"cannot connect to {redact(url)} ({reason}): {FIX_SERVICES}"
        )
    return Check("postgres", True, f"connected to {redact(url)} ({tls})")


def check_schema(url: str) -> Check:
    """Is the schema migrated up to the newest file shipped with this code?"""
    try:
        latest = latest_migration()
    except OSError as exc:
        return Check("schema", False, f"cannot read the migration files ({one_line(exc)})")
    try:
        with psycopg.connect(url, connect_timeout=int(TIMEOUT_S)) as conn:
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    except psycopg.errors.UndefinedTable:
        return Check("schema", False, f"schema not migrated: {FIX_MIGRATE}")
    except psycopg.Error as exc:
        return Check("schema", False, f"cannot read the schema version ({one_line(exc)})")
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
    return latest_version()


def backends_shared(url: str, rounds: int = POOLING_ROUNDS) -> int | None:
    """A server backend pid that two client connections both ran on, or None.

    Directly, and behind a session-pooling proxy, two open client connections
    never share a server session. Behind a transaction-pooling proxy a
    client's session goes back to the pool after each transaction, and the
    next client gets the most recently used one (PgBouncer's default LIFO),
    so the second client's statement lands on the first one's backend.
    """

    def client() -> psycopg.Connection[tuple[int]]:
        return psycopg.connect(
            url, connect_timeout=int(TIMEOUT_S), autocommit=True, prepare_threshold=None
        )

    with client() as first, client() as second:
        for _ in range(rounds):
            a = first.execute("SELECT pg_backend_pid()").fetchone()
            b = second.execute("SELECT pg_backend_pid()").fetchone()
            if a and b and a[0] == b[0]:
                return int(a[0])
    return None


def check_pooling(url: str, prepared_statements: bool, listen: bool = False) -> Check:
    """Does jobsys work through whatever sits between it and Postgres?

    jobsys's locks hold behind any pooler (jobsys.pg.locks); psycopg's
    automatic prepared statements do not survive transaction pooling, nor
    does a waiter's LISTEN (`listen`: JOBSYS_DB_LISTEN; only a slower wake,
    so it is advice, not a failure).
    """
    try:
        shared = backends_shared(url)
    except psycopg.Error as exc:
        return Check("pooling", False, f"cannot test for a pooler ({one_line(exc)})")
    if shared is None:
        return Check("pooling", True, "no transaction pooling between jobsys and Postgres")
    if prepared_statements:
        return Check(
            "pooling",
            False,
            f"a transaction-pooling proxy (PgBouncer?) serves {redact(url)} (two clients "
            f"shared backend {shared}) and prepared statements do not survive it: "
            "set JOBSYS_DB_PREPARED_STATEMENTS=false",
        )
    advice = (
        "; set JOBSYS_DB_LISTEN=false (a waiter's LISTEN does not survive it: waiters poll)"
        if listen
        else ""
    )
    return Check(
        "pooling",
        True,
        "transaction pooling detected; prepared statements off, locks are transaction-level"
        + advice,
    )


def check_redis(url: str, settings: Settings | None = None) -> Check:
    """Does Redis (Dramatiq's broker) answer a ping (with the TLS files of `settings`)?"""
    try:
        error = probe_redis(url, **(redis_connection_kwargs(settings) if settings else {}))
    except AccessSettingError as exc:
        return Check("redis", False, str(exc))
    if error is not None:
        return Check("redis", False, f"no answer at {redact(url)} ({error}): {FIX_SERVICES}")
    return Check("redis", True, f"ping ok at {redact(url)}")


def check_redis_memory(url: str, settings: Settings | None = None) -> Check:
    """Is Redis set to refuse writes when full (`noeviction`) rather than evict, and
    how full is it? (INFO memory; a user without INFO is told what to check.)"""
    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=TIMEOUT_S,
            socket_connect_timeout=TIMEOUT_S,
            **(redis_connection_kwargs(settings) if settings else {}),
        )
        try:
            info = client.info("memory")
        finally:
            client.close()
    except AccessSettingError as exc:
        return Check("redis memory", False, str(exc))
    except redis.exceptions.NoPermissionError:
        return Check("redis memory", True, f"not checked (this user may not run INFO): "
                     f"{REDIS_NEEDS}")  # fmt: skip
    except Exception as exc:
        return Check("redis memory", False, f"cannot read INFO memory ({one_line(exc)})")
    policy = str(info.get("maxmemory_policy", "?"))
    limit, used = int(info.get("maxmemory", 0)), int(info.get("used_memory", 0))
    if policy != "noeviction":
        return Check("redis memory", False, f"maxmemory-policy is {policy}: {REDIS_NEEDS}")
    if not limit:
        return Check("redis memory", True, "maxmemory-policy noeviction, no maxmemory")
    share = used / limit
    if share >= REDIS_FULL_SHARE:
        return Check(
            "redis memory",
            False,
            f"Redis holds {share:.0%} of its maxmemory ({used >> 20} of {limit >> 20} MiB): "
            "at the limit it refuses writes and recording waits until it takes them again; "
            "raise maxmemory",
        )
    return Check(
        "redis memory",
        True,
        f"maxmemory-policy noeviction, {share:.0%} of maxmemory ({limit >> 20} MiB) used",
    )


def check_redis_access(settings: Settings) -> Check:
    """Do Redis connections use TLS, and which credentials? (One redacted line.)"""
    ok, message = describe_redis(settings)
    return Check("redis access", ok, message)


def check_nats_access(settings: Settings) -> Check:
    """Do NATS connections use TLS, and which credentials? (One redacted line.)"""
    ok, message = describe_nats(settings)
    return Check("nats access", ok, message)


def check_nats(url: str, replicas: int = 1, settings: Settings | None = None) -> Check:
    """Does NATS answer, with JetStream enabled for our account, and enough
    servers for JOBSYS_STREAM_REPLICAS? Connects with the credentials and TLS
    of `settings` (none without)."""
    try:
        check = asyncio.run(
            asyncio.wait_for(_check_nats(url, settings or Settings.model_construct(nats_url=url)),
                             timeout=3 * TIMEOUT_S)
        )  # fmt: skip
    except TimeoutError:
        return Check("nats", False, f"no answer at {redact(url)} (timed out): {FIX_SERVICES}")
    if check.ok and replicas > 1:
        size = nats_cluster_size(url)
        if size is not None and size < replicas:
            return Check(
                "nats",
                False,
                f"JOBSYS_STREAM_REPLICAS={replicas} but NATS at {redact(url)} has {size} "
                f"server(s): no job stream can be created; set JOBSYS_STREAM_REPLICAS={size}",
            )
        check = Check("nats", True, f"{check.message}; {size or '?'} servers, R{replicas} streams")
    return check


async def _check_nats(url: str, settings: Settings) -> Check:
    # Each server must answer with JetStream on (a cluster's too: a node
    # without JetStream cannot hold replicas).
    down = probe_nats(url)
    if down is not None and "JetStream is not enabled" in down:
        where = f"at {redact(url)}" if len(nats_servers(url)) == 1 else f"on a server ({down})"
        return Check(
            "nats",
            False,
            f"JetStream is not enabled {where}: restart nats-server with -js (or {FIX_SERVICES})",
        )
    errors: list[Exception] = []

    async def remember(exc: Exception) -> None:
        # nats-py reports connection errors here, and only NoServersError is raised.
        errors.append(exc)

    try:
        nc = await open_nats(
            url,
            settings,
            connect_timeout=TIMEOUT_S,
            allow_reconnect=False,
            # One retry, then NoServersError (0 would retry forever).
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            error_cb=remember,
        )
    except Exception as exc:  # nats-py raises several unrelated types here
        reason = one_line(errors[-1] if errors else exc)
        return Check("nats", False, f"no answer at {redact(url)} ({reason}): {FIX_SERVICES}")
    try:
        info = await nc.jetstream(timeout=TIMEOUT_S).account_info()
    except (NoRespondersError, ServiceUnavailableError):
        return Check(
            "nats",
            False,
            f"JetStream is not enabled at {redact(url)}: restart nats-server with -js "
            f"(or {FIX_SERVICES})",
        )
    except Exception as exc:
        return Check("nats", False, f"JetStream account info failed ({one_line(exc)})")
    finally:
        await nc.close()
    return Check("nats", True, f"JetStream ok at {redact(url)} ({info.streams} streams)")
