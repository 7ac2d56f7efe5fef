"""Items: task payloads, one JSON object each, checked where they enter jobsys.

Every item is checked before anything is written: valid UTF-8, JSON, an
object, at most MAX_ITEM_BYTES, nested at most MAX_ITEM_DEPTH levels, and
small enough for the NATS server's `max_payload` once it is a task message.
An error names the item: ``file:line`` for an items file (JSON Lines),
``item N`` for texts given to `jobsys.submit` directly. Items keep the exact
JSON text given, so payloads are stored byte for byte.

Items files are read with a bounded buffer: a line longer than the item
limit is refused after at most MAX_ITEM_BYTES + 2 bytes of it were held, so
submit's memory does not depend on how long a line is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import IO, Any

from jobsys.display import redact
from jobsys.errors import InvalidInput
from jobsys.nats.access import open_nats
from jobsys.settings import get_settings

log = logging.getLogger(__name__)

# A single task payload larger than this is almost certainly a mistake (a
# whole file pasted into one line); it would also exceed sane message sizes.
MAX_ITEM_BYTES = 1_000_000
# Deepest nesting of objects/arrays in an item. Python's json stops at about
# 1,000 levels *including the stack of whoever calls it*, and a payload
# travels deeper than it was given (inside a result batch, a Dramatiq
# message, a pipeline's own calls): 100 leaves all of them ample room and is
# far beyond any real payload.
MAX_ITEM_DEPTH = 100
# Bytes of a task message that are not the item: the NATS headers the
# publisher adds (`Nats-Msg-Id: <job>:<task>` is ~40 bytes on the wire) with
# room for a few more, since the server's `max_payload` counts headers too.
MESSAGE_HEADROOM = 512
# How long submit waits to connect to NATS to learn its `max_payload`.
MAX_PAYLOAD_TIMEOUT_S = 3.0
# A server's max_payload, once asked, is trusted this long: submits in a row
# open no NATS connection each (a server's limit changes only on a restart
# with another configuration; a wrong guess is still caught at bootstrap,
# which fails the task whose message the server refuses).
MAX_PAYLOAD_CACHE_S = 60.0

# `--items -` and items_of("-"): standard input, named so in errors.
STDIN = "-"
STDIN_NAME = "<stdin>"
# What `jobsys.submit` takes as its items.
Items = Iterable[Mapping[str, Any] | str | bytes] | str | os.PathLike[str]

# Room for the line's own "\r\n" on top of the biggest item a line may hold.
_LINE_READ_LIMIT = MAX_ITEM_BYTES + 2
# Chunk size for skipping the rest of an over-long line.
_SKIP_CHUNK = 1 << 20
# A JSON string (escapes included); brackets inside strings do not nest.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


class ItemText(str):
    """An item's JSON text that passed the checks; `where` names it, `size` is its
    length in UTF-8 bytes."""

    where: str
    size: int


def _item_text(text: str, where: str, size: int) -> ItemText:
    item = ItemText(text)
    item.where = where
    item.size = size
    return item


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth_over_limit(text: str) -> int | None:
    """How deeply a JSON text nests if deeper than MAX_ITEM_DEPTH, else None.

    Counted on the text, not by parsing it: a text too deep for the parser
    is measured all the same.
    """
    # Cheap bound first (C speed): fewer brackets than the limit cannot nest deeper.
    if text.count("{") + text.count("[") <= MAX_ITEM_DEPTH:
        return None
    bare = _JSON_STRING.sub("", text)
    steps = (1 if b in "[{" else -1 for b in _BRACKETS.findall(bare))
    depth = max(accumulate(steps, initial=0))
    return depth if depth > MAX_ITEM_DEPTH else None


def _check_json(text: str, where: str, size: int) -> ItemText:
    depth = _depth_over_limit(text)
    if depth is not None:
        raise InvalidInput(
            f"{where}: nested {depth:,} levels deep; at most {MAX_ITEM_DEPTH} levels are allowed"
        )
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:  # not reachable below MAX_ITEM_DEPTH; never a traceback
        raise InvalidInput(f"{where}: nested too deeply to parse") from None
    except ValueError as exc:
        raise InvalidInput(f"{where}: invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected a JSON object, got {type(value).__name__}")
    return _item_text(text, where, size)


def parse_item(raw: bytes, where: str) -> ItemText:
    """Check one line of an items file; returns its JSON text (stripped). Raises
    InvalidInput naming `where`."""
    if len(raw) > MAX_ITEM_BYTES:
        raise InvalidInput(
            f"{where}: line is {len(raw):,} bytes, over the {MAX_ITEM_BYTES:,} limit"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{where}: not valid UTF-8 (byte {exc.start})") from None
    stripped = text.strip()  # Unicode whitespace too
    size = len(raw) if len(stripped) == len(text) else len(stripped.encode("utf-8"))
    return _check_json(stripped, where, size)


def _json_of(value: Mapping[str, Any], where: str) -> str:
    """A dict's strict JSON text (no NaN or Infinity, which Postgres's json refuses)."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise InvalidInput(f"{where}: nested too deeply to write as JSON") from None
    except ValueError as exc:
        # allow_nan=False: "Out of range float values are not JSON compliant"; or a cycle.
        raise InvalidInput(f"{where}: cannot be written as strict JSON: {exc}") from None
    except TypeError as exc:
        raise InvalidInput(f"{where}: cannot be written as JSON: {exc}") from None


def check_item(text: object, where: str) -> ItemText:
    """Check an item given by a library caller: a dict, or its JSON text (str or bytes);
    the same rules as a file line."""
    if isinstance(text, ItemText):
        return text
    if isinstance(text, bytes | bytearray):
        return parse_item(bytes(text), where)
    if isinstance(text, Mapping):
        text = _json_of(text, where)
    if not isinstance(text, str):
        raise InvalidInput(f"{where}: expected a dict or JSON text, got {type(text).__name__}")
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                f"{where}: not valid UTF-8 (character {exc.start} is a lone surrogate)"
            ) from None
    if size > MAX_ITEM_BYTES:
        raise InvalidInput(f"{where}: text is {size:,} bytes, over the {MAX_ITEM_BYTES:,} limit")
    return _check_json(text, where, size)


def _rest_of_line(handle: IO[bytes]) -> int:
    """Read past the rest of the current line in bounded chunks; returns its length
    (without the line ending)."""
    skipped = 0
    while chunk := handle.readline(_SKIP_CHUNK):
        if chunk.endswith(b"\n"):
            return skipped + len(chunk.rstrip(b"\r\n"))
        skipped += len(chunk)
    return skipped


def read_items(path: Path) -> Iterator[ItemText]:
    """Yield each task's JSON text from a JSON Lines file (``-``: standard input);
    blank lines are skipped.

    Each line is read with a bounded buffer (see the module's docstring).
    """
    if str(path) == STDIN:
        yield from _read_lines(sys.stdin.buffer, STDIN_NAME, close=False)
        return
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read items file: {exc.strerror}") from None
    yield from _read_lines(handle, str(path))


def _read_lines(handle: IO[bytes], path: str, close: bool = True) -> Iterator[ItemText]:
    count = 0
    line_no = 0
    with handle if close else contextlib.nullcontext(handle):
        while raw := handle.readline(_LINE_READ_LIMIT):
            line_no += 1
            if len(raw) == _LINE_READ_LIMIT and not raw.endswith(b"\n"):
                size = len(raw) + _rest_of_line(handle)
                raise InvalidInput(
                    f"{path}:{line_no}: line is {size:,} bytes, over the {MAX_ITEM_BYTES:,} limit"
                )
            stripped = raw.strip()
            if not stripped:
                continue
            yield parse_item(stripped, f"{path}:{line_no}")
            count += 1
    if count == 0:
        raise InvalidInput(f"{path}: items file has no items")


def items_of(source: Items) -> Iterable[object]:
    """What `jobsys.submit` was given, as one item after another, never all at once:
    an items file (a path, ``str`` or ``Path``; ``-`` is standard input), or any
    iterable of dicts or JSON texts (checked one by one by `checked_items`)."""
    if isinstance(source, str):
        if source.lstrip().startswith(("{", "[")):
            raise InvalidInput(
                "items: a str is read as an items file's path; give JSON texts or dicts "
                "in a list (items=[{...}])"
            )
        return read_items(Path(source))
    if isinstance(source, os.PathLike):
        return read_items(Path(source))
    if isinstance(source, bytes | bytearray | Mapping):
        raise InvalidInput("items: give a list (or any iterable) of dicts or JSON texts")
    if not isinstance(source, Iterable):
        raise InvalidInput(f"items: expected an iterable or a path, got {type(source).__name__}")
    return source


def counted_items(count: int) -> Iterator[ItemText]:
    """`--count N`: N tasks ``{"n": i}``."""
    if count < 0:
        raise InvalidInput(f"--count must be 0 or more, got {count}")
    for i in range(count):
        text = f'{{"n": {i}}}'
        yield _item_text(text, f"item {i + 1}", len(text))


# -- the NATS server's limit ---------------------------------------------------


@dataclass(frozen=True)
class ItemLimit:
    """The biggest item a submit accepts, and why."""

    max_bytes: int
    # The server's max_payload, or None if NATS could not be asked.
    max_payload: int | None = None
    nats_url: str = ""

    def check(self, item: ItemText) -> ItemText:
        """`item` if it fits; else InvalidInput naming it and the server's limit."""
        if item.size > self.max_bytes and self.max_payload is not None:
            raise InvalidInput(
                f"{item.where}: item is {item.size:,} bytes; the NATS server at "
                f"{redact(self.nats_url)} takes messages of at most max_payload "
                f"{self.max_payload:,} bytes, which leaves {self.max_bytes:,} for an item "
                f"(the rest is for the message's headers)"
            )
        return item


# url -> (max_payload, when asked, time.monotonic()); failures are not kept.
_max_payloads: dict[str, tuple[int, float]] = {}
_max_payloads_lock = threading.Lock()


def server_max_payload(url: str) -> int:
    """The `max_payload` the NATS server at `url` announces, asked at most every
    MAX_PAYLOAD_CACHE_S (see `ask_max_payload`)."""
    now = time.monotonic()
    with _max_payloads_lock:
        known = _max_payloads.get(url)
    if known is not None and now - known[1] < MAX_PAYLOAD_CACHE_S:
        return known[0]
    value = ask_max_payload(url)
    with _max_payloads_lock:
        _max_payloads[url] = (value, now)
    return value


def ask_max_payload(url: str) -> int:
    """The `max_payload` the NATS server at `url` announces (one short connection).

    Not the process's long-lived connection: that one retries a down server
    for ever, and a submit must not stall on NATS. Run on a thread of its
    own, so a caller inside an event loop can call it too.
    """

    async def quiet(exc: Exception) -> None:
        """Connection errors are reported by the exception below, once."""

    async def ask() -> int:
        # nats-py drops a server from its pool only once max_reconnect_attempts
        # (> 0) is used up, even on the first connect; the timeout bounds the rest.
        connecting = open_nats(
            url,
            get_settings(),
            name="jobsys-submit",
            connect_timeout=MAX_PAYLOAD_TIMEOUT_S,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            error_cb=quiet,
        )
        nc = await asyncio.wait_for(connecting, MAX_PAYLOAD_TIMEOUT_S)
        try:
            return int(nc.max_payload)
        finally:
            await nc.close()

    with ThreadPoolExecutor(1, thread_name_prefix="jobsys-max-payload") as pool:
        return pool.submit(asyncio.run, ask()).result()


def submit_item_limit() -> ItemLimit:
    """The item limit for a submit now: MAX_ITEM_BYTES, or less if the NATS server's
    `max_payload` (less MESSAGE_HEADROOM) is smaller.

    If NATS cannot be asked, the submit goes on with MAX_ITEM_BYTES and a
    warning: the job is kept in Postgres (the source of truth) and runs when
    NATS is back, and bootstrap fails any task whose message the server
    refuses then, with the reason.
    """
    url = get_settings().nats_url
    try:
        max_payload = server_max_payload(url)
    except Exception as exc:
        log.warning(
            "NATS not reachable: items are checked against the %s-byte item limit only, "
            "not the server's max_payload",
            f"{MAX_ITEM_BYTES:,}",
            extra={"nats_url": redact(url), "error": type(exc).__name__},
        )
        return ItemLimit(MAX_ITEM_BYTES)
    return ItemLimit(min(MAX_ITEM_BYTES, max_payload - MESSAGE_HEADROOM), max_payload, url)


def checked_items(items: Iterable[object], limit: ItemLimit) -> Iterator[ItemText]:
    """Every item of a submit, checked (again only if it did not come from this module)
    and against the server's limit."""
    for n, text in enumerate(items, start=1):
        yield limit.check(check_item(text, f"item {n}"))
