"""How jobsys shows what it says to people: one line per error, no credential in any URL,
no character a terminal would act on.

Pure text functions, used wherever something is printed or logged (the CLI,
the structured log, `jobsys doctor`, the dev tooling), so all of them show a
failure the same way, never a password or a token, and anything a person
supplied (a job name, an error, a payload) escaped where it holds control
characters: a job named ``$'a\\e[2J'`` must not clear the screen of whoever
lists jobs.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

# An error line longer than this is cut: the output promises one line per service.
MAX_LINE = 160

# The user part of a URL: up to its last '@' before the path (a password may
# hold an unescaped '@'); a comma ends it (NATS takes several URLs in one setting).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s,]*)@")
# user:password@host where the scheme is missing or mistyped ("postgresql//u:p@h",
# which libpq quotes back in its error).
_BARE_USERINFO = re.compile(r"(?<![\w:])([\w.+-]+):([^\s@/\"',:]+)@(?=[\w.\[-])")
# In a NATS URL, a user part without ':' is a token (nats://TOKEN@host), not a
# name; so it is in an http(s) URL (https://TOKEN@host: a hook target).
_TOKEN_SCHEMES = {"nats", "tls", "ws", "wss", "http", "https"}
# The names a secret goes by in a URL's query (?token=..., ?api_key=...,
# ?X-Amz-Signature=...) or a libpq key=value conninfo word (password='a b';
# quoted values may hold spaces): one of these words, alone or as the last
# part of a name joined by '_' or '-' (access_token, client-secret).
SECRET_NAMES = (
    "password", "passwd", "pwd", "pass", "secret", "token", "key", "apikey", "auth",
    "authorization", "signature", "sig", "credential", "credentials", "session", "sessionid",
)  # fmt: skip
_SECRET_PARAM = re.compile(
    r"(?i)(?<![\w.-])((?:[\w-]*[_-])?(?:ssl)?(?:" + "|".join(SECRET_NAMES) + r"))="
    r"('(?:[^'\\]|\\.)*'|[^\s&;,#]*)"
)

# An API token (jobsys.server.tokens: "jst_" and 43 URL-safe characters), or
# any bearer credential of 16 characters or more, wherever a line quotes one
# (a token pasted into a URL, a header dumped by a library).
_API_TOKEN = re.compile(r"\bjst_[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{16,}")


# What a terminal acts on rather than shows: C0 controls (ESC starts colour
# and cursor sequences, CR rewrites the line, BS erases), DEL, C1 controls
# (U+009B is a one-character CSI to some terminals) and the bidirectional
# marks, embeddings, overrides and isolates that reorder the text around them.
# Lone surrogates (bytes that were not UTF-8, as Python decodes a command
# line) cannot even be written to a UTF-8 terminal.
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str) -> str:
    """`text` with every character a terminal would act on written as an escape
    (``\\x1b``, ``\\n``, ``\\u202e``), the rest as it is; for anything a
    person supplied, in every table and text line jobsys prints or logs."""
    return _UNPRINTABLE.sub(_escaped, text)


# JSON leaves DEL, the C1 controls and the bidi characters raw (`json.dumps`
# with ensure_ascii=False escapes only those below U+0020).
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe_json(text: str) -> str:
    """JSON text with the characters JSON leaves raw that a terminal acts on written
    as ``\\uXXXX`` escapes: the same JSON value, safe to print."""
    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def one_line(exc: BaseException | str, limit: int = MAX_LINE) -> str:
    """The first line of an error (or text), cut short, redacted and printable; a
    timeout reads "timed out". Client libraries may quote the URL they were given
    (libpq does)."""
    if isinstance(exc, TimeoutError) and not str(exc).strip():
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    line = printable(redact(text.splitlines()[0].strip()))
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _hide_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match["scheme"], match["userinfo"]
    user, colon, _ = userinfo.partition(":")
    if colon:
        return f"{scheme}{user}:***@"
    if scheme[:-3].lower() in _TOKEN_SCHEMES:
        return f"{scheme}***@"
    return match.group(0)  # a user name alone (postgresql://postgres@host) is no secret


def redact(url: str) -> str:
    """The URL (or comma-separated URLs, a libpq conninfo, a line quoting them) with
    every password and token hidden (API tokens and bearer credentials too), for printing."""
    text = _BARE_USERINFO.sub(r"\1:***@", _USERINFO.sub(_hide_userinfo, url))
    text = _SECRET_PARAM.sub(r"\1=***", text)
    return _BEARER.sub(r"\1 ***", _API_TOKEN.sub("jst_***", text))


def nats_servers(url: str) -> list[str]:
    """The servers of a NATS URL setting: one URL, or several separated by commas."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    return servers or [url]


def host_port(url: str, default_port: int) -> tuple[str, int]:
    """Host and port of a URL (the first of several); a Postgres socket dir (``?host=/dir``)
    is the host."""
    parts = urlsplit(nats_servers(url)[0])
    host = parts.hostname or ""
    # libpq lets a ``host`` query parameter override the URL's host.
    for item in parts.query.split("&"):
        name, _, value = item.partition("=")
        if name == "host":
            host = unquote(value)
    return host, parts.port or default_port
