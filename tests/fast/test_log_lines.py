"""A Dramatiq message in a log line is named, never written out with its arguments.

Regression: a result batch that failed on a transient fault (Postgres ended
the session) was logged by Dramatiq as "Failed to process message
process_results(2, [{...}, ...])": all 1,000 results of the batch, users'
data, in one 168 KB line, and one such line per failed batch on the day a
dependency fails.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from dramatiq import Message
from dramatiq.broker import MessageProxy

from jobsys.logs import JsonFormatter, TextFormatter

PAYLOAD = "private-user-data"
RESULTS = [{"task": i, "status": "done", "result": {"text": PAYLOAD * 10}} for i in range(1_000)]
# A line with a traceback in it, far below what the batch's results would take.
LINE_MAX = 4_000


def _message() -> Message[None]:
    return Message(
        queue_name="results", actor_name="process_results", args=(2, RESULTS, "_INBOX.x"),
        kwargs={}, options={},
    )  # fmt: skip


@pytest.fixture(params=[TextFormatter, JsonFormatter])
def logged(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(request.param())
    logger = logging.getLogger(f"dramatiq.worker.test.{request.param.__name__}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, out
    logger.handlers.clear()


@pytest.mark.parametrize("wrap", [lambda m: m, MessageProxy], ids=["message", "proxy"])
def test_a_failed_message_is_named_by_actor_and_id_with_its_job(
    logged: tuple[logging.Logger, io.StringIO], wrap: object
) -> None:
    logger, out = logged
    message = _message()
    shown = wrap(message)  # type: ignore[operator]
    try:
        raise RuntimeError("terminating connection due to idle-in-transaction timeout")
    except RuntimeError:
        # As dramatiq.worker logs it.
        logger.error("Failed to process message %s with unhandled exception.", shown,
                     exc_info=True)  # fmt: skip
    line = out.getvalue()
    assert line.count("\n") == 1
    assert len(line) < LINE_MAX, len(line)
    assert PAYLOAD not in line
    assert f"process_results[{message.message_id}]" in line
    assert "idle-in-transaction" in line  # the error is still there
    if line.startswith("{"):
        assert json.loads(line)["job_id"] == 2
    else:
        assert " job_id=2" in line


def test_lines_without_a_message_are_as_they_were(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = logged
    logger.warning("Retrying message %r in %d milliseconds.", "abc-123", 632)
    logger.info("reconcile pass", extra={"run_id": 7})
    text = out.getvalue()
    assert "Retrying message 'abc-123' in 632 milliseconds." in text
    assert "reconcile pass" in text and "7" in text


def test_a_message_with_no_job_gets_no_job_id(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = logged
    message = Message(queue_name="q", actor_name="reconcile", args=(), kwargs={}, options={})
    logger.warning("Message %s was skipped.", message)
    line = out.getvalue()
    assert f"reconcile[{message.message_id}]" in line and "job_id" not in line
