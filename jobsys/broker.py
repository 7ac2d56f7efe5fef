"""Dramatiq's Redis broker, configured from settings.

Redis is only the transport: nothing in it is needed to know a job's state.
`heartbeat_timeout` and `maintenance_chance` default low/high so the messages
a killed worker held come back in seconds, not the minutes Dramatiq's
defaults take (DESIGN.md, "Facts measured").
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from jobsys.settings import Settings, get_settings

RESULTS_QUEUE = "results"
CONTROL_QUEUE = "control"


def make_broker(settings: Settings | None = None) -> RedisBroker:
    """A Redis broker in this deployment's namespace."""
    settings = settings or get_settings()
    return RedisBroker(
        url=settings.redis_url,
        namespace=settings.dramatiq_namespace,
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        maintenance_chance=settings.maintenance_chance,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=15,
    )


def setup_broker() -> dramatiq.Broker:
    """Install the jobsys broker as Dramatiq's global broker (once per process)."""
    current = dramatiq.get_broker() if _has_global_broker() else None
    if isinstance(current, RedisBroker) and getattr(current, "_jobsys", False):
        return current
    broker = make_broker()
    broker._jobsys = True  # type: ignore[attr-defined]
    dramatiq.set_broker(broker)
    return broker


def _has_global_broker() -> bool:
    import dramatiq.broker as b

    return b.global_broker is not None
