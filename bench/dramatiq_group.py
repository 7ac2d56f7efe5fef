"""The Dramatiq baseline of bench.small_jobs: an `echo` actor whose results are
stored, so a group of its messages can be waited on as jobsys waits on a job.

A worker runs it as ``dramatiq bench.dramatiq_group:broker``; the bench
enqueues groups with the same broker and reads results from the same backend.
Its Redis keys live under the bench's namespace (bench.env) and go with it.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from jobsys.settings import get_settings

NAMESPACE = f"{os.environ.get('JOBSYS_NAMESPACE', 'bench')}-dramatiq-baseline"
# Results are kept this long: far past any wait of the bench.
RESULT_TTL_MS = 600_000

backend = RedisBackend(url=get_settings().redis_url, namespace=f"{NAMESPACE}-results")
broker = RedisBroker(url=get_settings().redis_url, namespace=NAMESPACE)
broker.add_middleware(Results(backend=backend, store_results=True, result_ttl=RESULT_TTL_MS))


@dramatiq.actor(broker=broker, store_results=True, max_retries=0, queue_name="echo")
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """What jobsys's `echo` pipeline does: the payload back."""
    return payload
