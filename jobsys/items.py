"""Items files: JSON Lines, one JSON object per task.

Every line is checked (UTF-8, JSON, an object, not too long) and an error
names the file and line. Items are yielded as the exact JSON text given, so
payloads are stored byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobsys.errors import InvalidInput

# A single task payload larger than this is almost certainly a mistake (a
# whole file pasted into one line); it would also exceed sane message sizes.
MAX_ITEM_BYTES = 1_000_000


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_item(raw: bytes, where: str) -> str:
    """Validate one line; returns its JSON text. Raises InvalidInput naming `where`."""
    if len(raw) > MAX_ITEM_BYTES:
        raise InvalidInput(
            f"{where}: line is {len(raw):,} bytes, over the {MAX_ITEM_BYTES:,} limit"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{where}: not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InvalidInput(f"{where}: invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected a JSON object, got {type(value).__name__}")
    return text.strip()


def read_items(path: Path) -> Iterator[str]:
    """Yield each task's JSON text from a JSON Lines file; blank lines are skipped."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read items file: {exc.strerror}") from None
    count = 0
    with handle:
        for line_no, raw in enumerate(handle, start=1):
            stripped = raw.strip()
            if not stripped:
                continue
            yield parse_item(stripped, f"{path}:{line_no}")
            count += 1
    if count == 0:
        raise InvalidInput(f"{path}: items file has no items")


def counted_items(count: int) -> Iterator[str]:
    """`--count N`: N tasks ``{"n": i}``."""
    if count < 0:
        raise InvalidInput(f"--count must be 0 or more, got {count}")
    for i in range(count):
        yield f'{{"n": {i}}}'
