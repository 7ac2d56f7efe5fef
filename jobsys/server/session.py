"""Signing in to the web console: the token in an HttpOnly cookie, and the CSRF token
every change made with that cookie must carry.

A person signs in with an API token (`jobsys token create`); the console
keeps it in a cookie (HttpOnly: no script can read it; SameSite=Strict: no
other site's page or link sends it; Secure unless the server is reached
over plain HTTP on this machine, and then named with the ``__Host-`` prefix,
which browsers keep to this exact host, path ``/``, and never let a sibling
domain set: SECURE_COOKIE, else COOKIE). The cookie is accepted
only on console paths (`is_console_path`): never under ``/api/``, so an API
client is never authenticated by a cookie and cannot be made to act by
another site.

Every unsafe request (POST...) authenticated by the cookie must also carry
the CSRF token of that sign-in, in the header CSRF_HEADER (the console's
script) or the form field CSRF_FIELD (its forms), and must not come from
another site (``Sec-Fetch-Site``). The CSRF token is an HMAC of a fixed text
keyed with the API token: nothing is stored, it changes with the token, and
knowing it tells nothing of the token. `jobsys.server.auth.Authenticate`
checks it before any route runs.

Signing in itself is guarded by a double-submit pair: the sign-in page sets
SIGNIN_COOKIE to a random value and puts the same value in its form.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import Message, Receive

from jobsys.errors import JobsysError

COOKIE = "jobsys_token"
SECURE_COOKIE = "__Host-jobsys_token"
SIGNIN_COOKIE = "jobsys_signin"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
# How long a sign-in lasts (the cookie's Max-Age; never past the token's expiry).
SESSION_S = 12 * 3600
# How long the sign-in page's form may wait to be sent.
SIGNIN_FORM_S = 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A console form's body is small: a bigger one is refused before it is parsed.
MAX_FORM_BYTES = 64 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"
# Keys the CSRF token (HMAC-SHA256 keyed with the API token).
_CSRF_CONTEXT = b"jobsys console csrf v1"


class CsrfRefused(JobsysError):
    """A change made with the console's cookie without its CSRF token (HTTP 403)."""


def is_console_path(path: str) -> bool:
    """Whether the sign-in cookie may authenticate a request to `path`."""
    return not (path.startswith("/api/") or path == "/api" or path == "/openapi.json")


def cookie_value(headers: Headers, name: str) -> str | None:
    """A cookie of the request, if it was sent."""
    raw = headers.get("cookie")
    if not raw:
        return None
    return cookie_parser(raw).get(name) or None


def session_cookie(secure: bool) -> str:
    """The sign-in cookie's name: with the ``__Host-`` prefix when it is Secure."""
    return SECURE_COOKIE if secure else COOKIE


def signed_in_token(headers: Headers) -> str | None:
    """The token of the request's sign-in cookie, if it sent one."""
    return cookie_value(headers, SECURE_COOKIE) or cookie_value(headers, COOKIE)


def csrf_token(token: str) -> str:
    """The CSRF token of a sign-in with `token`."""
    return hmac.new(token.encode("utf-8"), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def new_signin_nonce() -> str:
    """The random value the sign-in page puts in both its cookie and its form."""
    return secrets.token_urlsafe(24)


def same_value(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two optional texts (False if either is missing)."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def cross_site(headers: Headers) -> bool:
    """Whether the browser says the request comes from another site's page."""
    return headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


def form_fields(body: bytes) -> dict[str, str]:
    """The fields of a URL-encoded form body (the first value of each)."""
    fields: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


async def read_small_body(receive: Receive, limit: int = MAX_FORM_BYTES) -> bytes:
    """A whole request body of at most `limit` bytes (CsrfRefused past it: a console
    form is never that big)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise CsrfRefused("the request ended before its form was read")
        body += message.get("body", b"")
        if len(body) > limit:
            raise CsrfRefused(f"a console form is at most {limit:,} bytes")
        if not message.get("more_body", False):
            return bytes(body)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app `body` (already read) first, then what follows."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def check_csrf(headers: Headers, receive: Receive, token: str) -> Receive:
    """Raise CsrfRefused unless a cookie-authenticated change carries the CSRF token of
    `token` and comes from the console's own pages; returns the `receive` the app
    reads the body from (a form's body is read here, then replayed)."""
    if cross_site(headers):
        raise CsrfRefused("a change from another site's page is refused")
    expected = csrf_token(token)
    presented = headers.get(CSRF_HEADER)
    if presented is None and headers.get("content-type", "").split(";")[0].strip() == FORM_TYPE:
        body = await read_small_body(receive)
        presented = form_fields(body).get(CSRF_FIELD)
        receive = replaying(body, receive)
    if not same_value(presented, expected):
        raise CsrfRefused("missing or wrong CSRF token: reload the page and try again")
    return receive


def wants_page(headers: Headers, path: str) -> bool:
    """Whether an error should be answered with an HTML page (a browser on a console
    path) rather than a problem document."""
    return is_console_path(path) and "text/html" in headers.get("accept", "")
