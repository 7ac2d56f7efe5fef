"""Rate limiter overhead per task at 2,000 tasks/s (issue 23).

A rate-limited job's tasks start only with a token from the shared bucket in
Redis (jobsys/processor/rates.py, jobsys/dramatiq/rate_buckets.py). This
drives one processor-side gate exactly as execution does -- tasks always
waiting, each token spent at once as it arrives -- against the real Redis for
`SECONDS` at 2,000 tasks/s, and measures what the limiter costs:

- tasks started per second (must be the limit: 2,000/s, the burst aside);
- Redis round trips (`take` calls) per 1,000 tasks: tokens come in batches of
  up to the burst (JOBSYS_RATE_BURST_S of the rate), not one call per task;
- CPU per task of this process (the refill loop and spending: what a
  processor pays) and of the Redis server (the Lua script; INFO's used_cpu,
  the whole server, so other clients' work on a shared machine is in it).

Target: < 20 us of processor CPU per task (a processor spends ~105 us per
echo task in all, DESIGN.md).

    python -m bench.rate_limit [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench import env  # sets JOBSYS_* before jobsys is imported

RATE = 2_000.0
SECONDS = 10.0
QUICK_SECONDS = 4.0
TARGET_US = 20.0


def _redis_cpu() -> float:
    import redis

    from jobsys.settings import get_settings

    client = redis.Redis.from_url(get_settings().redis_url)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    finally:
        client.close()


async def _drive(seconds: float) -> dict[str, Any]:
    from jobsys.processor.rates import Rates
    from jobsys.settings import get_settings

    tasks: list[asyncio.Task[Any]] = []
    woke = asyncio.Event()
    rates = Rates(
        get_settings(),
        waiting=lambda job_id: 1_000_000,  # always tasks waiting
        wake=woke.set,
        spawn=lambda coro, name: tasks.append(asyncio.create_task(coro, name=name)),
    )
    gate = rates.gate_for(1, f"bench-rate-{env.RUN_ID}", RATE)
    assert gate is not None and rates._buckets is not None
    calls = 0
    take = rates._buckets.take

    async def counted(*args: Any) -> tuple[int, float]:
        nonlocal calls
        calls += 1
        return await take(*args)

    rates._buckets.take = counted  # type: ignore[method-assign]
    started = 0
    redis_cpu = _redis_cpu()
    cpu = time.process_time()
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        await woke.wait()
        woke.clear()
        started += gate.spend(1_000_000)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu
    redis_cpu = _redis_cpu() - redis_cpu
    await rates.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "started": started,
        "rate": started / wall,
        "calls_per_1000": 1000 * calls / max(started, 1),
        "cpu_us": 1e6 * cpu / max(started, 1),
        "redis_us": 1e6 * redis_cpu / max(started, 1),
    }


def _row(metric: str, value: Any, unit: str = "", target: str = "", ok: bool | None = None):  # type: ignore[no-untyped-def]
    out = {"benchmark": "rate limiter", "metric": metric, "value": value, "unit": unit,
           "target": target}  # fmt: skip
    if ok is not None:
        out["ok"] = ok
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    """Bench rows (the environment -- namespace -- is the caller's)."""
    m = asyncio.run(_drive(QUICK_SECONDS if quick else SECONDS))
    return [
        _row(f"tasks started per second (limit {RATE:,.0f}/s)", round(m["rate"]), "tasks/s"),
        _row("Redis round trips per 1,000 tasks", round(m["calls_per_1000"], 1), "calls"),
        _row("processor CPU per task (refill loop + spending)", round(m["cpu_us"], 2), "us",
             f"< {TARGET_US:g}", m["cpu_us"] < TARGET_US),
        _row("Redis server CPU per task (whole server)", round(m["redis_us"], 2), "us"),
    ]  # fmt: skip


def main() -> None:
    """Run alone and print a table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_SECONDS:g} s, not {SECONDS:g}"
    )
    args = parser.parse_args()
    rows = run(args.quick)
    width = max(len(r["metric"]) for r in rows)
    for r in rows:
        print(f"{r['metric']:<{width}}  {r['value']!s:>10}  {r['unit']:<7} {r['target']}")


if __name__ == "__main__":
    main()
