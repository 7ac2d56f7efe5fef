-- 004: what the reconciler reads about a job, as one view.
--
-- A pass reads every active job from it, and each job again under its lock
-- (by id: the predicate reaches the jobs primary key through the view).
-- Before, these were two copies of the same query.

CREATE VIEW job_reconcile_state AS
SELECT j.id, j.status, j.pipeline, j.max_deliver, j.total_count, j.published_count,
       j.done_count, j.failed_count, j.lost_count, j.cancelled_count,
       extract(epoch FROM now() - greatest(j.progress_at, coalesce(j.started_at, j.created_at)))
           AS idle_s,
       CASE WHEN j.status = 'canceling' THEN extract(epoch FROM now() - coalesce(
           (SELECT max(e.at) FROM job_events e
            WHERE e.job_id = j.id AND e.event = 'status' AND e.detail->>'to' = 'canceling'),
           j.progress_at)) END AS canceling_s,
       l.pending, l.done, l.failed, l.lost, l.cancelled, l.total
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
