"""How long a task that failed transiently waits before NATS delivers it again.

Exponential backoff with jitter: BASE seconds after the first failed
delivery, doubling after each, at most MAX, then lengthened by a random
0-25% so that tasks that failed together (a service down for all of them)
do not come back together. The jitter only ever adds: every wait is at
least the schedule's, and each is longer than the one before until MAX.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

# The random part of a wait, as a fraction of it (added, never taken away).
JITTER = 0.25
# 2**62 seconds is past any cap: exponents beyond it change nothing.
MAX_EXPONENT = 62


def scheduled_delay_s(failed_delivery: int, base: float, cap: float) -> float:
    """The wait before the next delivery after delivery number `failed_delivery`
    (1 = the first) failed, without jitter: ``min(cap, base * 2**(n-1))``."""
    exponent = min(max(failed_delivery - 1, 0), MAX_EXPONENT)
    return min(cap, base * math.ldexp(1.0, exponent))


def delay_terms(chosen: tuple[float, float] | None, base: float, cap: float) -> tuple[float, float]:
    """The (base, max) seconds a retried task's backoff follows: `chosen` (the job's
    own, else its pipeline's), else the settings' `base` and `cap`. A chosen max is
    held to the settings' `cap` (a pipeline's lone BASE comes with max inf) unless
    the chosen base is longer still. Native and remote processors' tasks wait alike."""
    if chosen is None:
        return base, cap
    own_base, own_cap = chosen
    return own_base, min(own_cap, max(cap, own_base))


def retry_delay_s(
    failed_delivery: int,
    base: float,
    cap: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """`scheduled_delay_s` lengthened by up to JITTER of itself, at random."""
    return scheduled_delay_s(failed_delivery, base, cap) * (1.0 + JITTER * rand())
