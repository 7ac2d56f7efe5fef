"""CLI arguments refused before anything is touched: one line, a usage exit. No server
(the settings point nowhere, so a command that reached a server would fail otherwise)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from jobsys.cli.main import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "echo"], "give exactly one of --items FILE or --count N"),
        (["submit", "echo", "--count", "1", "--items", "f"], "give exactly one of --items"),
        (["status", "0"], "0 is not in the range 1<=x<="),
        (["cancel", "abc"], "'abc' is not a valid integer"),
        (["list", "--status", "nope"], "'nope' is not one of"),
        (["process", "--concurrency", "0"], "0 is not in the range 1<=x<=1024"),
        (["nonsense"], "No such command 'nonsense'"),
    ],
)
def test_bad_arguments_are_a_usage_error_naming_the_problem(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("typed", "where"), [("migrate", "db migrate"), ("tokens", "token list")])
def test_a_command_typed_without_its_group_says_where_it_is(typed: str, where: str) -> None:
    result = CliRunner().invoke(main, [typed])
    assert result.exit_code == 2
    assert f"No such command '{typed}': it is `jobsys {where}`." in result.output
