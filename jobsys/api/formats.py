"""How an exported task row is written: one JSON Lines line, or CSV cells.

Shared by `jobsys results` and the HTTP API's results stream, so both write
the same bytes. Rows come from an export opened with ``raw=True``: results
and payloads are their stored JSON text and are written as is.
"""

from __future__ import annotations

import json
from typing import Any

# The media types of the two formats.
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


def _one_line(text: str) -> str:
    # Stored JSON text is written as is. A raw CR/LF in JSON text can only be
    # whitespace between tokens (PG rejects it inside strings), so replacing
    # it keeps the same JSON on one line.
    if "\n" in text or "\r" in text:
        return text.replace("\r", " ").replace("\n", " ")
    return text


def jsonl_line(row: dict[str, Any], columns: list[str]) -> str:
    """One row as a JSON object on one line (ending in a newline)."""
    parts = []
    for col in columns:
        value = row[col]
        if value is None:
            text = "null"
        elif col in ("result", "payload"):
            text = _one_line(value)
        elif col == "finished_at":
            text = f'"{value.isoformat()}"'
        else:
            text = json.dumps(value, ensure_ascii=False)
        parts.append(f'"{col}": {text}')
    return "{" + ", ".join(parts) + "}\n"


def csv_cells(row: dict[str, Any], columns: list[str]) -> list[Any]:
    """One row's CSV cells (for a `csv.writer`)."""
    return [_csv_cell(col, row[col]) for col in columns]


def _csv_cell(col: str, value: Any) -> Any:
    if value is None:
        return ""
    if col == "finished_at":
        return value.isoformat()
    return value
