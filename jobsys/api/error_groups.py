"""How failures are grouped (`jobsys tasks --by-error`): by exception type and the
message with what varies from task to task taken out.

Tasks that failed for one cause rarely share an error text: the message names
the file, the id, the address of an object, the value that was wrong. The
key of a group is the exception's type (when the processor reported one)
and the message normalised: URLs, quoted values, UUIDs, object addresses,
paths, long hex strings and numbers become placeholders, in that order, and
runs of spaces one space. "gave up after 5 deliveries: " is part of the
message (its number goes), so a task that failed at once and one that gave
up share a group only if their deliveries agree on everything else.
"""

from __future__ import annotations

import re

_UUID = r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b"
# (pattern, placeholder), applied in order: earlier ones swallow what later
# ones would cut into pieces (a path inside quotes is one quoted value).
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+"), "<url>"),
    (re.compile(r"'(?:[^'\\\n]|\\.)*'"), "'<…>'"),
    (re.compile(r'"(?:[^"\\\n]|\\.)*"'), '"<…>"'),
    (re.compile(_UUID), "<uuid>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<addr>"),
    (re.compile(r"(?<![\w.:/-])(?:~|\.{1,2})?(?:/[^\s/'\",:;()\[\]{}<>]+)+/?"), "<path>"),
    (re.compile(r"(?<![\w\\])[A-Za-z]:\\[^\s'\",;()\[\]{}<>]*"), "<path>"),
    (re.compile(r"\b[0-9a-fA-F]{16,}\b"), "<hex>"),
    (re.compile(r"(?<![\w.])[-+]?\d+(?:[.,_]\d+)*(?:\.\d+)?(?:[eE][-+]?\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
]


def normalise_message(text: str) -> str:
    """`text` with what varies between tasks of one cause replaced by placeholders."""
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return text.strip()


def error_key(error_type: str | None, error: str | None) -> str:
    """The group of a failure: its type (if known) and its normalised message,
    ``"KeyError | KeyError: '<…>'"``; a failure with no text is ``""``."""
    message = normalise_message(error or "")
    return f"{error_type} | {message}" if error_type else message
