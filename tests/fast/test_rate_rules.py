"""How rate limits are written and what a limited job's gate does. No server."""

from __future__ import annotations

import pytest

from jobsys.api.submit import rate_of
from jobsys.dramatiq.rate_buckets import bucket
from jobsys.errors import InvalidInput
from jobsys.nats.admin import describe_stream, rate_of_stream
from jobsys.processor.rates import Gate
from jobsys.settings import Settings, parse_rate_limits, parse_task_rate


def test_a_rate_is_tasks_per_second_minute_or_hour() -> None:
    assert parse_task_rate("20/s") == 20.0
    assert parse_task_rate("1.5/s") == 1.5
    assert parse_task_rate("600/m") == 10.0
    assert parse_task_rate("3600/h") == 1.0
    assert parse_task_rate("7") == 7.0
    for bad in ("", "0/s", "fast", "20/d", "-1/s", "1e9/s"):
        with pytest.raises(ValueError):
            parse_task_rate(bad)
    assert rate_of(None) is None and rate_of("20/s") == 20.0 and rate_of(5) == 5.0
    with pytest.raises(InvalidInput, match=r"^rate: "):
        rate_of("lots")


def test_pipeline_limits_come_from_one_setting() -> None:
    assert parse_rate_limits("thumb=50/s, geocode=10/s") == {"thumb": 50.0, "geocode": 10.0}
    assert parse_rate_limits("") == {}
    with pytest.raises(ValueError, match="PIPELINE=RATE"):
        parse_rate_limits("thumb")
    with pytest.raises(ValueError):
        Settings(rate_limits="thumb=lots")
    assert Settings(rate_limits="mypkg.x:y=2/s").pipeline_rates == {"mypkg.x:y": 2.0}


def test_a_burst_is_a_share_of_the_rate_and_at_least_one_task() -> None:
    settings = Settings(namespace="ns", rate_burst_s=0.25)
    assert bucket(settings, "job", "7", 20.0).capacity == 5
    assert bucket(settings, "job", "7", 1.0).capacity == 1
    assert bucket(settings, "pipeline", "thumb", 50.0).key == "ns-rate:pipeline:thumb"


def test_a_gate_starts_only_as_many_tasks_as_it_holds_tokens() -> None:
    gate = Gate(7, [bucket(Settings(), "job", "7", 20.0)], tokens=3)
    assert gate.spend(5) == 3 and gate.tokens == 0 and gate.wanted.is_set()
    assert gate.spend(1) == 0
    assert gate.ahead_cap() == 10


def test_a_job_stream_carries_its_rate_to_processors() -> None:
    assert rate_of_stream(describe_stream("echo", 1.0, 3, None, 20.0)) == 20.0
    assert rate_of_stream(describe_stream("echo")) is None
    assert rate_of_stream('{"rate_per_s": -1}') is None
