-- 013: the tokens of the HTTP API (`jobsys serve`, `jobsys token ...`).
--
-- A token is shown once, when it is made; only its SHA-256 is kept. A token
-- is 32 random bytes, so a fast hash is enough: nobody can guess one from
-- its hash, and a lookup is one index probe. The fingerprint (the first 16
-- hex digits of that hash) names a token in job events and listings without
-- showing it. A revoked token keeps its row (the events that name its
-- fingerprint stay explained); its name may be given to a new token.

CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    scope        text NOT NULL CHECK (scope IN ('read', 'submit', 'process', 'admin')),
    -- NULL: every pipeline. Otherwise the only pipelines whose jobs it may touch.
    pipelines    text[] CHECK (pipelines IS NULL OR cardinality(pipelines) >= 1),
    token_hash   bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    fingerprint  text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    -- Written at most once a minute per token (jobsys.server.tokens.TOUCH_EVERY_S).
    last_used_at timestamptz,
    -- An admin token reaches every pipeline.
    CHECK (scope <> 'admin' OR pipelines IS NULL)
);

-- One live token per name.
CREATE UNIQUE INDEX api_tokens_live_name_idx ON api_tokens (name) WHERE revoked_at IS NULL;
