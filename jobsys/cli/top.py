"""`jobsys top`: a live full-screen view of the active jobs and who runs them.

One query per refresh (`jobsys.ops.monitor.active_jobs`) and one read of the
workers' and processors' announcements (`jobsys.nats.presence`), from which
each job's `blocked` reason is judged (the query says which started jobs only
wait out a retry delay, as `jobsys status` does); rich's Live redraws
the frame in place on the alternate screen, so nothing scrolls or flickers.
`q` (or Ctrl-C) quits; `--once` prints one frame and exits (scripts, tests).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from datetime import UTC, datetime

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from jobsys.cli.output import FiniteFloat, wide_console
from jobsys.display import one_line, printable
from jobsys.lifecycle.blocked import blocked_reason
from jobsys.nats.presence import Member, members
from jobsys.ops.monitor import ActiveJob, Snapshot, active_jobs

# Rows drawn at most (the query is limited to these; the header says how many more).
MAX_ROWS = 200
DEFAULT_INTERVAL_S = 1.0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86_400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d{seconds % 86_400 // 3600:02d}h"


def _finding(job: ActiveJob) -> Text:
    if job.finding is None:
        return Text("-", style="dim")
    when = ""
    if job.finding_at is not None:
        when = f" {_duration((datetime.now(UTC) - job.finding_at).total_seconds())} ago"
    text = f"{job.finding}: {job.finding_action}{when}"
    style = "yellow" if job.finding_action not in (None, "none") else ""
    return Text(text, style=style)


def _team_line(team: list[Member] | str, now: datetime) -> Text:
    """Who runs: live processors (and their slots) and workers, or why that is unknown."""
    if isinstance(team, str):
        return Text(f"processors and workers: {team}", style="yellow")
    parts = []
    for kind in ("processor", "worker"):
        alive = [m for m in team if m.kind == kind and m.alive(now)]
        n = len(alive)
        text = f"{n} {kind}{'' if n == 1 else 's'}"
        if kind == "processor":
            text += f" ({sum(m.slots for m in alive)} slots)"
        parts.append(text)
    style = "" if all(not p.startswith("0 ") for p in parts) else "red"
    return Text(", ".join(parts) + " alive (`jobsys processors`)", style=style)


def read_team() -> list[Member] | str:
    """The announced members, or why they cannot be read (one line)."""
    try:
        return members()
    except Exception as exc:
        return f"NATS not reachable ({one_line(exc) or type(exc).__name__})"


def frame(
    snapshot: Snapshot,
    now: datetime | None = None,
    screen: bool = True,
    team: list[Member] | str | None = None,
) -> Group:
    """One screen: a header line, who runs, and a table of the active jobs (each with
    why it is blocked, when it is). `screen`: fit a terminal (the table fills its
    width, long names are cut); else every cell whole."""
    now = now or datetime.now(UTC)
    shown = len(snapshot.jobs)
    more = f" ({snapshot.active - shown} more not shown)" if snapshot.active > shown else ""
    rate = sum(j.rate for j in snapshot.jobs)
    header = Text(
        f"jobsys top - {now.astimezone():%H:%M:%S} - {snapshot.active} active job(s){more}"
        f" - {rate:,.0f} tasks/s - q quits",
        style="bold",
    )
    table = Table(expand=screen, pad_edge=False, box=None, header_style="bold")
    for name, justify in (("job", "right"), ("name", "left"), ("status", "left"),
                          ("prio", "right"), ("wt", "right"), ("progress", "left"),
                          ("%", "right"), ("done", "right"),
                          ("failed", "right"), ("lost", "right"), ("total", "right"),
                          ("tasks/s", "right"), ("eta", "right"), ("age", "right"),
                          ("reconciler", "left"), ("blocked", "left")):  # fmt: skip
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for job in snapshot.jobs:
        share = job.settled / job.total if job.total else 1.0
        table.add_row(
            str(job.job_id),
            Text(printable((job.name[:24] if screen else job.name) or job.pipeline)),
            job.status,
            str(job.priority),
            str(job.weight),
            ProgressBar(total=max(job.total, 1), completed=job.settled, width=20),
            f"{share:.1%}",
            f"{job.done:,}",
            Text(f"{job.failed:,}", style="red" if job.failed else ""),
            Text(f"{job.lost:,}", style="red" if job.lost else ""),
            f"{job.total:,}",
            f"{job.rate:,.0f}",
            _duration(job.eta_s),
            _duration(job.age_s),
            _finding(job),
            _blocked(job, team, now),
        )
    lines = [header] if team is None else [header, _team_line(team, now)]
    if not snapshot.jobs:
        return Group(*lines, Text("no active jobs", style="dim"))
    return Group(*lines, table)


def _blocked(job: ActiveJob, team: list[Member] | str | None, now: datetime) -> Text:
    if team is None or isinstance(team, str):
        return Text("-", style="dim")
    reason = blocked_reason(job.job_id, job.status, team, now, job.waits_for_retry)
    return Text(reason, style="red") if reason else Text("-", style="dim")


@contextlib.contextmanager
def _keys() -> Iterator[int | None]:
    """stdin in cbreak mode (keys arrive one by one, unechoed), or None if not a terminal."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit_pressed(fd: int | None, timeout: float) -> bool:
    """Wait up to `timeout` for a key; True if it was q."""
    if fd is None:
        time.sleep(timeout)
        return False
    ready, _, _ = select.select([fd], [], [], timeout)
    return bool(ready) and os.read(fd, 32).lower().startswith(b"q")


@click.command()
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts).")
@click.option("--interval", type=FiniteFloat(0.2, 3600), default=DEFAULT_INTERVAL_S,
              show_default=True, help="Seconds between refreshes.")  # fmt: skip
@click.option("--width", type=click.IntRange(40, 1000), default=None,
              help="Columns to draw with --once (default: the terminal's).")  # fmt: skip
def top(once: bool, interval: float, width: int | None) -> None:
    """Live view of the active jobs: progress, done/failed/lost, rate over the
    last minute, ETA, age, the reconciler's latest finding and why a job is
    blocked; and how many processors and workers are alive. q quits.

    \b
    Examples:
      jobsys top
      jobsys top --once --width 160
    """
    if once:
        out = wide_console(width)
        screen = out.is_terminal or width is not None
        out.print(frame(active_jobs(MAX_ROWS), screen=screen, team=read_team()))
        return
    console = Console(highlight=False)
    with (
        _keys() as fd,
        Live(console=console, screen=True, auto_refresh=False, transient=True) as live,
    ):
        try:
            while True:
                live.update(frame(active_jobs(MAX_ROWS), team=read_team()), refresh=True)
                if _quit_pressed(fd, interval):
                    return
        except KeyboardInterrupt:
            return
