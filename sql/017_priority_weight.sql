-- A job's share of the processors' execution slots (docs/processor.md,
-- "How slots are shared"): when slots are short, tasks of a higher
-- `priority` start first; among jobs of one priority, slots go in
-- proportion to `weight` while each has work. Set at submit, changed on an
-- active job by `jobsys set` (a guarded update of these two columns only);
-- processors learn them from the job stream's description.
ALTER TABLE jobs ADD COLUMN priority integer NOT NULL DEFAULT 0
    CHECK (priority BETWEEN -1000 AND 1000);
ALTER TABLE jobs ADD COLUMN weight integer NOT NULL DEFAULT 1
    CHECK (weight BETWEEN 1 AND 1000);
