"""Items uploaded as NDJSON, streamed from the request into a submit.

The body is never held whole: it is cut into lines as it arrives, each line
is checked as an items file's line is (`jobsys.api.items.parse_item`: JSON
object, size, nesting) and handed to `jobsys.api.submit.submit`, which COPYs
it into the job's ledger. The submit runs on a worker thread and pulls the
next chunk of the body from the event loop when it needs one, so a slow
client holds one thread, not memory. A bad line stops the upload and rolls
the job back: ``line N: problem``, as `jobsys submit --items` says
``file:N: problem``. Blank lines are skipped (and counted as lines).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio.from_thread

from jobsys.api.items import MAX_ITEM_BYTES, ItemText, parse_item
from jobsys.errors import InvalidInput


class LineSplitter:
    """Cuts a byte stream into numbered lines, holding at most one line (of at most
    `max_line` bytes) at a time."""

    def __init__(self, max_line: int = MAX_ITEM_BYTES) -> None:
        self.max_line = max_line
        self.line_no = 0
        self._held = bytearray()
        # Bytes of a line already over the limit, skipped (not held) until its end.
        self._over: int | None = None
        # Whether the bytes seen of the current line end in "\r" (not part of its size).
        self._ends_cr = False

    def feed(self, chunk: bytes) -> Iterator[tuple[int, bytes]]:
        """The lines `chunk` completes, as (line number, bytes without the line ending)."""
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if piece:
                self._ends_cr = piece.endswith(b"\r")
            if self._over is not None:
                self._over += len(piece)
            else:
                self._held += piece
                # Room for the line's own "\r" beyond the biggest item.
                if len(self._held) > self.max_line + 1:
                    self._over = len(self._held)
                    self._held.clear()
            if end < 0:
                return
            start = end + 1
            yield self._complete()

    def end(self) -> Iterator[tuple[int, bytes]]:
        """The last line, if the stream did not end with a newline."""
        if self._held or self._over is not None:
            yield self._complete()

    def _complete(self) -> tuple[int, bytes]:
        self.line_no += 1
        if self._over is not None:
            size = self._over - (1 if self._ends_cr else 0)
            self._over = None
            raise InvalidInput(
                f"line {self.line_no}: line is {size:,} bytes, over the {self.max_line:,} limit"
            )
        line = bytes(self._held)
        self._held.clear()
        self._ends_cr = False
        return self.line_no, line.removesuffix(b"\r")


def checked_lines(lines: Iterator[tuple[int, bytes]]) -> Iterator[ItemText]:
    """Each non-blank line checked as an item named ``line N``."""
    for line_no, raw in lines:
        stripped = raw.strip()
        if stripped:
            yield parse_item(stripped, f"line {line_no}")


async def _next(chunks: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


def items_from_stream(chunks: AsyncIterator[bytes]) -> Iterator[ItemText]:
    """The items of an NDJSON body, for a submit running on a worker thread (anyio's):
    each chunk is awaited on the event loop when the submit wants more."""
    splitter = LineSplitter()

    def lines() -> Iterator[tuple[int, bytes]]:
        while (chunk := anyio.from_thread.run(_next, chunks)) is not None:
            yield from splitter.feed(chunk)
        yield from splitter.end()

    count = 0
    for item in checked_lines(lines()):
        count += 1
        yield item
    if count == 0:
        raise InvalidInput("upload has no items (one JSON object per line)")
