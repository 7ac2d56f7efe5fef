"""Schema migrations: `sql/NNN_*.sql`, applied in order, once each.

Each file runs in its own transaction together with its row in
`schema_migrations`, under an advisory lock (`locks.exclusive`, which holds
behind a transaction-pooling proxy too) so two `jobsys db migrate` runs at
once apply nothing twice.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from jobsys.pg.db import Conn, connect_direct
from jobsys.pg.locks import exclusive
from jobsys.pg.paths import sql_dir

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{3})_[\w-]+\.sql$")
# Arbitrary constant: the advisory lock key that serialises migration runs.
_MIGRATE_LOCK = 0x6A6F6273

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    """One numbered schema file."""

    version: int
    name: str
    path: Path


def migrations(folder: Path | None = None) -> list[Migration]:
    """All migration files, in version order."""
    folder = folder or sql_dir()
    found = []
    for path in folder.iterdir():
        m = _FILE.match(path.name)
        if m:
            found.append(Migration(int(m.group(1)), path.name, path))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migration files share a number in {folder}")
    return found


def latest_version() -> int:
    """The highest migration number shipped with this code."""
    found = migrations()
    return found[-1].version if found else 0


def migrate(url: str | None = None) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied."""
    applied: list[str] = []
    with exclusive(_MIGRATE_LOCK, url), connect_direct(url, autocommit=True) as conn:
        conn.execute(_CREATE_TABLE)
        done = {row["version"] for row in conn.execute("SELECT version FROM schema_migrations")}
        for mig in migrations():
            if mig.version in done:
                continue
            _apply(conn, mig)
            applied.append(mig.name)
            log.info("migration applied", extra={"migration": mig.name})
    return applied


def _apply(conn: Conn, mig: Migration) -> None:
    sql = mig.path.read_text(encoding="utf-8")
    with conn.transaction():
        # A migration file is trusted code shipped with jobsys, not user input.
        conn.execute(sql.encode())
        conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
            (mig.version, mig.name),
        )


def current_version(url: str | None = None) -> int | None:
    """The newest applied migration, or None when the schema was never migrated."""
    with connect_direct(url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') AS t").fetchone()
        if not exists or exists["t"] is None:
            return None
        row = conn.execute("SELECT max(version) AS v FROM schema_migrations").fetchone()
        return row["v"] if row else None
