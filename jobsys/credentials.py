"""Credentials and TLS of jobsys's connections, from settings: what they share, and Redis.

Redis takes its user, password and `rediss://` in the URL; JOBSYS_REDIS_TLS_*
add a CA and a client certificate. `describe_redis` says in one line
(redacted) how a connection authenticates, for `jobsys doctor`. NATS's are in
jobsys.nats.access. See docs/security.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from jobsys.errors import JobsysError
from jobsys.settings import Settings


class AccessSettingError(JobsysError):
    """A credentials or TLS setting names a file that cannot be used."""


def readable(setting: str, path: Path | None) -> str | None:
    """The path as text if the file can be read, else AccessSettingError naming the setting."""
    if path is None:
        return None
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise AccessSettingError(
            f"{setting}: cannot read {path} ({exc.strerror or type(exc).__name__})"
        ) from None
    return str(path)


# -- Redis -------------------------------------------------------------------


def redis_wants_tls(url: str) -> bool:
    """Whether the Redis URL is a rediss:// one."""
    return urlsplit(url).scheme == "rediss"


def redis_connection_kwargs(settings: Settings) -> dict[str, Any]:
    """redis-py connection keyword arguments for the TLS files in `settings`
    (only for rediss://: a plain connection takes none)."""
    if not redis_wants_tls(settings.redis_url):
        return {}
    files = {
        "ssl_ca_certs": readable("JOBSYS_REDIS_TLS_CA", settings.redis_tls_ca),
        "ssl_certfile": readable("JOBSYS_REDIS_TLS_CERT", settings.redis_tls_cert),
        "ssl_keyfile": readable("JOBSYS_REDIS_TLS_KEY", settings.redis_tls_key),
    }
    return {name: path for name, path in files.items() if path}


def describe_redis(settings: Settings) -> tuple[bool, str]:
    """(fine, one line): how Redis connections authenticate and whether they use TLS."""
    url = settings.redis_url
    tls = redis_wants_tls(url)
    if not tls and (settings.redis_tls_ca or settings.redis_tls_cert):
        return False, (
            "JOBSYS_REDIS_TLS_* is set but JOBSYS_REDIS_URL is not rediss://: "
            "connections are plaintext; use rediss://"
        )
    try:
        redis_connection_kwargs(settings)
    except AccessSettingError as exc:
        return False, str(exc)
    parts = urlsplit(url)
    if parts.password is not None:
        user = unquote(parts.username or "") or "default"
        who = f"user {user} with a password"
    else:
        who = "no credentials"
    if tls:
        ca = f"CA {settings.redis_tls_ca}" if settings.redis_tls_ca else "system CAs"
        cert = ", client certificate" if settings.redis_tls_cert else ""
        how = f"TLS ({ca}{cert})"
    else:
        how = "plaintext (no TLS)"
    return True, f"{how}; {who}"
