"""Schema migrations: `sql/NNN_*.sql`, applied in order, once each.

Each file runs in its own transaction together with its row in
`schema_migrations`, under an advisory lock (`locks.exclusive`, which holds
behind a transaction-pooling proxy too) so two `jobsys db migrate` runs at
once apply nothing twice.

Migrations run while the deployment runs. An ALTER TABLE waiting for its
table's lock (a worker's transaction reads the table) makes every later
query of that table wait behind it: the whole deployment would stall for as
long as that transaction lasts. So a migration's statements wait
STATEMENT_LOCK_WAIT_S at most; the migration then rolls back, pauses and
tries again, for PATIENCE_S, and then fails naming the sessions in the way
(`MigrationBlocked`), having applied nothing of that file.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from jobsys.errors import MigrationBlocked
from jobsys.pg.db import Conn, connect_direct
from jobsys.pg.locks import exclusive
from jobsys.pg.paths import sql_dir
from jobsys.pg.queries import Q
from jobsys.pg.waits import describe_sessions, limit_lock_wait

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{3})_[\w-]+\.sql$")
# Arbitrary constant: the advisory lock key that serialises migration runs.
_MIGRATE_LOCK = 0x6A6F6273
# How long one try of a migration waits for a table's lock: every query of
# that table waits behind it meanwhile, so this is what a busy deployment
# may stall for, once per try.
STATEMENT_LOCK_WAIT_S = 2.0
# Pauses between tries (doubling, up to the cap), and how long a migration
# keeps trying before it fails.
RETRY_PAUSE_S = 0.5
RETRY_PAUSE_MAX_S = 10.0
PATIENCE_S = 300.0
# The sessions a blocked migration's error names at most.
HOLDERS_SHOWN = 3

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


def migrate(url: str | None = None, patience_s: float = PATIENCE_S) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied. Raises
    MigrationBlocked if one could not lock its tables within `patience_s` (those
    before it stay applied)."""
    applied: list[str] = []
    with exclusive(_MIGRATE_LOCK, url), connect_direct(url, autocommit=True) as conn:
        conn.execute(_CREATE_TABLE)
        done = {row["version"] for row in conn.execute("SELECT version FROM schema_migrations")}
        for mig in migrations():
            if mig.version in done:
                continue
            _apply_when_free(conn, mig, patience_s)
            applied.append(mig.name)
            log.info("migration applied", extra={"migration": mig.name})
    return applied


def _apply_when_free(conn: Conn, mig: Migration, patience_s: float) -> None:
    """Apply `mig`, trying again while its tables' locks are held by others."""
    give_up_at = time.monotonic() + patience_s
    pause = RETRY_PAUSE_S
    while True:
        try:
            _apply(conn, mig)
            return
        except psycopg.errors.LockNotAvailable:
            rows = conn.execute(
                Q.long_transactions, {"wait_s": STATEMENT_LOCK_WAIT_S, "limit": HOLDERS_SHOWN + 1}
            ).fetchall()
            # Not this run's own lock session (`exclusive`), named as this one is.
            ours = conn.info.parameter_status("application_name")
            holders = describe_sessions([r for r in rows if r["application_name"] != ours])
            holders = holders[:HOLDERS_SHOWN]
            if time.monotonic() + pause > give_up_at:
                raise MigrationBlocked(mig.name, patience_s, holders) from None
            log.warning("migration waits for its tables' locks; trying again",
                        extra={"migration": mig.name, "pause_s": pause,
                               "holders": [h for _, h in holders]})  # fmt: skip
            time.sleep(pause)
            pause = min(pause * 2, RETRY_PAUSE_MAX_S)


def _apply(conn: Conn, mig: Migration) -> None:
    sql = mig.path.read_text(encoding="utf-8")
    with conn.transaction():
        limit_lock_wait(conn, STATEMENT_LOCK_WAIT_S)
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
