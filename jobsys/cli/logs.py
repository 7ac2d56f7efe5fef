"""`jobsys logs JOB`: a job's event log (job_events), optionally followed."""

from __future__ import annotations

import json
import time
from typing import Any

import click

import jobsys
from jobsys.cli.output import JOB_ID
from jobsys.display import printable, safe_json
from jobsys.lifecycle.states import FINAL
from jobsys.pg.events import read_events

# How often --follow looks for new events.
FOLLOW_POLL_S = 0.5


def _text(event: dict[str, Any]) -> str:
    at = event["at"].astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    fields = " ".join(f"{k}={v}" for k, v in (event["detail"] or {}).items())
    line = f"{at} {event['level']:<7} {event['event']}"
    return printable(f"{line} {fields}" if fields else line)


def _json(job_id: int, event: dict[str, Any]) -> str:
    out = {"id": event["id"], "job_id": job_id, "at": event["at"].isoformat(),
           "level": event["level"], "event": event["event"], "detail": event["detail"]}  # fmt: skip
    return safe_json(json.dumps(out, ensure_ascii=False))


@click.command()
@click.argument("job_id", type=JOB_ID)
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing new events until the job is final (Ctrl-C stops).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event and line.")
def logs(job_id: int, follow: bool, as_json: bool) -> None:
    """Show JOB_ID's events (status moves, findings, rejections), oldest first.

    \b
    Examples:
      jobsys logs 42
      jobsys logs 42 --follow
      jobsys logs 42 --json | jq -r .event
    """
    jobsys.get_job(job_id)  # an unknown job is a one-line error, not an empty log
    after = 0
    try:
        while True:
            events = read_events(job_id, after)
            for event in events:
                click.echo(_json(job_id, event) if as_json else _text(event))
                after = event["id"]
            if events:
                continue  # drain before deciding to stop
            if not follow:
                return
            if jobsys.get_job(job_id).status in FINAL:
                # Final: print what was written up to now, then stop.
                if not read_events(job_id, after):
                    return
                continue
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        return
