"""A Dramatiq actor used as a completion hook target (`tests.hook_targets:record_completion`)."""

from __future__ import annotations

from typing import Any

import dramatiq

from jobsys.dramatiq.broker import setup_broker

setup_broker()

HOOK_QUEUE = "hooks_test"
# What the actor received, in this process.
RECEIVED: list[dict[str, Any]] = []


@dramatiq.actor(queue_name=HOOK_QUEUE, max_retries=0)
def record_completion(job: dict[str, Any]) -> None:
    """Keep the hook's payload."""
    RECEIVED.append(job)


def not_an_actor(job: dict[str, Any]) -> None:
    """A plain function: not a valid hook target."""
