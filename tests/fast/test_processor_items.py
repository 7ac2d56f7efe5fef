"""The processor's result items and metrics, made without a model or a lock per task
(issue 26), are what the model and Prometheus made of each task, and a fetched message
whose item the model would refuse is not served. No server needed."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg

from jobsys import metrics
from jobsys.models import PG_INT_MAX, TaskResult
from jobsys.nats.subjects import JobNames
from jobsys.pipelines.resolve import resolve_spec
from jobsys.processor.calls import DONE, FAILED, Failure
from jobsys.processor.execute import JobRun, Task
from jobsys.processor.feeds import Feed, Feeds
from jobsys.processor.outbox import wire_item
from jobsys.processor.processor import result_item
from jobsys.processor.tally import Tally

from .test_validation import json_values

REPLY = "$JS.ACK.ns_tasks_7.ns_c_7.2.41.41.1733390000000000000.12"


def task(task_no: int, deliveries: int) -> Task:
    run = JobRun(job_id=7, pipeline="echo", spec=resolve_spec("echo"), timeout_s=1, max_deliver=3)
    msg = cast(Msg, type("FakeMsg", (), {"reply": REPLY})())
    return Task(run, task_no, msg, deliveries)


@settings(max_examples=200, deadline=None)
@given(
    result=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    task_no=st.integers(0, PG_INT_MAX),
    deliveries=st.integers(1, PG_INT_MAX),
)
def test_a_done_item_is_what_the_model_dumps(
    result: dict[str, Any], task_no: int, deliveries: int
) -> None:
    made = result_item(task(task_no, deliveries), DONE, result)
    model = TaskResult(
        task=task_no, status="done", result=result, reply=REPLY, deliveries=deliveries
    )
    assert made == wire_item(model)
    assert list(made) == list(wire_item(model))  # same order on the wire too


def test_a_failed_item_still_goes_through_the_model_which_makes_its_texts_storable() -> None:
    made = result_item(task(3, 2), FAILED, Failure("boom\x00" + "x" * 20_000, "ValueError", "tb"))
    assert made["status"] == "failed" and made["error_type"] == "ValueError"
    assert "\x00" not in made["error"] and len(made["error"]) < 20_000
    assert TaskResult.model_validate(made).error == made["error"]


def samples(pipeline: str) -> dict[str, float]:
    out = {}
    for family in metrics.TASK_DURATION.collect():
        for s in family.samples:
            if s.labels.get("pipeline") == pipeline and not s.name.endswith("_created"):
                out[s.name + repr(sorted(s.labels.items()))] = s.value
    return {k.replace(pipeline, "p"): v for k, v in out.items()}


def test_tallied_durations_flush_to_what_observing_each_would_show() -> None:
    seconds = [0.0, 0.0004, 0.001, 0.0011, 0.02, 0.5, 1.0, 7.0, 600.0, 601.0, 1e9]
    tally = Tally()
    direct = metrics.TASK_DURATION.labels("tally-direct")
    for s in seconds:
        tally.took("tally-flushed", s)
        tally.ran("tally-flushed", "done")
        direct.observe(s)
    assert samples("tally-flushed") == {}  # nothing until the flush
    tally.flush()
    tally.flush()  # a second flush adds nothing
    assert samples("tally-flushed") == samples("tally-direct")
    done = metrics.TASKS_RUN.labels("tally-flushed", "done")._value.get()
    assert done == len(seconds)


class _Spy:
    """Stands in for the feeds' collaborators: records what `_task` asks of them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def spawn(self, coro: Any, name: str) -> None:
        coro.close()
        self.calls.append(("spawn", name))

    def give(self, n: int) -> None:
        self.calls.append(("give", n))

    def hold(self, reply: str, ack_wait_s: float) -> None:
        self.calls.append(("hold", reply))


@pytest.mark.parametrize(
    ("msg_id", "reply", "served"),
    [
        ("7:12", REPLY, True),
        (f"7:{PG_INT_MAX}", REPLY, True),
        (f"7:{PG_INT_MAX + 1}", REPLY, False),  # no item the model would refuse
        ("8:12", REPLY, False),  # another job's
        ("7:x", REPLY, False),
        ("7:12", "$JS.ACK." + "x" * 600, False),
        ("7:12", "", False),
    ],
)
def test_a_fetched_message_is_served_only_if_its_item_would_be_well_formed(
    msg_id: str, reply: str, served: bool
) -> None:
    spy = _Spy()
    feeds = Feeds.__new__(Feeds)
    feeds.spawn, feeds.tickets, feeds.keepalive = spy.spawn, spy, spy  # type: ignore[assignment]
    feed = Feed(task(0, 1).run, JobNames.of("ns", 7), ack_wait_s=30)
    msg = Msg(cast(Any, None), subject="_INBOX.x", reply=reply, headers={"Nats-Msg-Id": msg_id})
    made = feeds._task(feed, msg)
    if served:
        assert made is not None and made.task_no == int(msg_id.split(":")[1])
        assert made.deliveries == 2 and spy.calls == [("hold", reply)]
    else:
        assert made is None
        assert spy.calls == [("spawn", "terminate a foreign message"), ("give", 1)]
