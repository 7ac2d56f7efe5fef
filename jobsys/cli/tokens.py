"""`jobsys token create|list|revoke`: the HTTP API's tokens."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from jobsys.cli.output import echo_json, table
from jobsys.server.tokens import Scope, create_token, list_tokens, revoke_token


@click.group()
def token() -> None:
    """Tokens for the HTTP API (`jobsys serve`).

    \b
    Scopes: read (list, status, tasks, events, results), submit (read, and
    submit, cancel, retry), admin (submit, and tokens), process (remote
    processors only). --pipelines limits a token to jobs of those pipelines.

    \b
    Example:
      jobsys token create --name ci --scope submit --pipelines sha256
    """


@token.command()
@click.option("--name", required=True, help="What the token is for (letters, digits, . _ -).")
@click.option("--scope", type=click.Choice([s.value for s in Scope]), required=True)
@click.option("--pipelines", default=None, metavar="A,B",
              help="Only jobs of these pipelines (process: required; admin: refused).")  # fmt: skip
@click.option("--expires-days", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The token stops working after this many days (default: never).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help='Print {"name", "token", ...}.')
def create(
    name: str, scope: str, pipelines: str | None, expires_days: float | None, as_json: bool
) -> None:
    """Make a token and print it, once: only its hash is stored.

    \b
    Examples:
      jobsys token create --name dashboard --scope read
      TOKEN=$(jobsys token create --name gpu-lab --scope process --pipelines embed)
      jobsys token create --name ci --scope submit --expires-days 90 --json
    """
    made, info = create_token(name, scope, pipelines, expires_days)
    if as_json:
        echo_json({"name": info.name, "token": made, "fingerprint": info.fingerprint,
                   "scope": info.scope.value, "pipelines": info.pipelines,
                   "expires_at": info.expires_at})  # fmt: skip
        return
    click.echo(made)
    reach = ", ".join(info.pipelines) if info.pipelines else "every pipeline"
    expires = f", expires {info.expires_at:%Y-%m-%d %H:%M}" if info.expires_at else ""
    click.echo(
        f"token {info.name}: scope {info.scope}, {reach}{expires}, fingerprint "
        f"{info.fingerprint}. It is shown only now: keep it.",
        err=True,
    )


@token.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_cmd(as_json: bool) -> None:
    """List the tokens (never the tokens themselves): live first, then revoked.

    \b
    Example:
      jobsys token list
    """
    now = datetime.now(UTC)
    tokens = list_tokens()
    if as_json:
        echo_json([t.as_dict(now) for t in tokens])
        return

    def when(at: datetime | None) -> str:
        return at.astimezone().strftime("%Y-%m-%d %H:%M") if at else ""

    table(
        None,
        ["name", "scope", "pipelines", "fingerprint", "state", "created", "expires", "last used"],
        [[t.name, t.scope, ",".join(t.pipelines) if t.pipelines else "(all)", t.fingerprint,
          t.state(now), when(t.created_at), when(t.expires_at), when(t.last_used_at)]
         for t in tokens],
    )  # fmt: skip


@token.command()
@click.argument("name")
def revoke(name: str) -> None:
    """Revoke the live token called NAME: every request with it is refused from now on.

    \b
    Example:
      jobsys token revoke ci
    """
    info = revoke_token(name)
    click.echo(f"token {info.name} revoked (fingerprint {info.fingerprint})")
