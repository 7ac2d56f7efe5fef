-- 016: retries you can see, failures you can read.
--
-- jobs.retry_delay_s, retry_delay_max_s: the backoff between deliveries of a
-- task that failed transiently (`jobsys submit --retry-delay BASE[,MAX]`):
-- BASE seconds after the first failure, doubling up to MAX, with jitter.
-- NULL: the pipeline's own (`@pipeline(retry_delay=...)`), else the
-- processor's settings (JOBSYS_RETRY_DELAY_S, JOBSYS_RETRY_DELAY_MAX_S).
-- jobs.rate_per_s: at most this many of the job's tasks start per second,
-- across all processors (`jobsys submit --rate N/s`); NULL: no limit of its own.
-- job_tasks.next_attempt_at, last_error: a pending task that failed
-- transiently and waits for its next delivery, as a processor reported it
-- (for `jobsys tasks --status pending` and `blocked`; never counted).
-- job_tasks.error_type, error_trace: a failed task's exception class and
-- its traceback, cut (`jobsys tasks --status failed --json`, `--by-error`).

ALTER TABLE jobs
    ADD COLUMN retry_delay_s double precision CHECK (retry_delay_s >= 0),
    ADD COLUMN retry_delay_max_s double precision CHECK (retry_delay_max_s >= retry_delay_s),
    ADD COLUMN rate_per_s double precision CHECK (rate_per_s > 0);

ALTER TABLE job_tasks
    ADD COLUMN next_attempt_at timestamptz,
    ADD COLUMN last_error text,
    ADD COLUMN error_type text,
    ADD COLUMN error_trace text;
