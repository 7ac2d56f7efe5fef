"""The house's promises that need no server: the public names resolve lazily, every
CLI command is where the group says, and a processor loads no Postgres client."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

import jobsys
from jobsys.cli.main import COMMANDS, main
from jobsys.testing.pauses import Pause, pause


def test_every_public_name_resolves() -> None:
    for name in jobsys.__all__:
        assert getattr(jobsys, name) is not None, name
    assert sorted(jobsys.__all__) == sorted(jobsys._WHERE)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_loads_where_the_group_says(name: str) -> None:
    command = main.get_command(click.Context(main), name)
    assert isinstance(command, click.Command) and command.help, name


def test_a_processor_process_loads_no_postgres_client() -> None:
    code = (
        "import sys, jobsys.processor; "
        "print(sorted(m for m in sys.modules if m.startswith('psycopg')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_pause_point_nobody_asked_for_returns_at_once() -> None:
    for point in Pause:
        pause(point)  # would sleep for minutes if this process had been asked to
