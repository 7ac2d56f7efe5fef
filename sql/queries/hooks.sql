-- Completion hooks (jobsys/hooks.py), by name. The outbox row itself is
-- written by transition_status (core.sql) when a job with a hook goes final.
-- Every state change of a delivery is one guarded UPDATE: a sender acts only
-- on the row its claim returned, and marks it only while its claim holds.

-- name: set_on_complete
-- The hook target of a job being submitted (same transaction as insert_job):
-- as given (read by the final transition only) and as shown (redacted).
UPDATE jobs SET hook_target = %(target)s, on_complete = %(shown)s
WHERE id = %(job_id)s AND status = 'queued';

-- name: claim_hook
-- Claim a final job's delivery for one attempt: a pending row that is due,
-- or a row whose previous sender did not mark it within its lease (it died
-- or stalled). Concurrent claimers serialise on the row lock and re-check
-- the condition, so exactly one wins. Returns the state it was claimed from.
WITH prev AS (
    SELECT h.job_id, h.state
    FROM job_hooks h JOIN jobs j ON j.id = h.job_id
    WHERE h.job_id = %(job_id)s
      AND j.status IN ('success', 'failure', 'revoked')
      AND ((h.state = 'pending' AND h.next_at <= now())
           OR (h.state = 'sending' AND h.lease_until < now()))
    FOR UPDATE OF h
)
UPDATE job_hooks h
SET state = 'sending', attempts = h.attempts + 1,
    lease_until = now() + make_interval(secs => %(lease_s)s)
FROM prev
WHERE h.job_id = prev.job_id
RETURNING h.target, h.attempts, prev.state AS prev_state;

-- name: hook_wait
-- How long until a pending delivery is due (seconds; <= 0 means due now).
SELECT state, extract(epoch FROM next_at - now()) AS wait_s FROM job_hooks
WHERE job_id = %(job_id)s;

-- name: mark_hook_delivered
-- The claimed attempt succeeded. Guarded by the attempt number: a sender
-- whose lease expired and whose row was claimed again marks nothing.
UPDATE job_hooks
SET state = 'delivered', delivered_at = now(), lease_until = NULL, last_error = NULL
WHERE job_id = %(job_id)s AND state = 'sending' AND attempts = %(attempt)s
RETURNING job_id;

-- name: mark_hook_failed
-- The claimed attempt failed: back to pending, due after the backoff, or
-- given up ('failed') after the last allowed attempt.
UPDATE job_hooks
SET state = CASE WHEN %(give_up)s THEN 'failed' ELSE 'pending' END,
    next_at = now() + make_interval(secs => %(delay_s)s),
    lease_until = NULL, last_error = %(error)s
WHERE job_id = %(job_id)s AND state = 'sending' AND attempts = %(attempt)s
RETURNING state;

-- name: hooks_due
-- Deliveries the reconciler sends again: pending and overdue by the resend
-- grace (their message was lost), or claimed by a sender whose lease expired.
SELECT job_id, state, attempts FROM job_hooks
WHERE state IN ('pending', 'sending')
  AND ((state = 'pending' AND next_at <= now() - make_interval(secs => %(resend_after_s)s))
       OR (state = 'sending' AND lease_until < now()))
ORDER BY next_at
LIMIT %(limit)s;

-- name: get_hook
-- One job's hook delivery, for `jobsys status`: its target as shown (redacted).
SELECT j.on_complete AS target, h.state, h.attempts, h.created_at, h.next_at,
       h.delivered_at, h.last_error
FROM job_hooks h JOIN jobs j ON j.id = h.job_id
WHERE h.job_id = %(job_id)s;
