"""Token buckets in Redis, shared by every processor: the rate limits of jobs and pipelines.

Why Redis: every processor already talks to it (it is Dramatiq's broker) and
processors never reach Postgres; one Lua script takes tokens from several
buckets atomically, with the server's clock (`TIME`), so processors on
machines whose clocks disagree still share one rate. A bucket is a hash
``{tokens, at}`` that refills at `rate` per second up to `capacity` (the
burst) and expires once it would be full again: an idle limit costs nothing.

A caller asks for up to `want` tokens from all of a task's buckets at once
(the job's and its pipeline's) and gets what every one of them can give
(possibly 0) and, when that is 0, how many milliseconds until one could.
Tokens taken and not spent (a job cancelled meanwhile) are simply lost: the
rate is a ceiling, never exceeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis.asyncio as aioredis

from jobsys.credentials import redis_connection_kwargs
from jobsys.dramatiq.broker import SOCKET_CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S
from jobsys.settings import Settings

# KEYS: the buckets; ARGV[1]: tokens wanted; then per bucket its rate (per
# second) and capacity. Returns {granted, ms until a token if none granted}.
TAKE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local grant = tonumber(ARGV[1])
local levels = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i])
  local cap = tonumber(ARGV[2 * i + 1])
  local v = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(v[1]) or cap
  local at = tonumber(v[2]) or now
  if now > at then tokens = math.min(cap, tokens + (now - at) * rate / 1000) end
  levels[i] = tokens
  local whole = math.floor(tokens)
  if whole < grant then grant = whole end
end
if grant < 0 then grant = 0 end
local wait = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i])
  local cap = tonumber(ARGV[2 * i + 1])
  local left = levels[i] - grant
  redis.call('HSET', key, 'tokens', tostring(left), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(cap * 1000 / rate) + 1000)
  if grant == 0 and left < 1 then
    local need = (1 - left) * 1000 / rate
    if need > wait then wait = need end
  end
end
return {grant, math.ceil(wait)}
"""


@dataclass(frozen=True)
class Bucket:
    """One limit: its Redis key, its rate (tokens per second) and its burst."""

    key: str
    rate: float
    capacity: int


def bucket(settings: Settings, kind: str, name: str, rate: float) -> Bucket:
    """The bucket of a limit of `rate` per second on `kind` ("job" or "pipeline")
    `name`, in this deployment's namespace; its burst is JOBSYS_RATE_BURST_S of
    rate, at least one token."""
    capacity = max(1, math.floor(rate * settings.rate_burst_s))
    return Bucket(f"{settings.namespace}-rate:{kind}:{name}", rate, capacity)


class RateBuckets:
    """Takes tokens from shared buckets (one Redis connection pool per process)."""

    def __init__(self, settings: Settings) -> None:
        self._redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_S,
            **redis_connection_kwargs(settings),
        )
        self._take = self._redis.register_script(TAKE_LUA)

    async def take(self, buckets: list[Bucket], want: int) -> tuple[int, float]:
        """Up to `want` tokens from every one of `buckets` at once: (granted, seconds
        until one could be granted when none was)."""
        args: list[float | int] = [want]
        for b in buckets:
            args += [b.rate, b.capacity]
        granted, wait_ms = await self._take(keys=[b.key for b in buckets], args=args)
        return int(granted), int(wait_ms) / 1000

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
