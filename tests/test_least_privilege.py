"""Least privilege, shown with real servers: the `deploy/` configurations at work.

A private nats-server runs `deploy/nats/jobsys.conf` and a private
redis-server `deploy/redis/jobsys-acl.conf`, both rendered for this run's
namespace with random passwords (devtools.secure). A real worker runs with
the worker users, a real processor with the processor users, and a job ends
`success` with counters equal to the ledger. The processor's NATS user is
then shown unable to publish into the job's task subject, to create a job
stream (the issue's attack: a rogue stream naming `subprocess:run`) or to
delete one; its Redis user can enqueue results and nothing else. A TLS
server (throwaway CA, client certificates) and an nkey login are connected
to as well, and a tls:// URL never talks plaintext to a server that does
not offer TLS.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import nats
import nkeys
import pytest
import redis
from nats.js.api import StreamConfig
from psycopg.conninfo import make_conninfo

import jobsys
from devtools.certs import have_openssl, make_pki
from devtools.secure import PROCESSOR, WORKER, SecureNats, SecureRedis
from jobsys.api.items import counted_items
from jobsys.api.read import wait_until_final
from jobsys.credentials import AccessSettingError
from jobsys.dramatiq.broker import CONTROL_QUEUE, RESULTS_QUEUE, make_broker, reset_broker
from jobsys.errors import ServiceUnavailable
from jobsys.nats.access import _transport_is_tls, nats_connect_options
from jobsys.nats.admin import all_streams_info, describe_stream
from jobsys.nats.bridge import bridge, close_bridge
from jobsys.nats.connect import connect
from jobsys.nats.subjects import JobNames
from jobsys.ops import doctor
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connect_direct
from jobsys.reconciler.observe import look_at_job
from jobsys.settings import Settings, get_settings, reset_settings
from tests.helpers import assert_counters_match_ledger, ledger

TASKS = 300
# A first connection that the server refuses must fail long before this.
REFUSED_WITHIN_S = 30.0
# How long the denied operations wait for an answer that never comes.
DENIED_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecureNats, SecureRedis]]:
    """A nats-server and a redis-server configured from deploy/ for this run's namespace."""
    root = tmp_path_factory.mktemp("secure")
    namespace = get_settings().namespace
    with (
        SecureNats(root / "nats", namespace) as nats_server,
        SecureRedis(root / "redis", namespace) as redis_server,
    ):
        yield nats_server, redis_server


@pytest.fixture
def as_worker(
    servers: tuple[SecureNats, SecureRedis], monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """This process (submit, checks) talks to the private servers as the worker users."""
    nats_server, redis_server = servers
    monkeypatch.setenv("JOBSYS_NATS_URL", nats_server.url(WORKER))
    monkeypatch.setenv("JOBSYS_REDIS_URL", redis_server.url(WORKER))
    reset_settings()
    close_bridge()
    reset_broker()
    try:
        yield
    finally:
        close_bridge()
        reset_broker()
        monkeypatch.undo()
        reset_settings()


def stream_messages(stream: str) -> int:
    """How many messages the stream holds (asked as this process's user)."""

    async def ask(nc: Any, js: Any) -> int:
        return int((await js.stream_info(stream)).state.messages)

    return bridge().run(ask)


def stream_exists(stream: str) -> bool:
    async def ask(nc: Any, js: Any) -> bool:
        return stream in {i.config.name for i in await all_streams_info(js)}

    return bridge().run(ask)


async def try_as_processor(url: str, names: JobNames, rogue: str) -> tuple[dict[str, str], str]:
    """What the processor's NATS user gets when it tries what it must not (with a plain
    nats-py client, as an attacker holding its password would): each outcome, and
    the server's permission errors."""
    errors: list[str] = []

    async def remember(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(url, error_cb=remember, allow_reconnect=False)
    js = nc.jetstream(timeout=DENIED_TIMEOUT_S)
    outcomes: dict[str, str] = {}
    # What it may do: read the consumer (a processor needs this).
    info = await js.consumer_info(names.stream, names.consumer)
    outcomes["consumer_info"] = f"ok, {info.num_pending} pending"
    attempts = {
        "publish_task": js.publish(
            names.subject, b'{"forged": true}', headers={"Nats-Msg-Id": "forged:1"}
        ),
        "create_stream": js.add_stream(
            StreamConfig(
                name=rogue,
                subjects=[f"{rogue}.tasks"],
                description=describe_stream("subprocess:run"),
            )
        ),
        "delete_stream": js.delete_stream(names.stream),
    }
    for what, call in attempts.items():
        try:
            await call
            outcomes[what] = "done"
        except Exception as exc:
            outcomes[what] = f"failed: {type(exc).__name__}"
    # A core publish (no ack asked) into the task subject.
    await nc.publish(names.subject, b'{"forged": true}')
    await nc.flush(timeout=5)
    await asyncio.sleep(0.2)  # the server's -ERR for the last publish
    await nc.close()
    return outcomes, "\n".join(errors).lower()


def cmdline(pid: int) -> str:
    """What `ps` shows for a process."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_restricted_users_run_a_job_and_the_processor_cannot_publish_tasks_or_make_streams(
    servers: tuple[SecureNats, SecureRedis], as_worker: None, tmp_path: Path
) -> None:
    nats_server, redis_server = servers
    worker_env = {
        "JOBSYS_NATS_URL": nats_server.url(WORKER),
        "JOBSYS_REDIS_URL": redis_server.url(WORKER),
    }
    processor_env = {
        "JOBSYS_NATS_URL": nats_server.url(PROCESSOR),
        "JOBSYS_REDIS_URL": redis_server.url(PROCESSOR),
    }
    logs = tmp_path / "logs"
    namespace = get_settings().namespace
    with LocalSystem(workers=1, processors=0, log_dir=logs, env=worker_env) as workers:
        job = jobsys.submit("echo", counted_items(TASKS), name="least privilege")
        names = JobNames.of(namespace, job.id)
        deadline = time.monotonic() + 60
        while jobsys.get_job(job.id).published < TASKS and time.monotonic() < deadline:
            workers.check_alive()
            time.sleep(0.1)
        assert stream_messages(names.stream) == TASKS, "bootstrap published as the worker"

        rogue = f"{namespace}_job_{job.id + 1_000_000}"
        outcomes, errors = asyncio.run(try_as_processor(nats_server.url(PROCESSOR), names, rogue))
        assert outcomes["consumer_info"] == f"ok, {TASKS} pending"
        assert outcomes["publish_task"].startswith("failed"), outcomes
        assert outcomes["create_stream"].startswith("failed"), outcomes
        assert outcomes["delete_stream"].startswith("failed"), outcomes
        assert f'permissions violation for publish to "{names.subject}"' in errors
        assert f'permissions violation for publish to "$js.api.stream.create.{rogue}"' in errors
        assert 'permissions violation for publish to "$js.api.stream.delete.' in errors
        # Nothing got in, nothing was made or removed.
        assert stream_messages(names.stream) == TASKS
        assert not stream_exists(rogue)
        # The reconciler's look and its message reads work as the worker user.
        seen = look_at_job(namespace, job.id)
        assert (seen.stream, seen.consumer, seen.messages, seen.advisories) == (
            True,
            True,
            TASKS,
            0,
        )
        first = bridge().run(lambda nc, js: js.get_msg(names.stream, 1))
        assert first.headers is not None and first.headers["Nats-Msg-Id"].startswith(f"{job.id}:")

        with LocalSystem(workers=0, processors=1, log_dir=logs, env=processor_env) as procs:
            final = wait_until_final(job.id, timeout=120)
            shown = [cmdline(p.pid) for group in (workers, procs) for _, ps, _ in group.groups()
                     for p in ps]  # fmt: skip
        assert nats_server.proc is not None and redis_server.proc is not None
        shown += [cmdline(nats_server.proc.pid), cmdline(redis_server.proc.pid)]

    assert final.status == "success"
    assert (final.done, final.failed, final.lost) == (TASKS, 0, 0)
    assert ledger(job.id)["done"] == TASKS
    assert_counters_match_ledger(job.id)

    # No secret on a command line (ps) or in a log of the processes that ran.
    secret = get_settings().secret
    assert secret is not None
    secrets = [*nats_server.passwords.values(), *redis_server.passwords.values()]
    secrets.append(secret.get_secret_value())
    text = "\n".join(shown) + "".join(p.read_text(errors="replace") for p in logs.iterdir())
    assert "processor started" in text and "worker" in text
    leaked = [s for s in secrets if s in text]
    assert not leaked, "a password or JOBSYS_SECRET is on a command line or in a log"


def test_the_processor_redis_user_can_send_results_and_nothing_else(
    servers: tuple[SecureNats, SecureRedis],
) -> None:
    _, redis_server = servers
    namespace = get_settings().namespace
    settings = Settings(redis_url=redis_server.url(PROCESSOR), namespace=namespace)

    def message(queue: str) -> dramatiq.Message[Any]:
        return dramatiq.Message(queue_name=queue, actor_name="x", args=(1,), kwargs={}, options={})

    # As `jobsys process` runs its broker: enqueueing results works.
    sender = make_broker(settings, maintenance=False)
    sender.enqueue(message(RESULTS_QUEUE))
    with pytest.raises(redis.exceptions.ResponseError):
        sender.enqueue(message(CONTROL_QUEUE))  # bootstrap/teardown are not its to send
    # With broker maintenance (it reads the heartbeat set, lists keys, moves
    # others' messages) a share of sends would fail: `jobsys process` turns it off.
    with pytest.raises(redis.exceptions.ResponseError):
        make_broker(settings.model_copy(update={"maintenance_chance": 1_000_000})).enqueue(
            message(RESULTS_QUEUE)
        )
    sender.client.close()

    results = f"{namespace}-dramatiq:{RESULTS_QUEUE}"
    processor = redis.Redis.from_url(redis_server.url(PROCESSOR))
    for command in (
        ("FLUSHDB",), ("FLUSHALL",), ("KEYS", "*"), ("SCAN", "0"), ("CONFIG", "GET", "*"),
        ("HGETALL", f"{results}.msgs"),  # read other processors' results
        ("LPOP", results),  # take a result batch off the queue
        ("SET", "elsewhere", "x"),
    ):  # fmt: skip
        with pytest.raises(redis.exceptions.NoPermissionError):
            processor.execute_command(*command)
    worker = redis.Redis.from_url(redis_server.url(WORKER))
    for command in (("FLUSHDB",), ("CONFIG", "SET", "appendonly", "yes"), ("GET", "elsewhere")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.execute_command(*command)
    anonymous = redis.Redis(host="127.0.0.1", port=redis_server.port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    for client in (processor, worker, anonymous):
        client.close()


def test_credentials_a_server_refuses_fail_the_first_connection_at_once(
    servers: tuple[SecureNats, SecureRedis],
) -> None:
    """Before: jobsys.nats.connect.connect retried a refused password for ever, silently."""
    nats_server, _ = servers
    wrong = nats_server.url(WORKER).replace(nats_server.passwords[WORKER], "wrong")
    settings = Settings(nats_url=wrong)
    with pytest.raises(ServiceUnavailable) as refused:
        asyncio.run(asyncio.wait_for(connect(settings=settings), REFUSED_WITHIN_S))
    assert "Authorization Violation" in str(refused.value)
    assert "wrong" not in str(refused.value)


def test_a_tls_url_never_talks_plaintext_to_a_server_without_tls(
    servers: tuple[SecureNats, SecureRedis],
) -> None:
    """nats-py upgrades to TLS only if the server asks for it, even for a tls:// URL;
    a server (or a man in the middle) that does not would get the password in
    plaintext. Before: jobsys connected, in plaintext."""
    nats_server, _ = servers
    url = nats_server.url(PROCESSOR).replace("nats://", "tls://")

    async def plain_nats_py() -> bool:
        nc = await nats.connect(url, allow_reconnect=False)
        try:
            return nc.is_connected and not _transport_is_tls(nc)
        finally:
            await nc.close()

    assert asyncio.run(plain_nats_py()), "nats-py alone logs in over plaintext"
    with pytest.raises(ServiceUnavailable) as refused:
        asyncio.run(asyncio.wait_for(connect(settings=Settings(nats_url=url)), REFUSED_WITHIN_S))
    assert "did not start TLS" in str(refused.value)
    assert nats_server.passwords[PROCESSOR] not in str(refused.value)


@pytest.mark.skipif(not have_openssl(), reason="needs the openssl command line")
def test_tls_with_client_certificates_and_an_nkey_login(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = tmp_path / "processor.nk"
    seed_file.write_bytes(seed)
    seed_file.chmod(0o600)
    namespace = get_settings().namespace
    tls_files = {
        "nats_tls_ca": pki.ca,
        "nats_tls_cert": pki.client_cert,
        "nats_tls_key": pki.client_key,
    }
    with (
        SecureNats(tmp_path / "nats", namespace, pki=pki, processor_nkey=public) as nats_server,
        SecureRedis(tmp_path / "redis", namespace, pki=pki) as redis_server,
    ):
        worker = Settings(nats_url=nats_server.url(WORKER), **tls_files)
        processor = Settings(nats_url=nats_server.url(), nats_nkey=seed_file, **tls_files)

        async def use(settings: Settings) -> tuple[bool, int]:
            nc = await connect(settings=settings)
            try:
                info = await nc.jetstream(timeout=5).account_info()
                return _transport_is_tls(nc), info.streams
            finally:
                await nc.close()

        assert asyncio.run(use(worker)) == (True, 0)
        assert asyncio.run(use(processor)) == (True, 0)
        # The processor by nkey has the processor's permissions.
        names = JobNames.of(namespace, 1)

        async def processor_publishes() -> str:
            nc = await connect(settings=processor)
            try:
                await nc.jetstream(timeout=DENIED_TIMEOUT_S).publish(names.subject, b"x")
                return "stored"
            except Exception as exc:
                return type(exc).__name__
            finally:
                await nc.close()

        assert asyncio.run(processor_publishes()) != "stored"
        # Without the CA, or without a client certificate: refused at once, one line.
        for missing in (
            Settings(nats_url=nats_server.url(WORKER)),
            Settings(nats_url=nats_server.url(WORKER), nats_tls_ca=pki.ca),
        ):
            with pytest.raises(ServiceUnavailable) as refused:
                asyncio.run(asyncio.wait_for(connect(settings=missing), REFUSED_WITHIN_S))
            assert "SSL" in str(refused.value)
        # Doctor says how it connects, redacted.
        assert doctor.check_nats(nats_server.url(WORKER), settings=worker).ok
        line = doctor.check_nats_access(processor).message
        assert line == f"TLS (CA {pki.ca}, client certificate); nkey seed file {seed_file}"
        line = doctor.check_nats_access(worker).message
        assert line.endswith(f"; user {WORKER} with a password")

        # Redis over TLS (rediss://, our CA): the processor user sends a result batch.
        rediss = Settings(
            redis_url=redis_server.url(PROCESSOR, tls=True),
            redis_tls_ca=pki.ca,
            namespace=namespace,
        )
        assert doctor.check_redis(rediss.redis_url, rediss).ok
        assert doctor.check_redis_access(rediss).message == (
            f"TLS (CA {pki.ca}); user {PROCESSOR} with a password"
        )
        broker = make_broker(rediss, maintenance=False)
        result = dramatiq.Message(
            queue_name=RESULTS_QUEUE, actor_name="x", args=(), kwargs={}, options={}
        )
        broker.enqueue(result)
        assert broker.client.connection_pool.connection_kwargs["ssl_ca_certs"] == str(pki.ca)
        broker.client.close()


def test_credential_files_reach_nats_py_and_a_bad_setting_is_one_line(tmp_path: Path) -> None:
    creds = tmp_path / "processor.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    assert nats_connect_options(Settings(nats_url="nats://h:4222", nats_creds=creds)) == {
        "user_credentials": str(creds)
    }
    assert doctor.check_nats_access(Settings(nats_url="nats://h:4222", nats_creds=creds)) == (
        doctor.Check("nats access", True, f"plaintext (no TLS); credentials file {creds}")
    )
    missing = tmp_path / "nope.pem"
    unreadable = Settings(nats_url="tls://h:4222", nats_tls_ca=missing)
    line = f"JOBSYS_NATS_TLS_CA: cannot read {missing} (No such file or directory)"
    assert doctor.check_nats_access(unreadable) == doctor.Check("nats access", False, line)
    with pytest.raises(AccessSettingError, match="JOBSYS_NATS_TLS_CA: cannot read"):
        asyncio.run(connect(settings=unreadable))
    both = Settings(nats_url="nats://h:4222", nats_creds=creds, nats_nkey=creds)
    assert not doctor.check_nats_access(both).ok
    # TLS files with a plaintext URL would not protect anything: said, not ignored.
    assert not doctor.check_nats_access(Settings(nats_url="nats://h:4222", nats_tls_ca=creds)).ok
    plain_redis = Settings(redis_url="redis://h:6379/0", redis_tls_ca=creds)
    assert "not rediss://" in doctor.check_redis_access(plain_redis).message


@pytest.mark.parametrize("sslmode", ["disable", "prefer"])
def test_a_postgres_url_with_sslmode_works(sslmode: str) -> None:
    """libpq's TLS options ride in JOBSYS_DATABASE_URL (sslmode, sslrootcert, ...)."""
    url = make_conninfo(get_settings().database_url, sslmode=sslmode)
    with connect_direct(url) as conn:
        assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
    check = doctor.check_postgres(url)
    want = "(no TLS)" if sslmode == "disable" else "TLS)"  # prefer: whatever the server offers
    assert check.ok and check.message.endswith(want), check
