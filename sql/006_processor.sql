-- 006: what processors need to know about a job, stored with it.
--
-- task_timeout_s: a task (or batch call) running longer is stopped and
-- counts as a transient failure (`jobsys submit --task-timeout`).
-- max_in_flight: at most this many of the job's tasks are delivered and
-- unacknowledged at once, across all processors (the consumer's
-- max_ack_pending; `jobsys submit --max-in-flight`).
-- NULL (jobs submitted before this migration): the settings' defaults.

ALTER TABLE jobs
    ADD COLUMN task_timeout_s double precision CHECK (task_timeout_s > 0),
    ADD COLUMN max_in_flight integer CHECK (max_in_flight >= 1);
