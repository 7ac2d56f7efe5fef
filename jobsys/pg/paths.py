"""Where jobsys finds its SQL files (migrations and named queries)."""

from __future__ import annotations

import os
from pathlib import Path


def sql_dir() -> Path:
    """The folder holding the `NNN_*.sql` migrations and `queries/*.sql`.

    `jobsys/sql` in the package (in the repository a link to its top-level
    `sql/`; a built wheel carries the files), unless `JOBSYS_SQL_DIR` says otherwise.
    """
    override = os.environ.get("JOBSYS_SQL_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "sql"
