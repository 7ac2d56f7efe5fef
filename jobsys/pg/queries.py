"""Named SQL queries, parsed from `sql/queries/*.sql` (one file per concern).

Reading those files tells everything jobsys does to the database. Each
block starts with ``-- name: <query_name>``; `Q.<query_name>` is its text.
"""

from __future__ import annotations

import re
from functools import lru_cache

from jobsys.pg.paths import sql_dir

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse_queries(text: str, into: dict[str, str] | None = None) -> dict[str, str]:
    """Split a queries file into ``{name: sql}``; comments stay with their query."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {} if into is None else into
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in sql/queries/")
        queries[name] = body.strip().rstrip(";")
    return queries


@lru_cache(maxsize=1)
def _load() -> dict[str, str]:
    queries: dict[str, str] = {}
    for path in sorted((sql_dir() / "queries").glob("*.sql")):
        parse_queries(path.read_text(encoding="utf-8"), into=queries)
    return queries


class _Queries:
    """Attribute access to the named queries: ``Q.record_results``."""

    def __getattr__(self, name: str) -> str:
        try:
            return _load()[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r} in sql/queries/") from None


Q = _Queries()
