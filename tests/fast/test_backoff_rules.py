"""The backoff between deliveries and how a retry delay is given. No server."""

from __future__ import annotations

import pytest

from jobsys.api.submit import retry_delay_of
from jobsys.errors import InvalidInput
from jobsys.nats.admin import describe_stream, retry_delay_of_stream
from jobsys.processor.backoff import JITTER, delay_terms, retry_delay_s, scheduled_delay_s
from jobsys.settings import get_settings


def test_the_schedule_doubles_from_base_up_to_max() -> None:
    assert [scheduled_delay_s(n, 1.0, 300.0) for n in range(1, 11)] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 300,
    ]  # fmt: skip
    # A huge delivery count does not overflow.
    assert scheduled_delay_s(10_000, 1.0, 300.0) == 300.0
    assert scheduled_delay_s(3, 0.0, 300.0) == 0.0


def test_jitter_only_adds_and_never_more_than_its_share() -> None:
    for n in range(1, 12):
        scheduled = scheduled_delay_s(n, 0.5, 60.0)
        assert retry_delay_s(n, 0.5, 60.0, rand=lambda: 0.0) == scheduled
        top = retry_delay_s(n, 0.5, 60.0, rand=lambda: 0.999999)
        assert scheduled <= top <= scheduled * (1 + JITTER)
    # Below the cap, each wait is longer than any jittered wait before it.
    assert retry_delay_s(1, 1.0, 60.0, rand=lambda: 1.0) < retry_delay_s(
        2, 1.0, 60.0, rand=lambda: 0.0
    )


def test_a_retry_delay_is_given_as_seconds_a_pair_or_base_comma_max() -> None:
    cap = get_settings().retry_delay_max_s
    assert retry_delay_of(None) is None
    assert retry_delay_of("2,30") == (2.0, 30.0)
    assert retry_delay_of((1, 60)) == (1.0, 60.0)
    assert retry_delay_of(0.5) == (0.5, cap)
    assert retry_delay_of("1000") == (1000.0, 1000.0)  # BASE above the default MAX
    for bad in ("", "a,b", "1,2,3", "5,1", "-1", "nan", "1,inf", True, "1,100000"):
        with pytest.raises(InvalidInput, match="retry-delay"):
            retry_delay_of(bad)  # type: ignore[arg-type]


def test_a_job_stream_carries_its_retry_delay_to_processors() -> None:
    assert retry_delay_of_stream(describe_stream("echo", 5.0, 3, (2.0, 30.0))) == (2.0, 30.0)
    assert retry_delay_of_stream(describe_stream("echo", 5.0, 3)) is None
    assert retry_delay_of_stream('{"retry_delay": [5, 1]}') is None
    assert retry_delay_of_stream('{"retry_delay": "x"}') is None


def test_the_chosen_delay_wins_and_a_lone_base_takes_the_settings_max() -> None:
    # Native and remote processors' tasks follow the same terms: the chosen one (the
    # job's, else the pipeline's), else the settings'.
    assert delay_terms(None, 1.0, 300.0) == (1.0, 300.0)
    assert delay_terms((5.0, 60.0), 1.0, 300.0) == (5.0, 60.0)
    assert delay_terms((5.0, float("inf")), 1.0, 300.0) == (5.0, 300.0)
    assert delay_terms((500.0, float("inf")), 1.0, 300.0) == (500.0, 500.0)
