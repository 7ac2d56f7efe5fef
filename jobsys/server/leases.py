"""Lease handles: what a remote processor holds for each task it leased, and cannot forge.

A handle names one delivered task message: its job, its task number and the
message's reply (ack) subject, which names the stream sequence where the
message sits (jobsys.nats.subjects). It is that text, base64url, then a
keyed BLAKE2b MAC over it with the server's secret (JOBSYS_SECRET; the
previous secret is still accepted while a rotation rolls out). A remote
processor reports a task's outcome by its handle, so it can only ever name a
message the gateway leased to someone: a handle edited to point at another
task or sequence, or made up, fails the MAC and that report item is refused
alone.

A handle stays valid after its lease lapsed and after the server restarted
(it carries everything a report needs): a late report for a task still
pending counts once, through the same binding and ledger as a native
processor's result (jobsys.recording).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from jobsys.nats.subjects import parse_ack_subject

# The MAC's size (bytes) and its domain (no other jobsys signature can be a handle's).
MAC_BYTES = 16
PERSON = b"jobsys-lease-v1"
# A handle is at most this long (the reply subject is at most ~200 characters).
MAX_HANDLE_CHARS = 600


class BadHandle(ValueError):
    """A handle that is not one this server (or its secret) made."""


@dataclass(frozen=True)
class Handle:
    """What a lease handle names."""

    job_id: int
    task_no: int
    reply: str

    @property
    def delivered(self) -> int:
        """The delivery this message is (from its reply subject; 1 if unknown)."""
        ack = parse_ack_subject(self.reply)
        return ack.delivered if ack is not None else 1

    @property
    def stream_seq(self) -> int | None:
        """Where the message sits in its job's stream."""
        ack = parse_ack_subject(self.reply)
        return ack.stream_seq if ack is not None else None


def _key(secret: bytes) -> bytes:
    # BLAKE2b keys are at most 64 bytes; a longer secret is hashed down first.
    return secret if len(secret) <= 64 else hashlib.blake2b(secret).digest()


def _mac(secret: bytes, body: bytes) -> bytes:
    return hashlib.blake2b(body, key=_key(secret), digest_size=MAC_BYTES, person=PERSON).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_handle(secret: bytes, handle: Handle) -> str:
    """The opaque text a remote processor holds for `handle`."""
    body = f"{handle.job_id}:{handle.task_no}:{handle.reply}".encode()
    return f"{_b64(body)}.{_b64(_mac(secret, body))}"


def read_handle(secrets: list[bytes], text: str) -> Handle:
    """What `text` names, if one of `secrets` made it; raises BadHandle."""
    if not isinstance(text, str) or len(text) > MAX_HANDLE_CHARS or text.count(".") < 1:
        raise BadHandle("not a lease handle")
    body_b64, _, mac_b64 = text.rpartition(".")
    try:
        body, mac = _unb64(body_b64), _unb64(mac_b64)
    except (binascii.Error, ValueError):
        raise BadHandle("not a lease handle") from None
    if not any(hmac.compare_digest(_mac(s, body), mac) for s in secrets):
        raise BadHandle("lease handle not made by this server (forged or altered)")
    job, _, rest = body.decode("utf-8", "replace").partition(":")
    task, _, reply = rest.partition(":")
    if not job.isdigit() or not task.isdigit() or parse_ack_subject(reply) is None:
        raise BadHandle("not a lease handle")
    return Handle(int(job), int(task), reply)
