"""Secrets never printed: every place a URL or JOBSYS_SECRET could be shown hides them.

URLs carry passwords and tokens (`nats://user:pass@`, `nats://TOKEN@`,
`redis://:pass@`, `?password=`, libpq's `password='...'`). They may be
printed by `jobsys doctor`, CLI error lines, log lines (ours, and the
libraries': psycopg's pool quotes a malformed URL back), a submit's item-size
error, and the dev tooling's notes; JOBSYS_SECRET sits in the local env file.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.servers import SERVICES
from devtools.services import override_note, update_env_file
from jobsys.api.items import ItemLimit, _item_text, submit_item_limit
from jobsys.dramatiq.broker import SOCKET_TIMEOUT_S, make_broker
from jobsys.errors import InvalidInput
from jobsys.settings import Settings, reset_settings

SECRET = "s3cr3t-Pa55"


def test_a_submit_item_limit_never_shows_the_nats_password(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"nats://worker:{SECRET}@127.0.0.1:1"
    limit = ItemLimit(max_bytes=10, max_payload=100, nats_url=url)
    with pytest.raises(InvalidInput) as too_big:
        limit.check(_item_text('"' + "x" * 20 + '"', "line 1", 22))
    assert "the NATS server at nats://worker:***@127.0.0.1:1" in str(too_big.value)
    assert SECRET not in str(too_big.value)
    # NATS unreachable: the submit goes on with a warning that names the server.
    monkeypatch.setenv("JOBSYS_NATS_URL", url)
    reset_settings()
    try:
        with caplog.at_level(logging.WARNING, logger="jobsys.api.items"):
            submit_item_limit()
    finally:
        monkeypatch.undo()
        reset_settings()
    warnings = [r for r in caplog.records if r.name == "jobsys.api.items"]
    assert warnings
    assert all(SECRET not in str(vars(r)) for r in warnings)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobsys.cli", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip


def test_doctor_and_cli_errors_never_show_a_password() -> None:
    """Every service unreachable, every URL with a secret: doctor's lines and a CLI
    error line name the servers, redacted."""
    env = {
        "JOBSYS_DATABASE_URL": f"postgresql://jobsys:{SECRET}@127.0.0.1:1/jobsys",
        "JOBSYS_REDIS_URL": f"redis://worker:{SECRET}@127.0.0.1:1/0",
        "JOBSYS_NATS_URL": f"nats://{SECRET}@127.0.0.1:1",
    }
    doctor = cli(env, "doctor")
    assert doctor.returncode == 1
    out = doctor.stdout + doctor.stderr
    assert SECRET not in out
    assert "postgresql://jobsys:***@127.0.0.1:1/jobsys" in out
    assert "redis://worker:***@127.0.0.1:1/0" in out and "nats://***@127.0.0.1:1" in out
    assert "redis access: plaintext (no TLS); user worker with a password" in out
    assert "nats access: plaintext (no TLS); a token" in out
    # A malformed database URL, which libpq quotes back.
    typo = {"JOBSYS_DATABASE_URL": f"postgresql//u:{SECRET}@127.0.0.1/x"}
    doctor = cli(typo, "doctor")
    assert SECRET not in doctor.stdout + doctor.stderr
    assert 'missing "=" after "postgresql//u:***@127.0.0.1/x"' in doctor.stdout


def test_the_local_env_file_is_private_and_notes_show_urls_redacted(tmp_path: Path) -> None:
    """Before: `make services` wrote JOBSYS_SECRET to a world-readable file and printed
    `export JOBSYS_..._URL=` with the password."""
    env_file = tmp_path / "jobsys.env"
    env_file.write_text("OTHER=1\n")
    env_file.chmod(0o644)
    update_env_file(env_file, {"JOBSYS_SECRET": SECRET}, set())
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert env_file.read_text() == f"OTHER=1\nJOBSYS_SECRET={SECRET}\n"
    note = override_note(SERVICES["redis"], f"redis://w:{SECRET}@127.0.0.1:6390/0")
    assert SECRET not in note and "redis://w:***@127.0.0.1:6390/0" in note


def test_the_broker_keeps_its_connection_options() -> None:
    """Before: given a URL, Dramatiq built the pool from the URL alone and dropped
    jobsys's socket timeouts (and had nowhere to put TLS files)."""
    broker = make_broker(Settings())
    try:
        kwargs = broker.client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == SOCKET_TIMEOUT_S
    finally:
        broker.client.close()
