"""jobsys as a user installs it: a wheel built from this checkout, installed into a
fresh venv, run from a folder that is not the repository.

The venv gets the wheel itself from pip (`--no-deps --no-index`); its
dependencies are the shared venv's installed copies, linked into a folder the
new venv reads through a `.pth` file (nothing is downloaded; `pip check` then
proves the wheel's declared requirements are met by them). Nothing of the
checkout is on the path: PYTHONPATH is dropped and the commands run elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
# The shared venv's packages that must not reach the new venv: jobsys itself
# (an editable install pointing at a checkout) and the installers.
_NOT_SOURCE = shutil.ignore_patterns("__pycache__", "*.pyc")
NOT_A_DEPENDENCY = re.compile(
    r"^(jobsys|_*editable_*|pip|setuptools|_distutils_hack|wheel)\b", re.I
)


@dataclass
class Install:
    """A fresh venv holding the wheel, and a folder outside the checkout to run in."""

    venv: Path
    wheel: Path
    home: Path  # the user's own project folder

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """This run's settings, the new venv first on PATH, nothing of the checkout."""
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        env.update(extra)
        return env

    def run(self, *cmd: str, env: dict[str, str] | None = None, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
        proc = subprocess.run(
            list(cmd), cwd=self.home, env=env or self.env(), capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        if check:
            assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
        return proc


def _link_dependencies(into: Path) -> None:
    """Every package of the shared venv but jobsys and the installers, as symlinks."""
    into.mkdir()
    shared = Path(sysconfig.get_paths()["purelib"])
    for entry in shared.iterdir():
        if entry.suffix == ".pth" or NOT_A_DEPENDENCY.match(entry.name):
            continue
        (into / entry.name).symlink_to(entry)


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    root = tmp_path_factory.mktemp("install")
    dist = root / "dist"
    # Built from a copy of what the repository tracks, so that nothing a
    # build left in the checkout (build/, *.egg-info) can slip files in.
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "jobsys", "sql"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, symlinks=True, ignore=_NOT_SOURCE)
        else:
            shutil.copy(REPO / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist),
         str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("jobsys-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    deps = root / "deps"
    _link_dependencies(deps)
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "shared-dependencies.pth").write_text(f"{deps}\n")
    home = root / "myproject"
    home.mkdir()
    made = Install(venv, wheel, home)
    made.run(str(made.bin / "pip"), "install", "--quiet", "--no-deps", "--no-index", str(wheel),
             timeout=300)  # fmt: skip
    yield made


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """A database nobody migrated yet, dropped after the test."""
    url = os.environ["JOBSYS_DATABASE_URL"]
    name = f"{conninfo_to_dict(url)['dbname']}_installed"
    admin = make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(url, dbname=name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_wheel_holds_the_sql_files_and_only_jobsys_names(install: Install) -> None:
    (site,) = install.venv.glob("lib/python*/site-packages")
    (record,) = site.glob("jobsys-*.dist-info/RECORD")
    files = [line.split(",")[0] for line in record.read_text().splitlines()]
    top = {f.split("/")[0] for f in files if not f.startswith("..")}
    assert top == {"jobsys", record.parent.name}, top
    sql = {f for f in files if f.endswith(".sql")}
    assert "jobsys/sql/001_core.sql" in sql and "jobsys/sql/queries/core.sql" in sql, sorted(sql)
    assert len(sql) == len(list((REPO / "sql").rglob("*.sql")))
    checked = install.run(str(install.bin / "pip"), "check")
    assert "No broken requirements" in checked.stdout


def test_jobsys_version_prints_the_installed_version(install: Install) -> None:
    out = install.run("jobsys", "--version").stdout.strip()
    version = install.wheel.name.split("-")[1]
    assert out == f"jobsys {version}", out
    where = install.run(
        str(install.bin / "python"), "-c", "import jobsys; print(jobsys.__file__)"
    ).stdout  # fmt: skip
    assert str(install.venv) in where, where


def test_an_installed_jobsys_migrates_and_runs_a_job_from_another_folder(
    install: Install, fresh_database: str
) -> None:
    namespace = f"{os.environ['JOBSYS_NAMESPACE']}i"
    env = install.env(JOBSYS_DATABASE_URL=fresh_database, JOBSYS_NAMESPACE=namespace)
    migrated = install.run("jobsys", "db", "migrate", env=env).stdout
    assert "applied 001_core.sql" in migrated, migrated
    logs = install.home / "logs"
    logs.mkdir()
    procs = []
    try:
        for name, cmd in (("worker", ["jobsys", "worker", "--processes", "1", "--threads", "2"]),
                          ("processor", ["jobsys", "process", "--concurrency", "2"])):  # fmt: skip
            with (logs / f"{name}.log").open("w") as out:
                procs.append(subprocess.Popen(cmd, cwd=install.home, env=env, stdout=out,
                                              stderr=subprocess.STDOUT))  # fmt: skip
        created = install.run("jobsys", "submit", "echo", "--count", "20", "--json", env=env)
        job_id = json.loads(created.stdout)["job_id"]
        watched = install.run("jobsys", "watch", str(job_id), "--timeout", "120", env=env,
                              timeout=180, check=False)  # fmt: skip
        assert watched.returncode == 0, (watched.stdout, watched.stderr, _tails(logs))
        status = json.loads(install.run("jobsys", "status", str(job_id), "--json", env=env).stdout)
        assert (status["status"], status["done"]) == ("success", 20)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tails(logs: Path) -> dict[str, str]:
    return {p.name: p.read_text()[-3000:] for p in logs.iterdir()}
