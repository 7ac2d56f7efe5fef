"""A worker starts without alarming its operator.

Found trying a wheel from a fresh venv: every `jobsys worker` start logged
Dramatiq's `WARNING ... adding a middleware of the same type twice:
<dramatiq.worker._WorkerMiddleware ...>. It may have unexpected results.` It
is the design (two Dramatiq Workers in one process, jobsys.worker.run), not a
mistake, so that one warning is dropped.
"""

from __future__ import annotations

import time
from pathlib import Path

from jobsys.ops.runner import LocalSystem

STARTED_WITHIN_S = 60  # a liveness bound


def test_a_worker_starts_without_dramatiqs_second_middleware_warning(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    with LocalSystem(workers=1, processors=0, log_dir=logs):
        deadline = time.monotonic() + STARTED_WITHIN_S
        text = ""
        while "worker started" not in text:
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.2)
            text = "".join(p.read_text(errors="replace") for p in logs.glob("worker*.log"))
    assert "same type twice" not in text, text[-2000:]
