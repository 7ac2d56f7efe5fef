-- The HTTP API's tokens (jobsys/server/tokens.py), by name. Only hashes are
-- stored; the token itself never reaches the database.

-- name: insert_token
-- A new token. A live token of the same name makes this fail on
-- api_tokens_live_name_idx (the caller says so in one line).
INSERT INTO api_tokens (name, scope, pipelines, token_hash, fingerprint, expires_at)
VALUES (%(name)s, %(scope)s, %(pipelines)s::text[], %(token_hash)s, %(fingerprint)s,
        CASE WHEN %(expires_days)s::double precision IS NULL THEN NULL
             ELSE now() + make_interval(secs => %(expires_days)s::double precision * 86400) END)
RETURNING name, scope, pipelines, fingerprint, created_at, expires_at, revoked_at, last_used_at;

-- name: authenticate_token
-- The token with this hash, and whether it may be used now. Its last use is
-- written at most once per %(touch_every_s)s (a write per request would be a
-- hot row for a busy client); a revoked or expired token is not touched.
WITH found AS (
    SELECT id, name, scope, pipelines, fingerprint, expires_at, revoked_at,
           revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) AS usable
    FROM api_tokens WHERE token_hash = %(token_hash)s
), touched AS (
    UPDATE api_tokens t SET last_used_at = now()
    FROM found
    WHERE t.id = found.id AND found.usable
      AND (t.last_used_at IS NULL
           OR t.last_used_at < now() - make_interval(secs => %(touch_every_s)s::double precision))
    RETURNING t.id
)
SELECT name, scope, pipelines, fingerprint, expires_at, revoked_at, usable FROM found;

-- name: list_tokens
-- Every token (live first, then revoked), newest first; never a hash.
SELECT name, scope, pipelines, fingerprint, created_at, expires_at, revoked_at, last_used_at
FROM api_tokens
WHERE %(include_revoked)s OR revoked_at IS NULL
ORDER BY revoked_at IS NOT NULL, id DESC;

-- name: revoke_token
-- The live token of this name stops working at once (the next request that
-- presents it is refused); its row stays for the audit trail.
UPDATE api_tokens SET revoked_at = now()
WHERE name = %(name)s AND revoked_at IS NULL
RETURNING name, scope, pipelines, fingerprint, created_at, expires_at, revoked_at, last_used_at;
