"""Connecting to NATS: one long-lived connection per process, credentials and TLS
from the settings (jobsys.credentials)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from jobsys.credentials import AccessSettingError
from jobsys.display import one_line, redact
from jobsys.errors import ServiceUnavailable
from jobsys.nats.access import open_nats, refused_for_good
from jobsys.settings import Settings, get_settings

log = logging.getLogger(__name__)


async def connect(
    url: str | None = None,
    name: str = "jobsys",
    settings: Settings | None = None,
    reconnected: Callable[[], object] | None = None,
) -> NATS:
    """A connection that reconnects forever, with the credentials and TLS of the settings
    (jobsys.credentials). While no server answers at first it keeps trying; credentials
    or TLS that a server refuses raise ServiceUnavailable at once (retrying cannot help).
    `reconnected` is called each time the connection is back after a loss."""
    settings = settings or get_settings()
    url = url or settings.nats_url

    # Say once that NATS went away and once that it came back; the client's
    # errors while reconnecting (one per attempt) are debug noise.
    down = False
    connecting = True

    async def on_error(exc: Exception) -> None:
        if connecting and refused_for_good(exc):
            # Raised out of nats-py's first-connect loop, which would retry for ever.
            raise ServiceUnavailable(f"NATS at {redact(url)} refused us: {one_line(exc)}")
        level = logging.DEBUG if down else logging.WARNING
        log.log(level, "nats error", extra={"error": redact(repr(exc))})

    async def on_disconnect() -> None:
        nonlocal down
        if not down:
            log.info("nats disconnected")
        down = True

    async def on_reconnect() -> None:
        nonlocal down
        down = False
        log.info("nats reconnected")
        if reconnected is not None:
            reconnected()

    try:
        nc = await open_nats(
            url,
            settings,
            name=name,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
    except (ServiceUnavailable, AccessSettingError):
        raise
    except Exception as exc:
        raise ServiceUnavailable(
            f"NATS not reachable at {redact(url)} ({exc.__class__.__name__}); run `make services`"
        ) from None
    connecting = False
    return nc


def jetstream(nc: NATS, settings: Settings | None = None) -> JetStreamContext:
    """A JetStream context whose async publish window is the configured one."""
    settings = settings or get_settings()
    return nc.jetstream(timeout=10, publish_async_max_pending=settings.publish_window)
