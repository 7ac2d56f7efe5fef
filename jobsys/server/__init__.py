"""The HTTP API: `jobsys serve`, tokens with scopes, the jobs API, problem details.

One module per job: `app` (the app factory and its middleware order),
`run` (uvicorn), `tokens` (made, listed, revoked, checked; only hashes
stored), `auth` (who is calling, may they), `limits` (request rates, body
sizes), `problems` (errors as RFC 9457 problem details), `routes` (how a
route declares its scope), `jobs` and `admin` (the routes), `upload` (an
NDJSON body streamed into a submit), `stream` (results streamed out).

Everything a route does goes through the same library calls as the CLI
(`jobsys.api`), so the API can do nothing the CLI cannot, and says it in
the same words.
"""
