"""What a task's outcome must be to be stored: JSON Postgres accepts, a bounded error text.

Checked where a result is produced (the processor) and again where it is
recorded (the worker), so that neither a pipeline's odd value nor a sender of
an older version can make Postgres refuse a whole result batch. Each function
turns a bad value into that one task's failure, with a reason that says why.
"""

from __future__ import annotations

import json
from typing import Any

# Error texts are cut to this many characters (a traceback's head says what
# went wrong; the rest would only bloat the ledger and every batch).
MAX_ERROR_CHARS = 4_000
_CUT_MARK = " ... [cut: {n:,} characters in all]"
# Strict JSON; ensure_ascii: every non-ASCII character (lone surrogates too)
# becomes an escape, so the text is valid UTF-8 whatever the strings held.
# One encoder for all calls: json.dumps with options builds a new one each time.
_STRICT_JSON = json.JSONEncoder(allow_nan=False, ensure_ascii=True)


def storable_text(value: str) -> str:
    """`value` if a text column can hold it as given (a name, a search text), else
    ValueError saying why: no NUL, no lone surrogate (bytes that were not UTF-8,
    as the command line hands them over)."""
    if "\x00" in value:
        raise ValueError("NUL characters cannot be stored")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text") from None
    return value


def storable_error(text: object) -> str:
    """An error text Postgres can store: NUL escaped, lone surrogates escaped, cut to
    MAX_ERROR_CHARS; never empty."""
    value = str(text) if text is not None else ""
    # text columns cannot hold U+0000, and a lone surrogate is not UTF-8.
    value = value.replace("\x00", "\\x00")
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if not value:
        return "failed (no message)"
    if len(value) > MAX_ERROR_CHARS:
        mark = _CUT_MARK.format(n=len(value))
        value = value[: MAX_ERROR_CHARS - len(mark)] + mark
    return value


# A failed task's traceback is kept cut to its last this many characters
# (the innermost frames, where it was raised, are at the end).
MAX_TRACE_CHARS = 4_000
_TRACE_CUT_MARK = "[cut: {n:,} characters in all] ...\n"


def storable_trace(text: str) -> str:
    """A traceback Postgres can store: as `storable_error`, but cut from the start
    (the frame that raised is the last line), to MAX_TRACE_CHARS."""
    value = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    if len(value) > MAX_TRACE_CHARS:
        mark = _TRACE_CUT_MARK.format(n=len(value))
        value = mark + value[len(value) - (MAX_TRACE_CHARS - len(mark)) :]
    return value


def encode_result(value: Any, max_bytes: int) -> tuple[str | None, str | None]:
    """(JSON text, None) if `value` can be stored as the task's result, else (None, reason).

    A result must be a JSON object of strict JSON: NaN and Infinity, which
    Python's json writes but Postgres's json refuses, are a failure of this
    task; so is a value json cannot write, and one over `max_bytes`.
    """
    if not isinstance(value, dict):
        return None, f"pipeline returned {type(value).__name__}, not a JSON object"
    try:
        text = _STRICT_JSON.encode(value)
    except ValueError as exc:
        # NaN/Infinity ("Out of range float values"), or a circular reference.
        hint = " (NaN or Infinity)" if "float" in str(exc) else ""
        return None, storable_error(f"result is not storable as JSON: {exc}{hint}")
    except (TypeError, RecursionError) as exc:
        return None, storable_error(f"result is not storable as JSON: {exc}")
    if len(text) > max_bytes:
        return None, f"result of {len(text):,} bytes exceeds the {max_bytes:,} byte limit"
    return text, None
