"""Credentials and TLS of jobsys's connections to NATS, from settings.

Every NATS connection jobsys opens goes through `open_nats`: the URL may
carry a user and password or a token (`nats://user:pass@host`,
`nats://TOKEN@host`), JOBSYS_NATS_CREDS / JOBSYS_NATS_NKEY name a `.creds`
file or an nkey seed file, and a `tls://` URL gets a TLS context built from
JOBSYS_NATS_TLS_CA (and a client certificate from JOBSYS_NATS_TLS_CERT/_KEY).

nats-py upgrades to TLS only when the server's greeting asks for it, even for
a `tls://` URL: a server (or a man in the middle) that does not would get the
credentials in plaintext. `GuardedClient` refuses to send them then.

`describe_nats` says in one line (redacted) how a connection authenticates,
for `jobsys doctor`.
See docs/security.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any
from urllib.parse import unquote, urlsplit

from nats import errors as nats_errors
from nats.aio.client import Client as NATS

from jobsys.credentials import AccessSettingError, readable
from jobsys.display import nats_servers
from jobsys.settings import Settings

# How long closing a connection whose first connect failed may take.
CLOSE_TIMEOUT_S = 2.0


class TlsNotOffered(nats_errors.Error):
    """The server of a tls:// URL did not start TLS; nothing was sent to it."""

    def __str__(self) -> str:
        return "nats: the server of a tls:// URL did not start TLS; credentials not sent"


def nats_wants_tls(url: str) -> bool:
    """Whether any server of the NATS URL setting is a tls:// one."""
    return any(urlsplit(s).scheme == "tls" for s in nats_servers(url))


def nats_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for NATS, or None when neither the URL nor a setting asks for TLS."""
    ca = readable("JOBSYS_NATS_TLS_CA", settings.nats_tls_ca)
    cert = readable("JOBSYS_NATS_TLS_CERT", settings.nats_tls_cert)
    key = readable("JOBSYS_NATS_TLS_KEY", settings.nats_tls_key)
    if not (nats_wants_tls(settings.nats_url) or ca or cert):
        return None
    try:
        context = ssl.create_default_context(cafile=ca)
    except ssl.SSLError as exc:
        raise AccessSettingError(f"JOBSYS_NATS_TLS_CA: {ca} is not a CA file ({exc})") from None
    if cert:
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise AccessSettingError(
                f"JOBSYS_NATS_TLS_CERT/_KEY: {cert} is not a certificate and key ({exc})"
            ) from None
    return context


def nats_connect_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of nats-py's connect for the credentials and TLS in `settings`."""
    options: dict[str, Any] = {}
    context = nats_tls_context(settings)
    if context is not None:
        options["tls"] = context
    creds = readable("JOBSYS_NATS_CREDS", settings.nats_creds)
    nkey = readable("JOBSYS_NATS_NKEY", settings.nats_nkey)
    if creds and nkey:
        raise AccessSettingError("set JOBSYS_NATS_CREDS or JOBSYS_NATS_NKEY, not both")
    if creds:
        options["user_credentials"] = creds
    if nkey:
        options["nkeys_seed"] = nkey
    return options


def _transport_is_tls(nc: NATS) -> bool:
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    return writer is not None and writer.get_extra_info("ssl_object") is not None


class GuardedClient(NATS):
    """nats-py's client, except that it never sends its CONNECT (credentials) in
    plaintext to the server of a tls:// URL, and survives a PONG that comes after
    its flush gave up."""

    def _connect_command(self) -> bytes:
        server = self._current_server
        if server is not None and server.uri.scheme == "tls" and not _transport_is_tls(self):
            raise TlsNotOffered()
        return super()._connect_command()

    async def _process_pong(self) -> None:
        # Each PONG answers the oldest PING. nats-py (2.16) resolves that PING's
        # waiter even when a flush() that timed out had cancelled it; the
        # InvalidStateError ends its read loop without a word, and the
        # connection then looks up and never reads again: every request times
        # out for ever. That happened to a worker frozen (SIGSTOP) for 70 s
        # during a flush. A cancelled waiter is only dropped here.
        if self._pongs and self._pongs[0].done():
            self._pongs.pop(0)
            self._pongs_received += 1
            self._pings_outstanding = 0
            return
        await super()._process_pong()


async def open_nats(url: str, settings: Settings, **options: Any) -> NATS:
    """A NATS connection to the servers of `url` with the credentials and TLS of
    `settings`; `options` are nats-py's other connect options."""
    connect_options = nats_connect_options(settings)
    nc = GuardedClient()
    try:
        await nc.connect(servers=nats_servers(url), **connect_options, **options)
    except BaseException:
        # A failed first connect may leave its socket and tasks behind. Bounded:
        # nats-py's close can hang on a transport whose TLS handshake failed.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT_S)
        raise
    return nc


def refused_for_good(exc: BaseException) -> bool:
    """Whether a connection error will not go away by retrying (credentials refused,
    TLS refused or unverifiable): a first connection should fail at once."""
    if isinstance(exc, TlsNotOffered | ssl.SSLError | nats_errors.AuthorizationError):
        return True
    # Not "Authentication Timeout": a slow login on a loaded machine may succeed next time.
    text = str(exc).lower()
    return any(s in text for s in ("authorization violation", "authentication expired",
                                   "authentication revoked"))  # fmt: skip


def _who(url: str) -> str:
    parts = urlsplit(nats_servers(url)[0])
    if parts.username and parts.password is not None:
        return f"user {unquote(parts.username)} with a password"
    if parts.username:
        return "a token"
    return ""


def describe_nats(settings: Settings) -> tuple[bool, str]:
    """(fine, one line): how NATS connections authenticate and whether they use TLS."""
    url = settings.nats_url
    try:
        nats_connect_options(settings)
    except AccessSettingError as exc:
        return False, str(exc)
    tls = nats_wants_tls(url)
    if not tls and (settings.nats_tls_ca or settings.nats_tls_cert):
        return False, (
            "JOBSYS_NATS_TLS_* is set but JOBSYS_NATS_URL is not tls://: "
            "connections may be plaintext; use tls:// URLs"
        )
    if settings.nats_creds:
        who = f"credentials file {settings.nats_creds}"
    elif settings.nats_nkey:
        who = f"nkey seed file {settings.nats_nkey}"
    else:
        who = _who(url) or "no credentials"
    if tls:
        ca = f"CA {settings.nats_tls_ca}" if settings.nats_tls_ca else "system CAs"
        cert = ", client certificate" if settings.nats_tls_cert else ""
        how = f"TLS ({ca}{cert})"
    else:
        how = "plaintext (no TLS)"
    return True, f"{how}; {who}"
