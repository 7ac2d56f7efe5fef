-- A hook target as people see it, and as its sender needs it (docs/hooks.md).
--
-- jobs.on_complete is what is shown (status, list, the `hook_due` event,
-- `jobsys status`'s hook): the target with the credentials of its URL
-- redacted (a password, a user part standing for a token, the values of
-- query parameters named like secrets), made by jobsys.display.redact at
-- submit. jobs.hook_target is the target as given, read only by the
-- transition that makes the job final (copied into job_hooks.target, which
-- only the sender reads) and by `jobsys retry` (the child inherits it).
ALTER TABLE jobs ADD COLUMN hook_target text;
UPDATE jobs SET hook_target = on_complete WHERE on_complete IS NOT NULL;

-- Targets stored before this migration are redacted here the way
-- jobsys.display.redact redacts a URL.
CREATE FUNCTION pg_temp.redact_url(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT regexp_replace(
        regexp_replace(
            regexp_replace(t, '^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#@:]*):[^/?#]*@', '\1\2:***@'),
            '^(https?://)[^/?#@:]+@', '\1***@', 'i'),
        '((?:^|[?&;])(?:[\w-]*[_-])?(?:ssl)?(?:password|passwd|pwd|pass|secret|token|key|apikey'
        '|auth|authorization|signature|sig|credential|credentials|session|sessionid))=[^&;#]*',
        '\1=***', 'gi')
$$;
UPDATE jobs SET on_complete = pg_temp.redact_url(on_complete) WHERE on_complete IS NOT NULL;
UPDATE job_events
SET detail = jsonb_set(detail, '{target}', to_jsonb(pg_temp.redact_url(detail->>'target')))
WHERE event = 'hook_due' AND detail ? 'target';
