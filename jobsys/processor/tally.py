"""The processor's per-task metrics, counted here and published once per batch.

Every pipeline run adds one to `jobsys_tasks_run_total` and one observation
to `jobsys_task_duration_seconds`. Done one by one, that was ~10 % of the
processor's CPU on the echo bench (issue 26: each `inc` takes a lock, each
`observe` two). Here a run only adds to plain counters; `flush` adds them to
Prometheus in one step per label set. The processor flushes as it seals a
result batch (before it is sent, so what a worker records was never counted
later than that) and at once for runs that send no result (a retry).

The histogram is added to through prometheus_client's per-bucket values,
the way its own `observe` does (`tests/fast/test_tally.py` checks the two
agree, so an upgrade that changes them fails there, not in a dashboard).
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

from jobsys import metrics

# The histogram's bucket bounds as prometheus_client keeps them (+Inf last):
# an observation goes to the first bound it does not exceed.
_BOUNDS = (*(float(b) for b in metrics.TASK_BUCKETS), float("inf"))


class Tally:
    """Runs and run times not yet published, by pipeline (see the module docstring)."""

    def __init__(self) -> None:
        self._ran: Counter[tuple[str, str]] = Counter()
        # pipeline -> [sum of seconds, then one count per bucket of _BOUNDS]
        self._took: dict[str, list[float]] = {}
        self._ran_children: dict[tuple[str, str], Any] = {}
        self._took_children: dict[str, Any] = {}

    def ran(self, pipeline: str, outcome: str) -> None:
        """One run of `pipeline` ended with `outcome` (done, failed, retry, timeout)."""
        self._ran[(pipeline, outcome)] += 1

    def took(self, pipeline: str, seconds: float) -> None:
        """One run of `pipeline` took `seconds`."""
        acc = self._took.get(pipeline)
        if acc is None:
            acc = self._took[pipeline] = [0.0] * (len(_BOUNDS) + 1)
        acc[0] += seconds
        acc[1 + bisect.bisect_left(_BOUNDS, seconds)] += 1

    def flush(self) -> None:
        """Publish what was counted since the last flush."""
        if self._ran:
            for key, n in self._ran.items():
                child = self._ran_children.get(key)
                if child is None:
                    child = self._ran_children[key] = metrics.TASKS_RUN.labels(*key)
                child.inc(n)
            self._ran.clear()
        if self._took:
            for pipeline, acc in self._took.items():
                child = self._took_children.get(pipeline)
                if child is None:
                    child = self._took_children[pipeline] = metrics.TASK_DURATION.labels(pipeline)
                child._sum.inc(acc[0])
                for bucket, count in zip(child._buckets, acc[1:], strict=True):
                    if count:
                        bucket.inc(count)
            self._took.clear()
