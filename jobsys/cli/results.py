"""`jobsys results` and `jobsys tasks`: a job's outcomes out of the ledger."""

from __future__ import annotations

import contextlib
import csv
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click

from jobsys.api.export import EXPORT_STATUSES, Export, open_export
from jobsys.api.formats import csv_cells, jsonl_line
from jobsys.api.statuses import parse_statuses
from jobsys.api.tasks import TaskRow, group_errors, list_tasks
from jobsys.cli.output import JOB_ID, echo_json, progress_bar, table
from jobsys.errors import InvalidInput

# Rows between progress bar updates.
PROGRESS_EVERY = 5_000
# Longest error text shown in a table cell (`--json` has it whole).
TABLE_ERROR_CHARS = 300


_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


@dataclass
class Target:
    """Where `--output` writes: the file (a symlink's target), and the mode of the file
    it replaces (None: a new file)."""

    path: Path
    replaces_mode: int | None


def output_target(given: Path) -> Target:
    """The regular file `--output` may write, or InvalidInput (one line): a device, a
    FIFO, a socket or a directory is refused, and so is a directory that is missing.
    Through a symlink, the file it points at is written and the link stays."""
    path = Path(os.path.realpath(given))
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InvalidInput(f"--output: cannot use {given} ({exc.strerror})") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a file")
        raise InvalidInput(f"--output: {given} is {kind}, not a regular file: give a file "
                           "to create or replace (or leave --output out for stdout)")  # fmt: skip
    if not path.parent.is_dir():
        raise InvalidInput(f"--output: directory {path.parent} does not exist")
    return Target(path, stat.S_IMODE(st.st_mode) if st is not None else None)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _open_output(target: Target | None, fmt: str) -> Iterator[IO[str]]:
    """stdout, or a temporary file beside the target renamed onto it only when complete
    (with the replaced file's mode, or the umask's for a new one)."""
    newline = "" if fmt == "csv" else None
    if target is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    path = target.path
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise InvalidInput(f"--output: cannot write in {path.parent} ({exc.strerror})") from None
    try:
        with open(fd, "w", encoding="utf-8", newline=newline) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        mode = target.replaces_mode if target.replaces_mode is not None else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write(export: Export, out: IO[str], fmt: str, on_row: Any) -> int:
    columns = export.columns
    written = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in export:
            writer.writerow(csv_cells(row, columns))
            written += 1
            if written % PROGRESS_EVERY == 0:
                on_row(written)
    else:
        for row in export:
            out.write(jsonl_line(row, columns))
            written += 1
            if written % PROGRESS_EVERY == 0:
                on_row(written)
    return written


def _summary(export: Export, written: int, where: str) -> tuple[str, bool]:
    counts = export.counts
    expected = export.expected
    if expected is None:
        shown = ", ".join(f"{s} {n:,}" for s, n in sorted(counts.items()))
        chain = len(export.descendants)
        return (
            f"job {export.job.job_id} and {chain} retr{'y' if chain == 1 else 'ies'}: "
            f"wrote {written:,} tasks by latest outcome ({shown or 'none'}) to {where}",
            True,
        )
    shown = ", ".join(f"{s} {counts.get(s, 0):,}" for s in expected)
    agree = all(counts.get(s, 0) == n for s, n in expected.items()) and set(counts) <= set(expected)
    line = f"job {export.job.job_id}: wrote {written:,} tasks ({shown}) to {where}; "
    if agree:
        return line + "equal to the job's counters", True
    says = ", ".join(f"{s} {n:,}" for s, n in expected.items())
    return line + f"but the job's counters say {says}: run `jobsys reconcile`", False


@click.command()
@click.argument("job_id", type=JOB_ID)
@click.option("--status", type=click.Choice(EXPORT_STATUSES), default="done", show_default=True,
              help="Which tasks: one status, or all.")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True)  # fmt: skip
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write this file (complete or not at all: a new file renamed into "
                   "place) instead of stdout.")  # fmt: skip
@click.option("--with-payload", is_flag=True, help="Add each task's payload.")
@click.option("--latest", is_flag=True,
              help="Each task's latest outcome across JOB_ID and its retries.")  # fmt: skip
def results(
    job_id: int, status: str, fmt: str, output: Path | None, with_payload: bool, latest: bool
) -> None:
    """Stream JOB_ID's tasks: one object per task with task, status, result,
    error, deliveries, finished_at, error_type and error_trace (a failure's
    exception class and traceback, when an exception made it; else null or
    empty), then origin_task (a retry job) or job (--latest), and payload
    (--with-payload). Results and payloads are written byte for byte as stored.
    A line on stderr says how many were written per status; they equal the
    job's counters.

    \b
    Examples:
      jobsys results 42 > results.jsonl
      jobsys results 42 --status all --format csv --with-payload -o all.csv
      jobsys results 42 --latest --status all   # after `jobsys retry 42`
    """
    statuses = parse_statuses(status, EXPORT_STATUSES)
    target = output_target(output) if output is not None else None
    where = str(output) if output is not None else "stdout"
    if target is not None and target.replaces_mode is not None:
        where += f" (replaced the existing {output})"
    show_bar = sys.stderr.isatty() and (output is not None or not sys.stdout.isatty())
    try:
        with (
            open_export(
                job_id, statuses, latest=latest, with_payload=with_payload, raw=True
            ) as export,
            _open_output(target, fmt) as out,
        ):
            expected = export.expected
            if show_bar:
                total = sum(expected.values()) if expected is not None else None
                with progress_bar(f"job {job_id}", total) as update:
                    written = _write(export, out, fmt, lambda n: update(n, total))
                    update(written, total)
            else:
                written = _write(export, out, fmt, lambda n: None)
    except BrokenPipeError:
        # `jobsys results 42 | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    line, ok = _summary(export, written, where)
    click.echo(line, err=True)
    if not ok:
        sys.exit(1)


@click.command()
@click.argument("job_id", type=JOB_ID)
@click.option("--status", default="failed", show_default=True,
              help="failed, lost, cancelled, done, pending, or a comma list.")  # fmt: skip
@click.option("--by-error", is_flag=True,
              help="Group by cause (exception type and the message with numbers, "
                   "paths, addresses and quoted values taken out): count and an "
                   "example task.")  # fmt: skip
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="Tasks (or, with --by-error, error groups) to show.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def tasks(job_id: int, status: str, by_error: bool, limit: int, as_json: bool) -> None:
    """List JOB_ID's failed (or lost, ...) tasks with their errors.

    \b
    Examples:
      jobsys tasks 42
      jobsys tasks 42 --status failed,lost --by-error
      jobsys tasks 42 --limit 1000 --json
    """
    statuses = parse_statuses(status)
    assert statuses is not None
    if by_error:
        listing = group_errors(job_id, statuses, limit)
    else:
        listing = list_tasks(job_id, statuses, limit)
    if as_json:
        echo_json(listing.as_dict())
        return
    what = "/".join(listing.statuses)
    if listing.errors is not None:
        table(
            f"job {job_id}: {listing.count:,} {what} task(s), "
            f"{listing.distinct_errors:,} distinct error(s)",
            ["tasks", "statuses", "type", "error (normalised)", "example task", "its error"],
            [[g.tasks, ",".join(g.statuses), g.error_type or "", g.error[:TABLE_ERROR_CHARS],
              g.example_task, g.example_error[:TABLE_ERROR_CHARS]]
             for g in listing.errors],
        )  # fmt: skip
        return
    assert listing.tasks is not None
    table(
        f"job {job_id}: {len(listing.tasks):,} of {listing.count:,} {what} task(s)",
        ["task", "status", "deliveries", "finished / next attempt", "error"],
        [[t.task, t.status, t.deliveries, _when(t),
          (t.error or t.last_error or "")[:TABLE_ERROR_CHARS]] for t in listing.tasks],
    )  # fmt: skip


def _when(task: TaskRow) -> str:
    """When a task finished, or when a pending one that failed is delivered again."""
    if task.finished_at is not None:
        return task.finished_at.strftime("%Y-%m-%d %H:%M:%S")
    if task.next_attempt_at is not None:
        return "next " + task.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S")
    return ""
