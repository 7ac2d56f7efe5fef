"""Where jobsys finds its SQL files (migrations and named queries)."""

from __future__ import annotations

from pathlib import Path


def sql_dir() -> Path:
    """The folder holding the `NNN_*.sql` migrations and `queries/*.sql`: `jobsys/sql`
    in the package. In the repository it is a link to the top-level `sql/`; a built
    wheel carries the files themselves (`[tool.setuptools.package-data]`)."""
    return Path(__file__).resolve().parent.parent / "sql"
