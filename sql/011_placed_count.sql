-- 011: where a fill has placed tasks before their PubAcks come back.
--
-- A first fill into a fresh, empty stream stores task n at sequence n + 1
-- (tasks in order, one message each). Results of a chunk's tasks often come
-- back before the chunk's PubAcks are compared and published_count moves past
-- it; before this column those results were checked against the stream one
-- NATS request each (jobsys/ledger.py), which made the worker the bottleneck.
--
-- placed_count: the fill (jobsys/streams.py) raises it to a chunk's end
-- *before* publishing the chunk, only when that chunk goes in order into a
-- fresh stream (every task pending, contiguous, none too large), so a reply
-- naming task_no + 1 for a task below it names the message that task has or
-- is about to have. The counting statement trusts the recorded place of tasks
-- below greatest(published_count, placed_count). Every fill starts by setting
-- it back to published_count (a guess of a fill that died is not kept), and
-- a chunk whose PubAcks contradict the guess has its real places written as
-- before.
ALTER TABLE jobs ADD COLUMN placed_count integer NOT NULL DEFAULT 0
    CHECK (placed_count >= 0);

COMMENT ON COLUMN jobs.placed_count IS
    'Tasks below this sit at task_no + 1 in a fresh stream, placed before their PubAcks '
    '(sql/011_placed_count.sql).';
