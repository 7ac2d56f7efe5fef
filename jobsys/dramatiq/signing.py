"""Signed messages between processes: an HMAC over what a message asks a worker to do.

Anyone who can reach Redis can enqueue a Dramatiq message. A worker acts only
on messages signed with the deployment's shared secret (`JOBSYS_SECRET`):
`jobsys.dramatiq.messages` signs every message it sends, and the worker's
`VerifySignatures` middleware (jobsys.worker.verify) records and drops
anything unsigned or wrongly signed before an actor sees it. During a rotation the previous secret
(`JOBSYS_SECRET_PREVIOUS`) is accepted too.

What is signed is the actor's name and its arguments, not the message id or
timestamp: Dramatiq re-enqueues a message under a new id when it retries or
moves it between queues, and replaying a genuine message is harmless (every
actor is idempotent). The signature travels in the message's options.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

import dramatiq

from jobsys import jsontext
from jobsys.errors import JobsysError
from jobsys.settings import Settings, get_settings

log = logging.getLogger(__name__)

# The message option that carries the signature.
SIGNATURE_OPTION = "jobsys_sig"
HOW_TO_SET = (
    "set JOBSYS_SECRET to the same random value on every machine of the deployment, in the "
    "environment or an env file such as ~/.config/jobsys/env (e.g. `echo "
    "JOBSYS_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))') "
    ">> ~/.config/jobsys/env`; `make services` writes one to ./.jobsys.env for a local setup)"
)


class SecretMissing(JobsysError):
    """JOBSYS_SECRET is not set, so messages can be neither signed nor checked."""

    def __init__(self) -> None:
        super().__init__(f"JOBSYS_SECRET is not set: {HOW_TO_SET}")


def require_secret(settings: Settings | None = None) -> bytes:
    """The signing key; raises SecretMissing (one line saying how to set it) if unset."""
    s = settings or get_settings()
    if s.secret is None or not s.secret.get_secret_value():
        raise SecretMissing()
    return s.secret.get_secret_value().encode("utf-8")


def _canonical(actor_name: str, args: Any, kwargs: Any) -> bytes:
    # The same bytes on both sides: keys sorted, tuples and lists alike, and
    # floats as Python writes them (a Dramatiq round trip keeps them exact).
    # json's bytes exactly (orjson only where it agrees, jobsys.jsontext): a
    # process of another version computes the same canonical form.
    return jsontext.dumps([actor_name, args, kwargs], sort_keys=True, default=str)


def signature(key: bytes, actor_name: str, args: Any, kwargs: Any) -> str:
    """The hex HMAC-SHA256 of a message's actor name and arguments."""
    return hmac.new(key, _canonical(actor_name, args, kwargs), hashlib.sha256).hexdigest()


def verify(message: dramatiq.Message[Any], settings: Settings | None = None) -> str | None:
    """None if `message` is signed with the current or previous secret, else why not."""
    s = settings or get_settings()
    sig = message.options.get(SIGNATURE_OPTION)
    if not isinstance(sig, str) or not sig:
        return "unsigned"
    keys = [s.secret, s.secret_previous]
    for key in keys:
        if key is None or not key.get_secret_value():
            continue
        want = signature(
            key.get_secret_value().encode("utf-8"),
            message.actor_name,
            message.args,
            message.kwargs,
        )
        if hmac.compare_digest(want, sig):
            return None
    return "wrong signature"
