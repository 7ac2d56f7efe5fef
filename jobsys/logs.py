"""Structured logging: one line per event, with the job id when there is one.

`JOBSYS_LOG_FORMAT=json` gives one JSON object per line; the default text
format is ``time level logger event key=value ...``. Library code logs with
``log.info("event name", extra={"job_id": 7, ...})``.

Every line is redacted before it is written: passwords and tokens in URLs
(`jobsys.probes.redact`) and the values of the secrets handed to
`setup_logging` (JOBSYS_SECRET) never reach a log, whatever a library or an
exception put in the message.

A Dramatiq message in a library's line (Dramatiq logs a message that failed
with all its arguments) is named by its actor and id, with its job id as a
field: a result batch's arguments are its results, up to megabytes of the
users' data in one line, on the very day a dependency fails.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from jobsys.display import printable, redact

# Attributes every LogRecord has; anything else came in through `extra`
# (but uvicorn's `color_message`, the same message with terminal colours).
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName",
                                                    "color_message"}  # fmt: skip


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _is_message(arg: Any) -> bool:
    # A dramatiq Message, or the MessageProxy a worker holds (duck-typed: this
    # module is below everything, Dramatiq included).
    return all(hasattr(arg, a) for a in ("actor_name", "message_id", "args", "kwargs"))


def _event(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """The record's event text and fields, a Dramatiq message in its arguments
    named by actor and id (its job id a field) instead of written out whole."""
    fields = _fields(record)
    args: Any = record.args
    if not isinstance(args, tuple) or not any(_is_message(a) for a in args):
        return record.getMessage(), fields
    brief: list[Any] = []
    arg: Any
    for arg in args:
        if _is_message(arg):
            brief.append(f"{arg.actor_name}[{arg.message_id}]")
            first = arg.args[0] if arg.args else None
            if type(first) is int and "job_id" not in fields:
                fields["job_id"] = first
        else:
            brief.append(arg)
    try:
        return str(record.msg) % tuple(brief), fields
    except (TypeError, ValueError):
        return record.getMessage(), fields


class _Redacting(logging.Formatter):
    """Hides passwords in URLs and the given secret values in every formatted line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def redacted(self, line: str) -> str:
        """`line` without secrets (and, in text, nothing a terminal would act on)."""
        line = redact(line)
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line


class JsonFormatter(_Redacting):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        out["event"], fields = _event(record)
        out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return self.redacted(json.dumps(out, default=str))


class TextFormatter(_Redacting):
    """``time level logger event key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        event, fields = _event(record)
        extras = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{ts} {record.levelname:<7} {record.name} {event}"
        if extras:
            line = f"{line} {extras}"
        if record.exc_info:
            line = f"{line} exc={self.formatException(record.exc_info)!r}"
        return printable(self.redacted(line))


def setup_logging(fmt: str = "text", level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Install the jobsys formatter on the root logger (idempotent); `secrets` are
    values never to print."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats-py logs every reconnect attempt at error level; ours say it once.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    # httpx logs every request at info: a remote processor's log would be one
    # line per lease, extend and report; its failures come through ours.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
