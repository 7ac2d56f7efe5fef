-- Filling a job's stream (jobsys/streams.py), by name: what bootstrap and the
-- reconciler's stream repairs read and write.

-- name: job_stream_state
-- What filling a job's stream needs: its status, pipeline and consumer
-- settings, how far publishing got, and which stream incarnation that was.
SELECT id, status, pipeline, max_deliver, task_timeout_s, max_in_flight, retry_delay_s,
       retry_delay_max_s, rate_per_s, priority, weight, total_count,
       published_count, placed_count, stream_created
FROM jobs WHERE id = %(job_id)s;

-- name: pending_tasks_between
-- The next chunk of a job's pending tasks in task order, from a task number
-- up to (not including) another, with where each sits in the stream as
-- recorded (the fill writes only the places its PubAcks contradict). Only
-- pending tasks: a finished task is never published again. Reads through the
-- primary key's (job_id, task_no); the fill asks for one chunk's span of task
-- numbers at a time, never the rest of the job (the planner has no statistics
-- for a new job's rows and may scan and sort the whole span).
SELECT task_no, payload::text, stream_seq FROM job_tasks
WHERE job_id = %(job_id)s AND status = 'pending'
  AND task_no >= %(from_task)s AND task_no < %(below)s
ORDER BY task_no
LIMIT %(limit)s;

-- name: reset_placed
-- A fill starts: a place guessed by a fill before it (one that died with a
-- chunk in flight) is not trusted any more (sql/011_placed_count.sql).
UPDATE jobs SET placed_count = published_count
WHERE id = %(job_id)s AND placed_count > published_count;

-- name: advance_placed
-- The next chunk goes in order into a fresh stream: its tasks sit at
-- task_no + 1 from now on. Only forward, only while the job is started.
UPDATE jobs SET placed_count = greatest(placed_count, %(placed)s)
WHERE id = %(job_id)s AND status = 'started'
RETURNING status;

-- name: record_stream_incarnation
-- The stream now holds every pending task below published_count: record its
-- creation time. Only while the job is started (a cancel wins); the job made
-- progress (so the idle rules start counting again from here).
UPDATE jobs SET stream_created = %(created)s, progress_at = now()
WHERE id = %(job_id)s AND status = 'started'
RETURNING status;

-- name: record_stream_seqs
-- Where tasks of a chunk just published sit in the job's stream (the sequence
-- its PubAck named; 0: not published, too large): a result counts in one
-- statement when its reply names it (record_results). The fill sends only the
-- tasks whose recorded place (NULL standing for task_no + 1,
-- sql/010_result_binding.sql) the PubAcks contradict: a first fill into a
-- fresh stream writes nothing. Written whatever the task's status (a result
-- may already have moved it).
-- The rows, locked first by lock_listed_tasks in the same transaction (in
-- task order, as every writer of job_tasks locks them, so this and a result
-- batch never deadlock), are updated by their ctids (`rows`).
WITH given AS (
    SELECT DISTINCT ON (g.task_no) g.task_no, g.seq
    FROM unnest(%(task_nos)s::int[], %(seqs)s::bigint[]) AS g(task_no, seq)
    ORDER BY g.task_no
)
UPDATE job_tasks t SET stream_seq = g.seq
FROM given g
-- `job_id + 0`: not through the key's job_id prefix, which the planner,
-- with no statistics for a new job's rows, would take over the ctids.
WHERE t.ctid = ANY(%(rows)s::text[]::tid[]) AND t.job_id + 0 = %(job_id)s
  AND t.task_no = g.task_no AND coalesce(t.stream_seq, t.task_no + 1) <> g.seq;

-- name: forget_stream_seqs
-- The job's stream was re-created: no task below published_count has a
-- message in it until republished, so none has a known place (0). Before the
-- republishing, so that no reply can count or ack by a place in the stream
-- that is gone. Rows locked in task order (see record_stream_seqs).
WITH locked AS (
    SELECT task_no FROM job_tasks
    WHERE job_id = %(job_id)s AND task_no < %(published)s
      AND stream_seq IS DISTINCT FROM 0
    ORDER BY task_no
    FOR UPDATE
)
UPDATE job_tasks t SET stream_seq = 0
FROM locked l
WHERE t.job_id = %(job_id)s AND t.task_no = l.task_no;

-- name: stray_stream_jobs
-- The jobs behind streams a reconcile pass listed: their status and how long
-- they have been final (NULL while not final), so a pass leaves a just-finished
-- job's stream to that job's own teardown.
SELECT id, status, extract(epoch FROM now() - finished_at)::float8 AS final_for_s
FROM jobs WHERE id = ANY(%(job_ids)s::bigint[]);
