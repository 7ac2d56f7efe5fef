"""Rendering the console's pages: Jinja2 templates, autoescaped, every text shown literally.

Everything a person or a pipeline supplied (job names, errors, tracebacks,
payloads, event details) is text, never markup: the environment escapes
every value for HTML (``autoescape``), and `finalize` also makes control
characters visible (``\\x1b`` for ESC, ``\\u202e`` for a right-to-left
override) before it is escaped, so a name made of terminal escape codes or
of `<script>` reads as what it is. Only `markupsafe.Markup` values built
here (the charts) pass through as markup.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from jobsys.models import JobView
from jobsys.server.auth import CSRF_KEY, STATE_KEY
from jobsys.server.tokens import Principal, Scope

# Control characters (C0 but newline and tab, DEL, C1) and the invisible
# characters that reorder or hide text (zero-width, bidirectional overrides
# and isolates, the byte order mark).
_HIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_HIDDEN_ONE_LINE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]"
)
# The segments of a progress bar, in the order they are drawn.
SEGMENTS = ("done", "failed", "lost", "cancelled")
# A bar's drawing width (SVG user units; it is stretched to its box).
BAR_WIDTH = 1000


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with its control and invisible characters written as escapes (newlines
    and tabs kept, for multi-line texts such as tracebacks)."""
    return _HIDDEN.sub(_escape_char, text)


def one_line(text: Any) -> str:
    """`visible`, newlines and tabs escaped too (names in tables)."""
    return _HIDDEN_ONE_LINE.sub(_escape_char, "" if text is None else str(text))


def _finalize(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Markup):
        return value
    if isinstance(value, str):
        return visible(value)
    return value


def number(value: Any) -> str:
    """1234567 -> 1,234,567."""
    if value is None:
        return "—"
    return f"{int(value):,}"


def duration(seconds: Any) -> str:
    """Seconds as a short human duration: 42 s, 3 min 4 s, 2 h 05 min, 3 d 4 h."""
    if seconds is None or (isinstance(seconds, float) and not math.isfinite(seconds)):
        return "—"
    s = max(round(float(seconds)), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86_400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86_400} d {s % 86_400 // 3600} h"


def rate(per_s: Any) -> str:
    """Tasks per second, as people read it."""
    if not per_s:
        return "—"
    value = float(per_s)
    return f"{value:,.0f}/s" if value >= 10 else f"{value:.2g}/s"


def when(value: datetime | None) -> str:
    """A time in UTC, to the second."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def as_json(value: Any) -> str:
    """A value as indented JSON text (shown literally)."""
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True, default=str)


def bar(total: int, counts: Mapping[str, int]) -> list[tuple[str, float, float]]:
    """The segments of a progress bar: (kind, x, width) in BAR_WIDTH units; what is
    left of the width is pending."""
    parts: list[tuple[str, float, float]] = []
    x = 0.0
    for kind in SEGMENTS:
        width = BAR_WIDTH * counts.get(kind, 0) / total if total else 0.0
        parts.append((kind, round(x, 2), round(width, 2)))
        x += width
    return parts


def view_bar(view: JobView) -> list[tuple[str, float, float]]:
    """The progress bar of a job (a job of no task is drawn full, as done)."""
    if view.total == 0:
        return bar(1, {"done": 1})
    return bar(view.total, {k: getattr(view, k) for k in SEGMENTS})


ENV = Environment(
    loader=PackageLoader("jobsys.server.console", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    finalize=_finalize,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(
    number=number, duration=duration, rate=rate, when=when, as_json=as_json,
    one_line=one_line,
)  # fmt: skip
ENV.globals.update(view_bar=view_bar, BAR_WIDTH=BAR_WIDTH, Scope=Scope)


def context(request: Request) -> dict[str, Any]:
    """What every page's layout needs: who is signed in, the CSRF token, what they may do."""
    principal = getattr(request.state, STATE_KEY, None)
    who = principal if isinstance(principal, Principal) else None
    return {
        "who": who,
        "csrf": getattr(request.state, CSRF_KEY, None) or "",
        "can_submit": who is not None and who.grants(Scope.SUBMIT),
        "path": request.url.path,
    }


def page(
    request: Request,
    template: str,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    **values: Any,
) -> HTMLResponse:
    """A rendered page."""
    html = ENV.get_template(template).render({**context(request), **values})
    return HTMLResponse(html, status_code=status_code, headers=dict(headers or {}))


def error_page(
    status: int, kind: str, detail: str, path: str | None, headers: Mapping[str, str]
) -> Response:
    """A problem as an HTML page (the console's `PageRenderer`)."""
    html = ENV.get_template("error.html").render(
        who=None, csrf="", can_submit=False, path=path or "",
        status=status, title=HTTPStatus(status).phrase, kind=kind, detail=detail,
    )  # fmt: skip
    return HTMLResponse(html, status_code=status, headers=dict(headers))
