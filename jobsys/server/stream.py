"""A job's results streamed as NDJSON or CSV from one export snapshot.

`jobsys.api.export.open_export` holds a REPEATABLE READ snapshot and a
server-side cursor; rows are formatted as `jobsys results` writes them
(`jobsys.api.formats`) and sent in chunks of about CHUNK_BYTES. The export
is read on worker threads, one chunk at a time, so memory stays flat
whatever the job's size and a slow client holds no thread while it reads.
The snapshot is closed when the stream ends, fails or the client leaves.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Generator
from contextlib import AbstractContextManager

import anyio
import anyio.to_thread

from jobsys.api.export import Export
from jobsys.api.formats import csv_cells, jsonl_line

# Bytes per chunk sent: few enough round trips to the thread pool, little memory.
CHUNK_BYTES = 64 * 1024


def export_chunks(export: Export, fmt: str) -> Generator[bytes, None, None]:
    """The rows of `export` as bytes, in chunks of about CHUNK_BYTES."""
    columns = export.columns
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(columns)
    for row in export:
        if writer is not None:
            writer.writerow(csv_cells(row, columns))
        else:
            buffer.write(jsonl_line(row, columns))
        if buffer.tell() >= CHUNK_BYTES:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode("utf-8")


async def open_in_thread(opening: AbstractContextManager[Export]) -> Export:
    """Enter an export's context on a worker thread (its errors are raised here, before
    any byte of the response is sent)."""
    return await anyio.to_thread.run_sync(opening.__enter__)


async def chunks_in_threads(
    opening: AbstractContextManager[Export], export: Export, fmt: str
) -> AsyncIterator[bytes]:
    """The chunks of an open export, each read on a worker thread; the export is closed
    at the end, whatever ends it (a client gone included)."""
    chunks = export_chunks(export, fmt)

    def take() -> bytes | None:
        return next(chunks, None)

    def close() -> None:
        chunks.close()  # the server-side cursor first, then the snapshot's connection
        opening.__exit__(None, None, None)

    try:
        while (chunk := await anyio.to_thread.run_sync(take)) is not None:
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close)
