"""The processor's slot shares (jobsys.processor.shares, tickets): priority first,
then weight, without servers."""

from __future__ import annotations

import asyncio
import collections

import pytest

from jobsys.api.share import check_priority, check_weight
from jobsys.errors import InvalidInput
from jobsys.nats.admin import describe_stream, share_of, share_of_stream
from jobsys.processor.shares import Shares
from jobsys.processor.tickets import Tickets


def _run(
    shares: Shares, with_work: list[int], slots: int, cost: float = 1.0
) -> collections.Counter[int]:
    got: collections.Counter[int] = collections.Counter()
    for _ in range(slots):
        job = next(shares.order(with_work))
        shares.charge(job, cost)
        got[job] += 1
    return got


def test_weights_three_to_one_share_slots_three_to_one() -> None:
    shares = Shares()
    shares.set(1, 0, 3)
    shares.set(2, 0, 1)
    got = _run(shares, [1, 2], 400)
    assert got[1] == 300 and got[2] == 100


def test_equal_weights_alternate() -> None:
    shares = Shares()
    for job in (1, 2, 3):
        shares.set(job, 0, 1)
    got = _run(shares, [1, 2, 3], 300)
    assert got == {1: 100, 2: 100, 3: 100}


def test_shares_follow_slot_time_not_call_count() -> None:
    # Job 1's calls take 4x as long: with equal weights it gets 1/4 the calls.
    shares = Shares()
    shares.set(1, 0, 1)
    shares.set(2, 0, 1)
    calls: collections.Counter[int] = collections.Counter()
    for _ in range(500):
        job = next(shares.order([1, 2]))
        shares.charge(job, 4.0 if job == 1 else 1.0)
        calls[job] += 1
    assert calls[2] == pytest.approx(4 * calls[1], abs=4)


def test_higher_priority_takes_every_slot_while_it_has_work() -> None:
    shares = Shares()
    shares.set(1, 0, 100)
    shares.set(2, 1, 1)
    assert _run(shares, [1, 2], 50) == {2: 50}
    # Its queue ran dry: the lower priority gets the slots.
    assert _run(shares, [1], 5) == {1: 5}


def test_a_job_idle_for_a_while_banks_no_credit() -> None:
    shares = Shares()
    shares.set(1, 0, 1)
    shares.set(2, 0, 1)
    _run(shares, [1], 100)  # job 2 had nothing queued meanwhile
    got = _run(shares, [1, 2], 100)
    assert abs(got[1] - got[2]) <= 2


def test_a_new_job_starts_level_with_running_ones() -> None:
    shares = Shares()
    shares.set(1, 0, 1)
    _run(shares, [1], 100)
    shares.set(2, 0, 1)
    got = _run(shares, [1, 2], 100)
    assert abs(got[1] - got[2]) <= 2


def test_changing_a_weight_changes_the_share_from_then_on() -> None:
    shares = Shares()
    shares.set(1, 0, 1)
    shares.set(2, 0, 1)
    assert _run(shares, [1, 2], 100) == {1: 50, 2: 50}
    shares.set(2, 0, 4)
    got = _run(shares, [1, 2], 500)
    assert got[2] == pytest.approx(400, abs=3)


def test_the_whole_order_is_priority_then_pass() -> None:
    shares = Shares()
    shares.set(1, 0, 1)
    shares.set(2, 1, 1)
    shares.set(3, 0, 1)
    shares.set(4, -1, 1)
    shares.charge(1, 1.0)
    assert list(shares.order([1, 2, 3, 4])) == [2, 3, 1, 4]
    assert list(shares.order([])) == []


def test_an_unknown_job_is_served_at_the_defaults() -> None:
    shares = Shares()
    got = _run(shares, [7, 8], 10)
    assert got == {7: 5, 8: 5}
    shares.forget(7)
    assert shares.share_of(7) is None


def test_tickets_go_to_higher_priority_waiters_first() -> None:
    async def scenario() -> list[str]:
        tickets = Tickets(1)
        assert await tickets.take(1) == 1  # all taken
        order: list[str] = []

        async def waiter(name: str, priority: int) -> None:
            await tickets.take(1, priority)
            order.append(name)
            tickets.give(1)

        tasks = []
        for name, priority in (("low-a", 0), ("high", 2), ("low-b", 0), ("mid", 1)):
            tasks.append(asyncio.create_task(waiter(name, priority)))
            await asyncio.sleep(0)
        tickets.give(1)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["high", "mid", "low-a", "low-b"]


def test_the_stream_description_carries_the_share() -> None:
    assert share_of_stream(describe_stream("echo", 5.0, 3, priority=2, weight=7)) == (2, 7)
    assert share_of_stream(describe_stream("echo")) == (0, 1)
    # Written by someone else: ignored, not refused.
    assert share_of_stream('{"pipeline": "echo", "priority": 1e9, "weight": 0}') == (0, 1)
    assert share_of_stream('{"priority": true, "weight": "3"}') == (0, 1)
    # A gateway's claim answer, as a remote processor reads it.
    assert share_of({"job_id": 4, "pipeline": "echo", "priority": -2, "weight": 9}) == (-2, 9)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (1.5, "priority: must be an integer, not 1.5"),
        (float("nan"), "priority: must be a finite integer, not nan"),
        (float("inf"), "priority: must be a finite integer, not inf"),
        (True, "priority: must be an integer, not True"),
        ("1", "priority: must be an integer, not str"),
        (1001, "priority: must be between -1000 and 1000, not 1001"),
    ],
)
def test_a_bad_priority_is_refused_in_one_line(value: object, error: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{error}$".replace(".", r"\.")):
        check_priority(value)


def test_weights_are_whole_and_at_least_one() -> None:
    assert check_weight(3) == 3
    assert check_weight(2.0) == 2
    for bad in (0, -1, 1001, 0.5, float("nan")):
        with pytest.raises(InvalidInput, match=r"^weight: "):
            check_weight(bad)
