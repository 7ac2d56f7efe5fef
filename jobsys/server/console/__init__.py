"""The web console of `jobsys serve`: pages at ``/`` for people, on the same app, tokens
and library calls as the API.

`render` (Jinja2 templates, every text shown literally), `pages` (jobs, a
job, its failures, events, NATS and ledger, results, processors, the live
stream), `actions` (sign-in, cancel, retry, submit), `live` (one query per
refresh fanned out to every open page), `chart` (progress over time as SVG),
`processors` (who processes). The sign-in cookie and its CSRF token are in
`jobsys.server.session`, checked by `jobsys.server.auth.Authenticate`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from jobsys.server.console import actions, pages

# The console's routers, in the order their routes are matched.
ROUTERS: list[APIRouter] = [actions.router, actions.changes, pages.router]
# The script and style sheet (served without a token: they hold no data).
STATIC_DIR = Path(__file__).parent / "static"
