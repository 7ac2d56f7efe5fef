-- 005: which stream a job's tasks were published to; reconciler findings
-- counted instead of repeated, and their history prunable.
--
-- Stream incarnation. NATS can lose a job's stream (data loss, an operator),
-- and anyone may create it again, empty. Tasks below published_count were
-- stored in the stream whose NATS creation time is recorded here; a stream
-- with another creation time holds none of them, and jobsys/streams.py
-- publishes every pending one again before recording the new time. NULL:
-- not known (a job bootstrapped before this migration); the stream present
-- is then taken as the one its tasks went to.
ALTER TABLE jobs ADD COLUMN stream_created timestamptz;

COMMENT ON COLUMN jobs.stream_created IS
    'NATS creation time of the stream the tasks below published_count were published to.';

-- Findings. A job waiting for hours used to add one row per pass. Now a
-- finding identical to the job's latest finding of that kind (same action,
-- same reason) adds to that row: `seen` counts the passes, `first_at` is when
-- it was first seen and `at` when it was last seen (and `run_id` the pass
-- that last saw it). `reason` is what makes two findings the same: the
-- detail's reason (or error) text.
ALTER TABLE reconcile_findings
    ADD COLUMN first_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN seen integer NOT NULL DEFAULT 1 CHECK (seen >= 1),
    ADD COLUMN reason text;

UPDATE reconcile_findings
SET first_at = at, reason = coalesce(detail->>'reason', detail->>'error');

-- Pruning deletes passes older than the history window; their findings go
-- with them (ON DELETE CASCADE), which without this index scans the whole
-- findings table once per deleted pass.
CREATE INDEX reconcile_findings_run_idx ON reconcile_findings (run_id);

-- What the reconciler reads about a job (004), plus the recorded stream
-- incarnation, appended (a view's columns can only be added at its end).
CREATE OR REPLACE VIEW job_reconcile_state AS
SELECT j.id, j.status, j.pipeline, j.max_deliver, j.total_count, j.published_count,
       j.done_count, j.failed_count, j.lost_count, j.cancelled_count,
       extract(epoch FROM now() - greatest(j.progress_at, coalesce(j.started_at, j.created_at)))
           AS idle_s,
       CASE WHEN j.status = 'canceling' THEN extract(epoch FROM now() - coalesce(
           (SELECT max(e.at) FROM job_events e
            WHERE e.job_id = j.id AND e.event = 'status' AND e.detail->>'to' = 'canceling'),
           j.progress_at)) END AS canceling_s,
       l.pending, l.done, l.failed, l.lost, l.cancelled, l.total,
       j.stream_created
FROM jobs j
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE t.status = 'pending')   AS pending,
           count(*) FILTER (WHERE t.status = 'done')      AS done,
           count(*) FILTER (WHERE t.status = 'failed')    AS failed,
           count(*) FILTER (WHERE t.status = 'lost')      AS lost,
           count(*) FILTER (WHERE t.status = 'cancelled') AS cancelled,
           count(*)                                       AS total
    FROM job_tasks t WHERE t.job_id = j.id
) l
WHERE j.status IN ('queued', 'started', 'canceling');

-- Dashboards (003): the latest finding is the one last seen (a counted
-- finding keeps its first id); both views also show the count.
CREATE OR REPLACE VIEW stuck_jobs AS
SELECT o.id, o.name, o.pipeline, o.status, o.total, o.done, o.failed, o.lost, o.pending,
       o.percent, o.idle, o.age, o.progress_at,
       f.at AS finding_at, f.kind AS finding, f.action AS finding_action,
       f.detail AS finding_detail,
       f.seen AS finding_seen, f.first_at AS finding_first_at
FROM active_jobs o
LEFT JOIN LATERAL (
    SELECT rf.at, rf.kind, rf.action, rf.detail, rf.seen, rf.first_at
    FROM reconcile_findings rf
    WHERE rf.job_id = o.id
    ORDER BY rf.at DESC, rf.id DESC
    LIMIT 1
) f ON true
WHERE o.progress_at < now() - coalesce(
    nullif(current_setting('jobsys.stuck_after', true), '')::interval, interval '2 minutes')
ORDER BY o.progress_at, o.id;

CREATE OR REPLACE VIEW reconcile_findings_recent AS
SELECT f.id, f.at, f.run_id, f.job_id, j.name, j.status AS job_status, f.kind, f.action,
       f.detail,
       f.first_at, f.seen, f.reason
FROM reconcile_findings f
LEFT JOIN jobs j ON j.id = f.job_id
WHERE f.at > now() - interval '1 day'
ORDER BY f.at DESC, f.id DESC;

COMMENT ON VIEW reconcile_findings_recent IS
    'Reconciler findings last seen in the last day: first seen, last seen (at), passes (seen).';
