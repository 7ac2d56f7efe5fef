"""The task gateway: a 20,000-task echo job served only by one remote processor through
`jobsys serve`, against the native processor in the same run; and a 1-task job's
submit-to-final time (p50) both ways.

Native: one worker and one native processor (bench.flow.fresh_system).
Gateway: one worker, `jobsys serve` on a free port, and one `jobsys process
--server` whose environment holds no NATS, Redis or Postgres setting, with
the same concurrency. Target: the gateway's end-to-end rate >= 0.5x the
native one.

    python -m bench.gateway [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx

from bench import (
    env,  # sets JOBSYS_* before jobsys is imported
    flow,
)
from devtools.process import free_port
from jobsys.api.items import counted_items
from jobsys.api.read import wait_until_final
from jobsys.api.submit import submit
from jobsys.ops.runner import LocalSystem, serve_cmd
from jobsys.server.tokens import create_token

TASKS = 20_000
TARGET = 0.5
CONCURRENCY = 8
# 1-task jobs timed one after another, each way.
SMALL_JOBS = 15
SMALL_JOBS_QUICK = 7
BROKER_SETTINGS = ("JOBSYS_NATS_URL", "JOBSYS_REDIS_URL", "JOBSYS_DATABASE_URL", "JOBSYS_SECRET")
START_TIMEOUT_S = 60.0


def _final_s(pipeline: str, n: int, timeout: float) -> tuple[float, str]:
    start = time.perf_counter()
    job = submit(pipeline, counted_items(n), name=f"bench-gateway-{n}")
    final = wait_until_final(job.id, timeout=timeout, poll_s=0.02)
    return time.perf_counter() - start, final.status


def _timed(n: int, small: int) -> dict[str, Any]:
    elapsed, status = _final_s("echo", n, timeout=max(600, n / 100))
    singles = [_final_s("echo", 1, timeout=60) for _ in range(small)]
    return {
        "rate": n / elapsed,
        "elapsed": elapsed,
        "status": status,
        "one_task_p50_s": statistics.median(s for s, _ in singles),
        "one_task_ok": all(st == "success" for _, st in singles),
    }


@contextlib.contextmanager
def gateway_system(tag: str) -> Iterator[dict[str, Any]]:
    """A worker, `jobsys serve`, and one remote processor with no broker settings."""
    log_dir = flow.LOG_DIR / tag
    log_dir.mkdir(parents=True, exist_ok=True)
    token, _ = create_token(f"bench-{tag}-{int(time.time())}", "process", ["echo"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    system = LocalSystem(workers=1, processors=0, log_dir=log_dir).start()
    try:
        with (log_dir / "serve.log").open("ab") as out:
            procs.append(subprocess.Popen(serve_cmd(port), stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("jobsys serve did not start")
            time.sleep(0.2)
        remote_env = {k: v for k, v in os.environ.items() if k not in BROKER_SETTINGS}
        remote_env["JOBSYS_TOKEN"] = token
        cmd = [sys.executable, "-m", "jobsys.cli", "process", "--server", url,
               "--concurrency", str(CONCURRENCY)]  # fmt: skip
        with (log_dir / "remote.log").open("ab") as out:
            procs.append(subprocess.Popen(cmd, env=remote_env, stdout=out,
                                          stderr=subprocess.STDOUT))  # fmt: skip
        time.sleep(3.0)  # imports, execution processes, the first claim
        yield {"url": url, "log_dir": log_dir}
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        system.stop()


def measure(n: int, small: int) -> dict[str, Any]:
    """Native, then gateway, each in a fresh system."""
    load = os.getloadavg()
    with flow.fresh_system("gw-native", CONCURRENCY):
        native = _timed(n, small)
    with gateway_system("gw-remote"):
        remote = _timed(n, small)
    return {"native": native, "gateway": remote, "load_before": load, "load_after": os.getloadavg()}


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows for bench/run.py."""
    from bench.run import row

    m = measure(TASKS, SMALL_JOBS_QUICK if quick else SMALL_JOBS)
    native, remote = m["native"], m["gateway"]
    ratio = remote["rate"] / native["rate"]
    name = f"gateway: {TASKS:,}-task echo job, one remote processor"
    ok = native["status"] == remote["status"] == "success"
    return [
        row(name, "native processor submit->final", native["rate"], "tasks/s"),
        row(name, "remote processor via jobsys serve", remote["rate"], "tasks/s", "success", ok),
        row(name, "gateway / native", ratio, "x", f">= {TARGET}", ratio >= TARGET),
        row(name, "1-task job p50, native", native["one_task_p50_s"] * 1000, "ms"),
        row(name, "1-task job p50, gateway", remote["one_task_p50_s"] * 1000, "ms", "",
            remote["one_task_ok"]),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Standalone: print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    env.setup()
    try:
        m = measure(TASKS, SMALL_JOBS_QUICK if args.quick else SMALL_JOBS)
    finally:
        env.teardown()
    native, remote = m["native"], m["gateway"]
    print(f"load before {m['load_before']}, after {m['load_after']}")
    for name, r in (("native", native), ("gateway", remote)):
        print(f"{name:8} {TASKS:,} tasks: {r['rate']:,.0f} tasks/s ({r['elapsed']:.1f} s, "
              f"{r['status']}); 1-task p50 {r['one_task_p50_s'] * 1000:.0f} ms")  # fmt: skip
    print(f"gateway / native: {remote['rate'] / native['rate']:.2f}x (target >= {TARGET})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
