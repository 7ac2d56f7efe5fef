"""jobsys as a user installs it: a wheel built from this checkout, installed into a
fresh venv, run from a folder that is not the repository.

The venv gets the wheel itself from pip (`--no-deps --no-index`); its
dependencies are the shared venv's installed copies, linked into a folder the
new venv reads through a `.pth` file (nothing is downloaded; `pip check` then
proves the wheel's declared requirements are met by them). Nothing of the
checkout is on the path: PYTHONPATH is dropped and the commands run elsewhere.
"""

from __future__ import annotations

import contextlib
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
        assert (status["status"], status["done"], status["blocked"]) == ("success", 20, None)
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
        # After the processes: a processor still beating would make its presence
        # bucket again (each run of the suite left one on the shared NATS).
        _drop_namespace(namespace)


def _tails(logs: Path) -> dict[str, str]:
    return {p.name: p.read_text()[-3000:] for p in logs.iterdir()}


# -- the README's "Use it from your own project", run as written ---------------------

# The two lines of the section that make the venv and install jobsys: the test
# has made that venv already (with no download: see the module's docstring),
# so they become its activation and a no-network reinstall of the same wheel.
README_INSTALL = {
    "python3 -m venv .venv && . .venv/bin/activate": ". {venv}/bin/activate",
    "pip install /path/to/jobsys": "pip install --quiet --no-deps --no-index {wheel}",
}


def readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]


def code_blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


def test_the_readmes_own_project_section_runs_as_written(
    install: Install, fresh_database: str, tmp_path: Path
) -> None:
    section = readme_section("Use it from your own project")
    script = "\n".join(code_blocks(section, "sh"))
    for line, replacement in README_INSTALL.items():
        assert line in script, f"the README no longer says {line!r}"
        script = script.replace(line, replacement.format(venv=install.venv, wheel=install.wheel))
    (python,) = code_blocks(section, "python")
    home = tmp_path / "home"
    project = home / "myproject"
    project.mkdir(parents=True)
    namespace = f"{os.environ['JOBSYS_NAMESPACE']}r"
    # Only what the README's env file would not say for this machine: the test's
    # own database and namespace. The secret comes from the file the section writes.
    env = {k: v for k, v in install.env().items()
           if not k.startswith("JOBSYS_") and k not in {"XDG_CONFIG_HOME"}}  # fmt: skip
    env.update(HOME=str(home), JOBSYS_NAMESPACE=namespace, JOBSYS_DATABASE_URL=fresh_database)
    script = f"set -euo pipefail\ncd {home}\n{script}\npython - <<'PYTHON'\n{python}PYTHON\n"
    proc = subprocess.run(
        ["bash", "-c", script], cwd=home, env=env, capture_output=True, text=True, timeout=600,
        start_new_session=True,
    )  # fmt: skip
    try:
        logs = {p.name: p.read_text()[-2000:] for p in project.glob("*.log")}
        assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:], logs)
        assert "JOBSYS_SECRET" in (home / ".config" / "jobsys" / "env").read_text()
        out = proc.stdout
        assert '"job_id": 1' in out and "job 1 success" in out, out
        assert '"result": {"n": 8}' in out  # the fifth task, {"n": 4}, doubled
        assert "secret: JOBSYS_SECRET is set" in out and "workers: 1 worker(s) alive" in out
        assert "JOBSYS_SECRET: from" in out and str(home / ".config" / "jobsys" / "env") in out
    finally:
        _stop_group(proc, project)
        _drop_namespace(namespace)


def _stop_group(proc: subprocess.CompletedProcess[str], project: Path) -> None:
    """SIGTERM the worker and processor the section started in the background."""
    del proc
    for pid in _pids_in(project):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _pids_in(project) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _pids_in(project):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pids_in(folder: Path) -> list[int]:
    """Processes whose working directory is `folder` (the section's background jobs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if Path(os.readlink(entry / "cwd")) == folder:
                pids.append(int(entry.name))
    return pids


def _drop_namespace(namespace: str) -> None:
    code = (
        "import asyncio, sys\n"
        "from jobsys.nats.admin import delete_streams, namespace_stream\n"
        "from jobsys.nats.connect import connect, jetstream\n"
        "async def wipe():\n"
        "    nc = await connect(); js = jetstream(nc); ns = sys.argv[1]\n"
        "    await delete_streams(js, namespace_stream(ns))\n"
        "    await nc.close()\n"
        "asyncio.run(wipe())\n"
    )  # fmt: skip
    subprocess.run([sys.executable, "-c", code, namespace], env=os.environ, timeout=60)
