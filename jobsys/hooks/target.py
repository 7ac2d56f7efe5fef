"""Completion hook targets: what ``jobsys submit --on-complete TARGET`` may name.

TARGET is a Dramatiq actor (``module:actor``, allowed like a pipeline's
module) or an ``http://`` / ``https://`` URL with a host. `check_target` is
the one place that decides; it runs at submit and again before every send.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import dramatiq

from jobsys.display import redact
from jobsys.dramatiq.broker import setup_broker
from jobsys.errors import InvalidInput
from jobsys.pipelines.allow import check_reference

MAX_TARGET_CHARS = 2_000
# A DNS name: labels of letters, digits, "-" and "_" (service names), dot-separated.
_DNS_NAME = re.compile(r"^(?!-)[\w-]{1,63}(?<!-)(\.(?!-)[\w-]{1,63}(?<!-))*\.?$", re.ASCII)


@dataclass(frozen=True)
class HookTarget:
    """A validated hook target."""

    kind: Literal["actor", "http"]
    target: str
    actor_name: str | None = None
    queue_name: str | None = None

    @property
    def shown(self) -> str:
        """The target as people may see it: a URL's credentials redacted."""
        return redact(self.target) if self.kind == "http" else self.target


def _is_host(host: str) -> bool:
    """A DNS name (IDNA for non-ASCII) or an IP address; not `%00`, not `a b`."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return bool(_DNS_NAME.match(ascii_host))


def check_target(target: str) -> HookTarget:
    """Validate a hook target; the one place that decides what may be a target.

    Called at submit and again before every send. ``module:actor`` must be
    allowed like a pipeline's module (its module under JOBSYS_PIPELINE_MODULES,
    `jobsys.pipelines.allow.check_reference`; checked before it is imported), import
    (on the submitting host and on the workers) and name a Dramatiq actor; a
    URL must be http(s) with a host (a DNS name or an IP address). Raises
    InvalidInput with a one-line reason.
    """
    if not target or len(target) > MAX_TARGET_CHARS:
        raise InvalidInput(f"on-complete: must be 1 to {MAX_TARGET_CHARS:,} characters")
    if any(ord(c) < 32 or c.isspace() for c in target):
        raise InvalidInput("on-complete: must not contain spaces or control characters")
    if target.startswith(("http://", "https://")):
        try:
            url = urlsplit(target)
            url.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise InvalidInput(f"on-complete: invalid URL: {exc}") from None
        if not url.hostname:
            raise InvalidInput("on-complete: the URL has no host")
        if not _is_host(url.hostname):
            raise InvalidInput("on-complete: the URL's host is not a host name or IP address")
        return HookTarget("http", target)
    if "://" in target:
        raise InvalidInput("on-complete: a URL must be http:// or https://")
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidInput(f"on-complete: {target!r} is neither an http(s) URL nor module:actor")
    check_reference(target, "on-complete:")
    # The user's actor must be declared on jobsys's broker (same Redis and
    # namespace), so the message goes where the user's workers read.
    setup_broker()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput(f"on-complete: cannot import module {module_name!r}: {exc}") from None
    actor = getattr(module, attr, None)
    if not isinstance(actor, dramatiq.Actor):
        raise InvalidInput(f"on-complete: {module_name}.{attr} is not a Dramatiq actor")
    return HookTarget("actor", target, actor_name=actor.actor_name, queue_name=actor.queue_name)
