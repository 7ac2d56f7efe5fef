"""Job rows a bench writes directly (no submit, no bootstrap): nothing here
touches the environment, so any bench may import it."""

from __future__ import annotations

from typing import Any


def job_row(name: str, total: int, max_deliver: int = 5) -> dict[str, Any]:
    """`Q.insert_job`'s parameters for an `echo` bench job written directly, every
    option at what `jobsys submit` gives when none is asked for."""
    return {"name": name, "pipeline": "echo", "total": total, "failure_threshold": 0.0,
            "max_deliver": max_deliver, "task_timeout_s": None, "max_in_flight": None,
            "retry_delay_s": None, "retry_delay_max_s": None, "rate_per_s": None,
            "priority": 0, "weight": 1}  # fmt: skip
