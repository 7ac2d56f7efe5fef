"""Printing for the CLI: JSON, tables and progress bars."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from jobsys.display import printable, safe_json
from jobsys.models import PG_BIGINT_MAX, JobView

# A job id argument: a positive integer a job id can be (Postgres bigint).
JOB_ID = click.IntRange(min=1, max=PG_BIGINT_MAX)


class FiniteFloat(click.FloatRange):
    """A float option in a range, never NaN or infinite (a range lets NaN through:
    every comparison with it is false)."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


# `--metrics-port` of the long-running commands; JOBSYS_METRICS_PORT is its default.
METRICS_PORT = click.option(
    "--metrics-port", type=click.IntRange(1, 65_535), default=None,
    help="Serve Prometheus metrics on this port (default JOBSYS_METRICS_PORT; unset: off).",
)  # fmt: skip

# Off a terminal (a pipe, a file, a script reading it) a table is as wide as its
# cells: none is cut to fit 80 columns. On a terminal, rich fits the screen.
UNBOUNDED_WIDTH = 100_000


def wide_console(width: int | None = None) -> Console:
    """A console on stdout: `width` columns, the terminal's, or unbounded off a terminal."""
    if width is None and not sys.stdout.isatty():
        width = UNBOUNDED_WIDTH
    return Console(width=width, highlight=False)


console = wide_console()
err_console = Console(stderr=True)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def echo_json(value: Any) -> None:
    """One JSON document on stdout (nothing in it a terminal would act on)."""
    click.echo(safe_json(json.dumps(value, default=_default, ensure_ascii=False)))


def job_dict(view: JobView) -> dict[str, Any]:
    """The JSON shape of a job."""
    return view.model_dump(mode="json")


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table on stdout (cells whole when stdout is not a terminal)."""
    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    for row in rows:
        # Text, not str: rich would read "[...]" in a job name or error as markup;
        # printable: a control character in one would act on the terminal.
        t.add_row(*(Text("" if v is None else printable(str(v))) for v in row))
    console.print(t)


def job_rows(views: Sequence[JobView]) -> list[list[Any]]:
    """`jobsys list` rows."""
    return [
        [
            v.job_id,
            v.parent_id or "",
            v.name,
            v.pipeline,
            v.status,
            v.priority,
            v.weight,
            v.total,
            v.done,
            v.failed,
            v.lost,
            f"{v.progress:.1%}",
            v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        ]
        for v in views
    ]


JOB_COLUMNS = ["id", "parent", "name", "pipeline", "status", "prio", "weight", "total", "done",
               "failed", "lost", "progress", "created"]  # fmt: skip


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Any]:
    """A rich progress bar on stderr; yields an `update(completed, total=None, **fields)`."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )
    with progress:
        task = progress.add_task(description, total=total, status="")

        def update(completed: int, total: int | None = None, status: str = "") -> None:
            progress.update(task, completed=completed, total=total, status=status)

        yield update
