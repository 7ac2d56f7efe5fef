-- 010: a result counts only for the task whose stream message it answers.
--
-- job_tasks.stream_seq says where the task's message sits in its job's
-- stream (jobsys/streams.py writes it from the PubAcks of each published
-- chunk; a deduplicated publish's PubAck names the original message):
--
--   NULL  where a first fill into a fresh stream stores it: task_no + 1.
--         Trusted only once published_count has passed the task: its chunk's
--         PubAcks were compared, and any task stored elsewhere has its own
--         sequence written. (So a first fill writes next to nothing.)
--   n > 0 the sequence the PubAck named, when it is not task_no + 1.
--   0     no message known: never published (too large for the server), or
--         its stream was re-created and it is not republished yet.
--
-- The counting statement (record_results) moves a pending task in one
-- statement when the item's reply names this sequence; anything else is
-- checked against the stream itself (jobsys/ledger.py) and rejected unless
-- the message there carries the task's Nats-Msg-Id.
--
-- No index: it is read only through the primary key, and an index on it
-- would make every result update non-HOT.
ALTER TABLE job_tasks ADD COLUMN stream_seq bigint CHECK (stream_seq >= 0);

COMMENT ON COLUMN job_tasks.stream_seq IS
    'Where the task''s message sits in its job''s stream: NULL = task_no + 1 once published, '
    '0 = none known (jobsys/streams.py, sql/010_result_binding.sql).';

-- Jobs already publishing when this runs were filled without comparing
-- PubAcks: where their published tasks sit is not known (0), so their
-- results are checked against the stream (one lookup each) until they end.
UPDATE job_tasks t SET stream_seq = 0
FROM jobs j
WHERE t.job_id = j.id AND j.status IN ('started', 'canceling')
  AND t.task_no < j.published_count;
