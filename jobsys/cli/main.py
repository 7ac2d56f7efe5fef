"""The `jobsys` command: submit, cancel and watch jobs; run workers and processors.

This module is the group: which command lives where (`COMMANDS`), logging,
and the rule that every error is one line on stderr and a non-zero exit,
never a traceback. The commands are in the modules `COMMANDS` names.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from typing import Any, NoReturn

import click
import psycopg
import redis.exceptions
from pydantic import ValidationError

from jobsys.display import one_line, printable
from jobsys.dramatiq.signing import require_secret
from jobsys.errors import JobsysError
from jobsys.logs import setup_logging
from jobsys.pg.db import connect_error, set_application_role
from jobsys.settings import get_settings
from jobsys.version import version

# Every command: its name and where it is defined (module of jobsys.cli:attribute).
COMMANDS = {
    "submit": "jobs:submit",
    "cancel": "jobs:cancel",
    "set": "jobs:set_cmd",
    "status": "jobs:status",
    "list": "jobs:list_cmd",
    "watch": "jobs:watch",
    "logs": "logs:logs",
    "results": "results:results",
    "tasks": "results:tasks",
    "retry": "retry:retry_cmd",
    "inspect": "reconcile:inspect",
    "top": "top:top",
    "processors": "processors:processors",
    "process": "process:process",
    "worker": "worker:worker",
    "scheduler": "reconcile:scheduler",
    "reconcile": "reconcile:reconcile",
    "exporter": "exporter:exporter",
    "prune": "prune:prune_cmd",
    "serve": "serve:serve",
    "token": "tokens:token",
    "db": "system:db",
    "doctor": "system:doctor",
    "demo": "system:demo",
}
# Names people type for a command that lives in a group: the error says where.
MOVED = {"migrate": "db migrate", "tokens": "token list"}
# Long-running services: they log every event and need the signing secret.
SERVICE_COMMANDS = {"worker", "process", "scheduler", "exporter", "serve"}


# libpq's errors about a connection string (not about SQL).
_CONNINFO_ERROR = re.compile(r"connection info string|connection option|URI|invalid \w+ value")


def _fail(message: str, code: int = 1) -> NoReturn:
    # One line, nothing in it a terminal would act on (it may quote input).
    click.echo(f"jobsys: {printable(message)}", err=True)
    sys.exit(code)


class JobsysGroup(click.Group):
    """The `jobsys` group: its commands loaded when named, every known failure one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        # Each command's module is imported only when it runs: `jobsys process`
        # must not load the worker's actors (they install a broker that does
        # maintenance, which a processor's Redis user may not), and a short
        # command need not import what a long-running one needs.
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, attr = where.split(":")
        command = getattr(importlib.import_module(f"jobsys.cli.{module}"), attr)
        assert isinstance(command, click.Command)
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in MOVED:
            ctx.fail(f"No such command '{args[0]}': it is `jobsys {MOVED[args[0]]}`.")
        name, command, rest = super().resolve_command(ctx, args)
        if name is not None:
            # pg_stat_activity (and a busy job's error) say which command a
            # session is: "jobsys worker 4242".
            set_application_role(name)
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            # click quotes the value it refused: shown escaped, like all input.
            exc.message = printable(exc.message)  # type: ignore[misc]
            raise
        except (click.exceptions.Exit, click.Abort):
            raise
        except JobsysError as exc:
            _fail(str(exc))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            _fail(f"invalid setting JOBSYS_{where.upper()}: {first['msg']}")
        except psycopg.errors.UndefinedTable:
            _fail("the database schema is missing: run `jobsys db migrate`")
        except psycopg.OperationalError as exc:
            # A connection outside the pool (migrate, export) or a pool's timeout.
            _fail(str(connect_error(exc, get_settings().database_url)))
        except psycopg.ProgrammingError as exc:
            # libpq quotes a malformed URL back: one redacted line, not a traceback.
            if not _CONNINFO_ERROR.search(str(exc)):
                raise
            _fail(f"invalid JOBSYS_DATABASE_URL ({one_line(exc)})")
        except redis.exceptions.ConnectionError as exc:
            _fail(f"Redis not reachable ({one_line(exc)}); run `make services`")
        except KeyboardInterrupt:
            _fail("interrupted", 130)


@click.group(cls=JobsysGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    version(), "--version", "-V", prog_name="jobsys", message="%(prog)s %(version)s"
)
def main() -> None:
    """jobsys: fan-out batch jobs with exact counts.

    \b
    Example:
      jobsys submit echo --count 1000 --name hello
      jobsys watch 1

    \b
    Shell completion (bash; zsh and fish alike with zsh_source, fish_source):
      eval "$(_JOBSYS_COMPLETE=bash_source jobsys)"
    """
    settings = get_settings()
    ctx = click.get_current_context()
    # Long-running services log every event; interactive commands only warnings,
    # unless JOBSYS_LOG_LEVEL asks for more.
    quiet = ctx.invoked_subcommand not in SERVICE_COMMANDS and "JOBSYS_LOG_LEVEL" not in os.environ
    secrets = [s.get_secret_value() for s in (settings.secret, settings.secret_previous) if s]
    setup_logging(settings.log_format, "WARNING" if quiet else settings.log_level, secrets)
    if quiet:
        # The pool's retries are noise to a person: its failure is reported as
        # one line with the cause (jobsys.pg.db.check_first_connect).
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    if ctx.invoked_subcommand in SERVICE_COMMANDS and ctx.invoked_subcommand != "process":
        # A service that cannot sign (or check) messages must not start. (`process`
        # checks for itself: a remote one, --server, signs nothing and holds no secret.)
        require_secret(settings)
