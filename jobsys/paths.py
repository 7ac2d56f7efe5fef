"""Where jobsys finds its SQL files (migrations and named queries)."""

from __future__ import annotations

import os
from pathlib import Path


def sql_dir() -> Path:
    """The folder holding `NNN_*.sql` migrations and `queries.sql`.

    The repository's `sql/` beside the package, unless `JOBSYS_SQL_DIR` says otherwise.
    """
    override = os.environ.get("JOBSYS_SQL_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "sql"
