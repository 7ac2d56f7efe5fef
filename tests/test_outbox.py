"""A task whose pipeline succeeded is never marked lost because recording it was slow.

The processor holds every result batch until a worker confirms it recorded
it: its messages are kept in progress in NATS however long that takes, and
the batch is sent again (with backoff) in case Redis lost it. These tests
stop the recorder for many times ack_wait x max_deliver, with reconciler
passes running all along (as `jobsys reconcile` from cron would), and check
that every task still ends `done`.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobsys.api.read import wait_until_final
from jobsys.ops.runner import LocalSystem
from jobsys.reconciler import reconcile_pass
from jobsys.settings import get_settings, reset_settings
from tests.helpers import assert_counters_match_ledger, make_started_job

# Short settings: an old-style hold (released after HOLD_S) would exhaust
# every task within HOLD_S + MAX_DELIVER x (HOLD_S + ACK_WAIT_S) ~ 8 s.
ACK_WAIT_S = 1
HOLD_S = 2
MAX_DELIVER = 2
OUTAGE_S = 20
SHORT = {"JOBSYS_ACK_WAIT_S": str(ACK_WAIT_S), "JOBSYS_RESULT_HOLD_S": str(HOLD_S)}


@pytest.fixture
def short_settings() -> Iterator[None]:
    """This process (bootstrap, reconciler) and its children use the short settings."""
    saved = {k: os.environ.get(k) for k in SHORT}
    os.environ.update(SHORT)
    reset_settings()
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    reset_settings()


def test_a_recorder_stopped_for_many_ack_waits_loses_no_successful_task(
    tmp_path: Path, short_settings: None
) -> None:
    fast = get_settings().model_copy(update={"lost_after_s": 0.5})
    with LocalSystem(workers=1, processors=0, log_dir=tmp_path) as system:
        worker = system.workers[0]
        time.sleep(2)  # the worker is up (its imports done) before it is frozen
        worker.send_signal(signal.SIGSTOP)
        try:
            job_id = make_started_job(60, max_deliver=MAX_DELIVER)
            system.start_processor()
            # Every task runs at once; its result cannot be recorded. The
            # reconciler keeps looking (cron), as it would in production.
            deadline = time.monotonic() + OUTAGE_S
            while time.monotonic() < deadline:
                reconcile_pass(fast)
                time.sleep(1)
        finally:
            worker.send_signal(signal.SIGCONT)
        view = wait_until_final(job_id, timeout=90)
    assert (view.status, view.done, view.lost, view.failed) == ("success", 60, 0, 0)
    assert_counters_match_ledger(job_id)
