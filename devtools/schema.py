"""`sql/schema.sql`: the current schema in one file, made from the migrations.

``python -m devtools.schema`` applies every migration to a scratch database
and writes what `pg_dump --schema-only` says of it, without the lines that
change from one run or one machine to another (versions, SET lines,
`\\restrict` keys, comments pg_dump writes). ``--check`` compares instead and
exits 1 if the file is stale; a test runs that, so the file cannot drift from
the migrations. The migrations stay the source: this file is for reading.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from jobsys.pg.migrate import migrate
from jobsys.pg.paths import sql_dir
from jobsys.settings import get_settings

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "sql" / "schema.sql"
HEADER = """\
-- The current jobsys schema, made from the migrations in this folder by
-- `python -m devtools.schema` (do not edit: change a migration, or add one,
-- then run it again). `jobsys db migrate` applies the migrations, not this file.
"""
# pg_dump's lines that say nothing about the schema.
_NOISE = re.compile(r"^(--.*|SET .*|SELECT pg_catalog\.set_config.*|\\(un)?restrict .*)$")
PG_DUMP_TIMEOUT_S = 60


def pg_dump_binary() -> str:
    """The machine's pg_dump, else the one the `pgserver` package ships."""
    found = shutil.which("pg_dump")
    if found:
        return found
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin" / "pg_dump"
        if bundled.exists():
            return str(bundled)
    sys.exit("devtools.schema: no pg_dump found (install postgresql-client)")


def normalise(dump: str) -> str:
    """The dump without noise, runs of blank lines made one."""
    lines = [line for line in dump.splitlines() if not _NOISE.match(line)]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return f"{HEADER}\n{text}\n"


def current_schema() -> str:
    """Apply every migration to a scratch database and dump its schema."""
    base = get_settings().database_url
    name = f"jobsys_schema_{uuid.uuid4().hex[:8]}"
    admin = make_conninfo(base, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(base, dbname=name)
    try:
        migrate(url)
        dump = subprocess.run(
            [pg_dump_binary(), "--schema-only", "--no-owner", "--no-privileges", "--dbname", url],
            capture_output=True,
            text=True,
            check=True,
            timeout=PG_DUMP_TIMEOUT_S,
        ).stdout
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return normalise(dump)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.schema", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare; exit 1 if stale")
    args = parser.parse_args()
    schema = current_schema()
    if args.check:
        if not SCHEMA_FILE.exists() or SCHEMA_FILE.read_text() != schema:
            sys.exit(f"{SCHEMA_FILE} is stale: run `python -m devtools.schema`")
        print(f"{SCHEMA_FILE} matches the migrations in {sql_dir()}")
        return
    SCHEMA_FILE.write_text(schema)
    print(f"wrote {SCHEMA_FILE}")


if __name__ == "__main__":
    main()
