-- The core flow's queries (submit, status, bootstrap, results, teardown), by name.
-- Loaded with the other files of sql/queries/ by jobsys/queries.py.
-- Each block starts with "-- name: <query_name>" and a one-line description.
-- Values are always bound parameters (%(name)s); nothing is concatenated.

-- name: transition_status
-- The one guarded status write. Only a row whose status is in %(from)s moves;
-- the returned row is the answer to "did I win?". %(to)s = 'by_threshold' means
-- "success or failure by the failure threshold" and then the job must also be
-- complete. Every move is logged in job_events in the same statement.
-- A move to a final status of a job with a completion hook also writes the
-- hook's delivery into the outbox (job_hooks), in this same statement: every
-- path to a final status (finalize, reconciler, revoke) records it, and only
-- the one winning move can (job_hooks' primary key). The outbox gets the
-- target as given (hook_target: the sender needs its credentials; a job
-- submitted before it existed has only on_complete); the event, the target
-- as shown (on_complete, redacted).
-- A move to a final status also wakes the job's waiters (jobsys.pg.finals:
-- a notification on %(channel)s, sent on commit), in this same statement;
-- `announced` is read below, so it runs (a CTE nobody reads would not).
WITH moved AS (
    UPDATE jobs SET
        status = CASE
            WHEN %(to)s = 'by_threshold' THEN
                CASE WHEN failed_count + lost_count > failure_threshold * total_count
                     THEN 'failure' ELSE 'success' END
            ELSE %(to)s END,
        started_at = CASE WHEN %(to)s = 'started' THEN coalesce(started_at, now()) ELSE started_at END,
        finished_at = CASE WHEN %(to)s IN ('by_threshold', 'success', 'failure', 'revoked')
                           THEN now() ELSE finished_at END
    WHERE id = %(job_id)s
      AND status = ANY(%(from)s::text[])
      AND (%(to)s <> 'by_threshold' OR done_count + failed_count + lost_count >= total_count)
    RETURNING id, status, total_count, done_count, failed_count, lost_count, cancelled_count,
              on_complete, coalesce(hook_target, on_complete) AS hook_target
), logged AS (
    INSERT INTO job_events (job_id, level, event, detail)
    SELECT id, 'info', 'status',
           jsonb_build_object('to', status, 'from', %(from)s::text[], 'reason', %(reason)s::text)
    FROM moved
), hooked AS (
    INSERT INTO job_hooks (job_id, target)
    SELECT id, hook_target FROM moved
    WHERE hook_target IS NOT NULL AND status IN ('success', 'failure', 'revoked')
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id
), hook_logged AS (
    INSERT INTO job_events (job_id, level, event, detail)
    SELECT h.job_id, 'info', 'hook_due', jsonb_build_object('target', m.on_complete)
    FROM hooked h JOIN moved m ON m.id = h.job_id
), announced AS (
    SELECT count(pg_notify(%(channel)s, id::text)) AS n
    FROM moved WHERE status IN ('success', 'failure', 'revoked')
)
SELECT id, status, total_count, done_count, failed_count, lost_count, cancelled_count,
       hook_target IS NOT NULL AND status IN ('success', 'failure', 'revoked') AS has_hook,
       (SELECT n FROM announced) AS announced
FROM moved;

-- name: set_lock_timeout
-- How long this transaction's writes wait for a row another holds (jobsys.pg.waits).
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: row_holders
-- The session whose transaction holds a job's row: its xmax is that
-- transaction's id while it holds the row (by a write or a row lock). None
-- when several lock it at once (xmax is then a multixact: row_holders_multi).
SELECT a.pid, a.application_name, host(a.client_addr) AS client, a.state,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_s
FROM jobs j
JOIN pg_stat_activity a ON a.backend_xid = j.xmax
WHERE j.id = %(job_id)s AND a.pid <> pg_backend_pid();

-- name: row_holders_multi
-- The same when several lock the row at once (its xmax is then a multixact:
-- say a result transaction's write and a foreign-key check's KEY SHARE by
-- another): the members that block a write (all but 'keysh'). Raises when
-- the xmax is not a multixact (the caller then falls back).
SELECT a.pid, a.application_name, host(a.client_addr) AS client, a.state,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_s
FROM jobs j
CROSS JOIN LATERAL pg_get_multixact_members(j.xmax) m
JOIN pg_stat_activity a ON a.backend_xid = m.xid
WHERE j.id = %(job_id)s AND m.mode <> 'keysh' AND a.pid <> pg_backend_pid();

-- name: long_transactions
-- Sessions of this database (not this one) in a transaction begun at least
-- %(wait_s)s seconds ago and not themselves waiting for a lock, oldest
-- first: a row a write waited that long for is held by one of them (the
-- others queued behind it wait for a lock). Columns other roles' sessions
-- hide come back NULL.
SELECT pid, application_name, host(client_addr) AS client, state,
       extract(epoch FROM now() - xact_start)::float8 AS xact_s
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND xact_start <= now() - make_interval(secs => %(wait_s)s)
  AND wait_event_type IS DISTINCT FROM 'Lock'
ORDER BY xact_start
LIMIT %(limit)s;

-- name: insert_job
-- A new job row, queued.
INSERT INTO jobs (name, pipeline, total_count, failure_threshold, max_deliver,
                  task_timeout_s, max_in_flight, retry_delay_s, retry_delay_max_s, rate_per_s,
                  priority, weight)
VALUES (%(name)s, %(pipeline)s, %(total)s, %(failure_threshold)s, %(max_deliver)s,
        %(task_timeout_s)s, %(max_in_flight)s, %(retry_delay_s)s, %(retry_delay_max_s)s,
        %(rate_per_s)s, %(priority)s, %(weight)s)
RETURNING id, created_at;

-- name: insert_job_with_tasks
-- A new job row, queued, with its tasks (%(payloads)s, in task order), its
-- hook target if any (as set_on_complete) and its job_submitted event (the
-- parameters of insert_event), in one statement: a small job given as a
-- list is one round trip, atomic by itself.
WITH job AS (
    INSERT INTO jobs (name, pipeline, total_count, failure_threshold, max_deliver,
                      task_timeout_s, max_in_flight, retry_delay_s, retry_delay_max_s, rate_per_s,
                      priority, weight, hook_target, on_complete)
    VALUES (%(name)s, %(pipeline)s, cardinality(%(payloads)s::text[]), %(failure_threshold)s,
            %(max_deliver)s, %(task_timeout_s)s, %(max_in_flight)s, %(retry_delay_s)s,
            %(retry_delay_max_s)s, %(rate_per_s)s, %(priority)s, %(weight)s,
            %(hook_target)s, %(hook_shown)s)
    RETURNING id, created_at
), tasks AS (
    INSERT INTO job_tasks (job_id, task_no, payload)
    SELECT job.id, t.n - 1, t.payload::json
    FROM job, unnest(%(payloads)s::text[]) WITH ORDINALITY AS t (payload, n)
), logged AS (
    INSERT INTO job_events (job_id, level, event, detail)
    SELECT id, %(level)s, %(event)s, %(detail)s::jsonb FROM job
)
SELECT id, created_at FROM job;

-- name: set_job_total
-- The task count of a job whose items were streamed in (same transaction as its COPY).
UPDATE jobs SET total_count = %(total)s WHERE id = %(job_id)s AND status = 'queued';

-- name: set_job_total_with_event
-- set_job_total and an event of the job (insert_event's parameters) in one
-- round trip: submit's last statement.
WITH total AS (
    UPDATE jobs SET total_count = %(total)s WHERE id = %(job_id)s AND status = 'queued'
)
INSERT INTO job_events (job_id, level, event, detail)
VALUES (%(job_id)s, %(level)s, %(event)s, %(detail)s::jsonb);

-- name: copy_tasks
-- Bulk insert of a job's ledger rows.
COPY job_tasks (job_id, task_no, payload) FROM STDIN;

-- name: get_job
-- One job with its counters.
SELECT id, name, pipeline, status, total_count, published_count, done_count, failed_count,
       lost_count, cancelled_count, failure_threshold, max_deliver,
       task_timeout_s, max_in_flight, retry_delay_s, retry_delay_max_s, rate_per_s,
       priority, weight,
       created_at, started_at, finished_at, progress_at,
       parent_id, root_id, on_complete, ledger_state, ledger_pruned_at
FROM jobs WHERE id = %(job_id)s;

-- name: list_jobs
-- Recent jobs, optionally of one status, optionally of some pipelines only
-- (an API token limited to them).
SELECT id, name, pipeline, status, total_count, published_count, done_count, failed_count,
       lost_count, cancelled_count, failure_threshold, max_deliver, task_timeout_s, max_in_flight,
       retry_delay_s, retry_delay_max_s, rate_per_s, priority, weight,
       created_at, started_at, finished_at, progress_at,
       parent_id, root_id, on_complete, ledger_state, ledger_pruned_at
FROM jobs
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(pipelines)s::text[] IS NULL OR pipeline = ANY(%(pipelines)s::text[]))
ORDER BY id DESC
LIMIT %(limit)s;

-- name: set_job_share
-- A job's priority and weight (`jobsys set`), while it is active only: these
-- two columns, nothing else (a NULL leaves one as it is). No row: the job is
-- final (or unknown). Returns the values before and after, for the event
-- the caller writes in the same transaction.
UPDATE jobs j
SET priority = COALESCE(%(priority)s::integer, j.priority),
    weight = COALESCE(%(weight)s::integer, j.weight)
FROM (SELECT id, priority, weight FROM jobs WHERE id = %(job_id)s FOR UPDATE) old
WHERE j.id = old.id AND j.status IN ('queued', 'started', 'canceling')
RETURNING j.id, j.status, j.priority, j.weight, old.priority AS was_priority,
          old.weight AS was_weight;

-- name: job_statuses
-- Statuses of the given jobs (processors drop work of jobs no longer started).
SELECT id, status FROM jobs WHERE id = ANY(%(job_ids)s::bigint[]);

-- name: advance_published
-- Bootstrap's resume point only moves forward, and only while the job is
-- started (no counter moves after a cancel); returns the job's status so
-- bootstrap learns of a cancel without another query.
UPDATE jobs SET
    published_count = CASE WHEN status = 'started'
                           THEN greatest(published_count, %(published)s)
                           ELSE published_count END,
    progress_at = CASE WHEN status = 'started' THEN now() ELSE progress_at END
WHERE id = %(job_id)s
RETURNING status;

-- name: record_results
-- Apply one result batch: move tasks pending -> done|failed (only those that
-- really move), add exactly those counts to the job's counters, in one
-- statement. The batch's tasks are locked in task order so overlapping
-- batches cannot deadlock.
-- Binding (sql/010_result_binding.sql): an item counts here only if its
-- reply's stream sequence (its seq) is where the task's message sits:
-- stream_seq, or task_no + 1 when NULL, for a task published_count (or the
-- fill's placed_count, sql/011_placed_count.sql) has passed.
-- A NULL sequence means the caller checked the item (or it answers no
-- message: a task failed before publishing). A task with any other item is
-- not moved here at all: those items come back (unbound_tasks /
-- unbound_seqs) for the caller to check against the stream, and the task is
-- counted in a second call.
-- Always one row: the job's counters after the change (NULL when nothing
-- moved: a replay, a late result, an unknown job) and the unbound items.
WITH input AS (
    -- The input: one JSON array of [task_no, status, result, error, deliveries,
    -- seq, error_type, error_trace] rows (cheaper to send than eight arrays).
    SELECT (e->>0)::int AS task_no, e->>1 AS status, e->>2 AS result, e->>3 AS error,
           (e->>4)::int AS deliveries, (e->>5)::bigint AS seq, e->>6 AS error_type,
           e->>7 AS error_trace
    FROM jsonb_array_elements(%(input)s::jsonb) AS e
), locked AS (
    -- One primary-key lookup per task, locked in task order (the outer list
    -- is sorted, and each lookup locks as the loop reaches it). Not
    -- `task_no = ANY(...)`: the planner has no statistics for a new job's
    -- rows, and it read all of them through the key's job_id prefix and
    -- filtered, every batch (1M rows for 1,000 results of a 1M-task job). A
    -- subquery that locks is never flattened into a join: it stays a lookup
    -- per task (tests/test_ledger_reads.py).
    SELECT k.task_no, k.status, k.place
    FROM (SELECT DISTINCT unnest(%(task_nos)s::int[]) AS task_no ORDER BY 1) n
    CROSS JOIN LATERAL (
        SELECT t.task_no, t.status, coalesce(t.stream_seq, t.task_no + 1) AS place
        FROM job_tasks t
        WHERE t.job_id = %(job_id)s AND t.task_no = n.task_no
        FOR UPDATE
    ) k
), unbound AS (
    SELECT i.task_no, i.seq FROM input i JOIN locked l USING (task_no)
    WHERE i.seq IS NOT NULL
      AND (l.place <> i.seq
           OR i.task_no >= (SELECT greatest(published_count, placed_count)
                            FROM jobs WHERE id = %(job_id)s))
), moved AS (
    UPDATE job_tasks t
    SET status = i.status, result = i.result::json, error = i.error,
        error_type = i.error_type, error_trace = i.error_trace,
        deliveries = greatest(t.deliveries, i.deliveries), finished_at = now()
    FROM input i JOIN locked l USING (task_no)
    -- By key, not by the ctid `locked` returned: a row another transaction
    -- updated while this one waited for its lock is locked at its newest
    -- version, which this statement's snapshot cannot see, and an update by
    -- that ctid finds nothing (tests/test_count_after_update.py). (Planned as
    -- a key lookup per row: the join before it leaves too few rows to plan
    -- anything else.)
    WHERE t.job_id = %(job_id)s AND t.task_no = i.task_no AND t.status = 'pending'
      AND l.status = 'pending' AND (i.seq IS NULL OR l.place = i.seq)
      AND i.task_no NOT IN (SELECT task_no FROM unbound)
    RETURNING t.status
), counts AS (
    SELECT count(*) FILTER (WHERE status = 'done') AS done,
           count(*) FILTER (WHERE status = 'failed') AS failed
    FROM moved
), bumped AS (
    UPDATE jobs j
    SET done_count = j.done_count + c.done, failed_count = j.failed_count + c.failed,
        progress_at = now()
    FROM counts c
    WHERE j.id = %(job_id)s AND c.done + c.failed > 0
    RETURNING c.done AS moved_done, c.failed AS moved_failed, j.status, j.total_count,
              j.done_count, j.failed_count, j.lost_count
)
SELECT b.moved_done, b.moved_failed, b.status, b.total_count, b.done_count, b.failed_count,
       b.lost_count, u.tasks AS unbound_tasks, u.seqs AS unbound_seqs
FROM (SELECT array_agg(task_no) AS tasks, array_agg(seq) AS seqs FROM unbound) u
LEFT JOIN bumped b ON true;

-- name: lock_listed_tasks
-- Lock the listed tasks of a job (those it has), one key lookup each, in task
-- order as every writer of job_tasks locks; their row versions (ctid). For
-- a statement after it in the same transaction to update those rows by
-- ctid: a join of the list with job_tasks, or `task_no = ANY(...)`, was
-- served by reading the whole job (the planner has no statistics for a new
-- job's rows). Not in the same statement: a row another transaction updated
-- while this waited is locked at its newest version, which only a later
-- statement's snapshot can see (tests/test_count_after_update.py).
SELECT k.row_id::text AS row_id
FROM (SELECT DISTINCT unnest(%(task_nos)s::int[]) AS task_no ORDER BY 1) n
CROSS JOIN LATERAL (
    SELECT t.ctid AS row_id FROM job_tasks t
    WHERE t.job_id = %(job_id)s AND t.task_no = n.task_no
    FOR UPDATE
) k;

-- name: cancel_pending_chunk
-- One chunk of a canceling job's revoke: the next `rows` tasks by number
-- after `after`, those still pending cancelled and counted in this one
-- transaction (tasks first, then the job row: a result batch's lock order).
-- Nothing moves unless the job is canceling. `last` is the chunk's highest
-- task number (NULL: no task after `after`).
-- The span is bounded in task numbers too (a job's are 0 to total - 1): the
-- planner has no statistics for a new job's rows, and over the rest of the
-- job it scanned and sorted all of it for every chunk.
WITH span AS (
    SELECT task_no FROM job_tasks
    WHERE job_id = %(job_id)s AND task_no > %(after)s AND task_no <= %(after)s::bigint + %(rows)s
    ORDER BY task_no
    LIMIT %(rows)s
), moved AS (
    -- A range of the primary key, not a join with `span`: a freshly filled
    -- ledger has no statistics yet and a join was planned as a nested loop
    -- over every task of the job (84 s for one chunk of a 100,000-task job).
    UPDATE job_tasks t SET status = 'cancelled', finished_at = now()
    WHERE t.job_id = %(job_id)s
      AND t.task_no > %(after)s AND t.task_no <= (SELECT max(task_no) FROM span)
      AND t.status = 'pending'
      AND EXISTS (SELECT 1 FROM jobs WHERE id = %(job_id)s AND status = 'canceling')
    RETURNING 1
), bumped AS (
    UPDATE jobs j SET cancelled_count = j.cancelled_count + (SELECT count(*) FROM moved)
    WHERE j.id = %(job_id)s AND j.status = 'canceling'
    RETURNING j.id
)
SELECT (SELECT count(*) FROM moved) AS cancelled,
       (SELECT max(task_no) FROM span) AS last,
       EXISTS (SELECT 1 FROM bumped) AS canceling;

-- name: cancel_pending_tasks
-- Teardown of a canceling job: every task still pending becomes cancelled and
-- is counted, in the same transaction as the job's move to revoked.
WITH locked AS (
    SELECT task_no FROM job_tasks
    WHERE job_id = %(job_id)s AND status = 'pending'
    ORDER BY task_no
    FOR UPDATE
), moved AS (
    UPDATE job_tasks t SET status = 'cancelled', finished_at = now()
    FROM locked l
    WHERE t.job_id = %(job_id)s AND t.task_no = l.task_no AND t.status = 'pending'
    RETURNING 1
), counts AS (
    SELECT count(*) AS n FROM moved
)
UPDATE jobs j SET cancelled_count = j.cancelled_count + c.n
FROM counts c
WHERE j.id = %(job_id)s
RETURNING c.n AS cancelled, j.cancelled_count AS cancelled_in_all;

-- name: ledger_counts
-- The ledger's own counts of one job, to audit the counter columns.
SELECT count(*) FILTER (WHERE status = 'pending')   AS pending,
       count(*) FILTER (WHERE status = 'done')      AS done,
       count(*) FILTER (WHERE status = 'failed')    AS failed,
       count(*) FILTER (WHERE status = 'lost')      AS lost,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       count(*)                                     AS total
FROM job_tasks WHERE job_id = %(job_id)s;

-- name: insert_event
-- Append one event to a job's log.
INSERT INTO job_events (job_id, level, event, detail)
VALUES (%(job_id)s, %(level)s, %(event)s, %(detail)s::jsonb);

-- name: job_events
-- A job's events in order, after an event id (for following).
SELECT id, at, level, event, detail FROM job_events
WHERE job_id = %(job_id)s AND id > %(after)s
ORDER BY id
LIMIT %(limit)s;
