"""Task statuses as callers name them: comma text from the CLI, lists from Python.

Python callers give several statuses as a list (``statuses=["failed",
"cancelled"]``); a bare string there is refused with one line, never read
letter by letter. The CLI's ``--status failed,lost`` is parsed here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from jobsys.errors import InvalidInput

TASK_STATUSES = ("pending", "done", "failed", "lost", "cancelled")


def _checked(names: Sequence[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    bad = [n for n in names if n not in allowed or n == "all"]
    if not names or bad:
        shown = ", ".join(bad) or "nothing"
        raise InvalidInput(f"{what}: {shown} is not one of {', '.join(allowed)}")
    return tuple(dict.fromkeys(names))


def parse_statuses(text: str, allowed: Sequence[str] = TASK_STATUSES) -> tuple[str, ...] | None:
    """``"failed,lost"`` (a CLI option) -> ("failed", "lost"); ``"all"`` -> None (every
    status) when `allowed` has it."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if names == ["all"] and "all" in allowed:
        return None
    return _checked(names, allowed, "status")


def status_list(
    value: Iterable[str], allowed: Sequence[str] = TASK_STATUSES, what: str = "statuses"
) -> tuple[str, ...]:
    """A Python caller's list (or tuple, set) of statuses, checked; a string is refused."""
    if isinstance(value, str | bytes):
        text = value.decode() if isinstance(value, bytes) else value
        example = [p.strip() for p in text.split(",") if p.strip()] or ["failed"]
        raise InvalidInput(f"{what}: give a list, e.g. {example!r}, not the string {text!r}")
    try:
        names = list(value)
    except TypeError:
        raise InvalidInput(f"{what}: give a list of statuses, not {value!r}") from None
    if not all(isinstance(n, str) for n in names):
        raise InvalidInput(f"{what}: every status is a string, got {names!r}")
    return _checked(names, allowed, what)


def one_or_more(
    value: str | Iterable[str] | None, allowed: Sequence[str] = TASK_STATUSES
) -> tuple[str, ...] | None:
    """`status=` of `results`: one status name, "all" or None (every status), or a list."""
    if value is None or value == "all":
        return None
    if isinstance(value, str):
        if value not in allowed:
            hint = "; for several, give a list" if "," in value else ""
            raise InvalidInput(
                f"status: {value!r} is not one of {', '.join(allowed)} or 'all'{hint}"
            )
        return (value,)
    return status_list(value, allowed, "status")
