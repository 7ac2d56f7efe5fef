"""`jobsys processors`: the workers and processors that announced themselves, alive or gone."""

from __future__ import annotations

from typing import Any

import click

from jobsys.cli.output import echo_json, table
from jobsys.nats.presence import Member, members, now


def member_dict(member: Member, at: Any) -> dict[str, Any]:
    """The JSON shape of one member: what it announced, its condition, seconds since seen."""
    ago = member.seen_ago(at)
    return {
        **member.model_dump(mode="json"),
        "condition": member.condition(at),
        "seen_ago_s": round(ago, 1) if ago is not None else None,
    }


def _can(member: Member) -> str:
    modules = [f"{m}.*" for m in member.modules]
    return ", ".join(member.pipelines + modules) if member.kind == "processor" else "-"


def _kind(member: Member) -> str:
    # A remote processor says so, with the name of the token it calls with.
    return f"{member.kind} (remote, token {member.token})" if member.remote else member.kind


def _cannot(member: Member) -> str:
    return "; ".join(f"job {r.job_id} {r.pipeline}: {r.reason}" for r in member.refused) or "-"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def processors(as_json: bool) -> None:
    """List the processors and workers that announced themselves: alive, stopped, or
    gone (not seen for 20 s; forgotten after an hour), with host, pid, version,
    slots, the jobs each serves, and the pipelines it can and cannot serve, and why.
    A remote processor (`jobsys process --server`) is listed as remote, with the
    name of its token; `jobsys serve` records its presence for it.

    \b
    Examples:
      jobsys processors
      jobsys processors --json
    """
    at = now()
    team = members()
    if as_json:
        echo_json([member_dict(m, at) for m in team])
        return
    rows = [
        [_kind(m), m.host, m.pid, m.version, m.condition(at), f"{m.seen_ago(at) or 0:.0f}s ago",
         m.slots, ",".join(map(str, m.jobs)) or "-", _can(m), _cannot(m)]
        for m in team
    ]  # fmt: skip
    table(None, ["kind", "host", "pid", "version", "state", "seen", "slots", "jobs",
                 "can serve", "refused"], rows)  # fmt: skip
