-- Every job with published tasks has the incarnation of its stream recorded
-- (jobs.stream_created, migration 005): jobs published before 005 get one that
-- is no stream's (the epoch), so the next fill of their stream republishes
-- their pending tasks, as it does for any stream that is not the recorded
-- one. (Republishing into the stream they are in only delivers a task twice;
-- its second result counts nothing.) The fill then needs no branch for
-- "nothing recorded".
UPDATE jobs SET stream_created = '1970-01-01 00:00:00+00'
WHERE stream_created IS NULL AND published_count > 0;
