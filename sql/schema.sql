-- The current jobsys schema, made from the migrations in this folder by
-- `python -m devtools.schema` (do not edit: change a migration, or add one,
-- then run it again). `jobsys db migrate` applies the migrations, not this file.

CREATE FUNCTION public.job_minutes_count() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO job_minutes AS m (job_id, minute, done, failed, lost)
    VALUES (NEW.id, date_trunc('minute', now()),
            NEW.done_count - OLD.done_count,
            NEW.failed_count - OLD.failed_count,
            NEW.lost_count - OLD.lost_count)
    ON CONFLICT (job_id, minute) DO UPDATE
    SET done = m.done + EXCLUDED.done,
        failed = m.failed + EXCLUDED.failed,
        lost = m.lost + EXCLUDED.lost;
    RETURN NULL;
END;
$$;

CREATE TABLE public.job_minutes (
    job_id bigint NOT NULL,
    minute timestamp with time zone NOT NULL,
    done integer DEFAULT 0 NOT NULL,
    failed integer DEFAULT 0 NOT NULL,
    lost integer DEFAULT 0 NOT NULL
)
WITH (fillfactor='70');

CREATE TABLE public.jobs (
    id bigint NOT NULL,
    name text DEFAULT ''::text NOT NULL,
    pipeline text NOT NULL,
    status text DEFAULT 'queued'::text NOT NULL,
    total_count integer NOT NULL,
    published_count integer DEFAULT 0 NOT NULL,
    done_count integer DEFAULT 0 NOT NULL,
    failed_count integer DEFAULT 0 NOT NULL,
    lost_count integer DEFAULT 0 NOT NULL,
    cancelled_count integer DEFAULT 0 NOT NULL,
    failure_threshold double precision DEFAULT 0 NOT NULL,
    max_deliver integer NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    progress_at timestamp with time zone DEFAULT now() NOT NULL,
    stream_created timestamp with time zone,
    task_timeout_s double precision,
    max_in_flight integer,
    parent_id bigint,
    root_id bigint,
    on_complete text,
    ledger_state text DEFAULT 'kept'::text NOT NULL,
    ledger_pruned_at timestamp with time zone,
    placed_count integer DEFAULT 0 NOT NULL,
    hook_target text,
    retry_delay_s double precision,
    retry_delay_max_s double precision,
    rate_per_s double precision,
    priority integer DEFAULT 0 NOT NULL,
    weight integer DEFAULT 1 NOT NULL,
    CONSTRAINT jobs_cancelled_count_check CHECK ((cancelled_count >= 0)),
    CONSTRAINT jobs_check CHECK ((retry_delay_max_s >= retry_delay_s)),
    CONSTRAINT jobs_done_count_check CHECK ((done_count >= 0)),
    CONSTRAINT jobs_failed_count_check CHECK ((failed_count >= 0)),
    CONSTRAINT jobs_failure_threshold_check CHECK (((failure_threshold >= (0)::double precision) AND (failure_threshold <= (1)::double precision))),
    CONSTRAINT jobs_ledger_state_check CHECK ((ledger_state = ANY (ARRAY['kept'::text, 'pruning'::text, 'pruned'::text]))),
    CONSTRAINT jobs_lost_count_check CHECK ((lost_count >= 0)),
    CONSTRAINT jobs_max_deliver_check CHECK ((max_deliver >= 1)),
    CONSTRAINT jobs_max_in_flight_check CHECK ((max_in_flight >= 1)),
    CONSTRAINT jobs_placed_count_check CHECK ((placed_count >= 0)),
    CONSTRAINT jobs_priority_check CHECK (((priority >= '-1000'::integer) AND (priority <= 1000))),
    CONSTRAINT jobs_published_count_check CHECK ((published_count >= 0)),
    CONSTRAINT jobs_rate_per_s_check CHECK ((rate_per_s > (0)::double precision)),
    CONSTRAINT jobs_retry_delay_s_check CHECK ((retry_delay_s >= (0)::double precision)),
    CONSTRAINT jobs_status_check CHECK ((status = ANY (ARRAY['queued'::text, 'started'::text, 'canceling'::text, 'success'::text, 'failure'::text, 'revoked'::text]))),
    CONSTRAINT jobs_task_timeout_s_check CHECK ((task_timeout_s > (0)::double precision)),
    CONSTRAINT jobs_total_count_check CHECK ((total_count >= 0)),
    CONSTRAINT jobs_weight_check CHECK (((weight >= 1) AND (weight <= 1000)))
);

COMMENT ON COLUMN public.jobs.stream_created IS 'NATS creation time of the stream the tasks below published_count were published to.';

COMMENT ON COLUMN public.jobs.placed_count IS 'Tasks below this sit at task_no + 1 in a fresh stream, placed before their PubAcks (sql/011_placed_count.sql).';

CREATE VIEW public.job_overview WITH (security_barrier='true') AS
 WITH win AS (
         SELECT now() AS now,
            (date_trunc('minute'::text, now()) - '00:04:00'::interval) AS since
        )
 SELECT j.id,
    j.name,
    j.pipeline,
    j.status,
    j.total_count AS total,
    j.done_count AS done,
    j.failed_count AS failed,
    j.lost_count AS lost,
    j.cancelled_count AS cancelled,
    c.pending,
        CASE
            WHEN (j.total_count = 0) THEN 100.0
            ELSE round(((100.0 * ((j.total_count - c.pending))::numeric) / (j.total_count)::numeric), 1)
        END AS percent,
    r.finished AS finished_5m,
    round(((r.finished)::numeric / s.minutes), 1) AS tasks_per_min,
        CASE
            WHEN ((j.status = 'started'::text) AND (r.finished > 0)) THEN make_interval(secs => (round(((((c.pending)::numeric * s.minutes) * (60)::numeric) / (r.finished)::numeric)))::double precision)
            ELSE NULL::interval
        END AS eta,
    date_trunc('second'::text, (w.now - j.created_at)) AS age,
    date_trunc('second'::text, (w.now - j.progress_at)) AS idle,
    j.progress_at,
    j.created_at,
    j.started_at,
    j.finished_at
   FROM ((((public.jobs j
     CROSS JOIN win w)
     CROSS JOIN LATERAL ( SELECT GREATEST(((((j.total_count - j.done_count) - j.failed_count) - j.lost_count) - j.cancelled_count), 0) AS pending) c)
     CROSS JOIN LATERAL ( SELECT (GREATEST(EXTRACT(epoch FROM (LEAST(w.now, COALESCE(j.finished_at, w.now)) - GREATEST(w.since, COALESCE(j.started_at, j.created_at)))), (1)::numeric) / 60.0) AS minutes) s)
     CROSS JOIN LATERAL ( SELECT COALESCE(GREATEST(sum(((m.done + m.failed) + m.lost)), (0)::bigint), (0)::bigint) AS finished
           FROM public.job_minutes m
          WHERE ((m.job_id = j.id) AND (m.minute >= w.since) AND (j.progress_at >= w.since))) r);

COMMENT ON VIEW public.job_overview IS 'Per job: counters, percent, tasks/min over the last 5 minutes, ETA, age, idle time.';

CREATE VIEW public.active_jobs WITH (security_barrier='true') AS
 SELECT job_overview.id,
    job_overview.name,
    job_overview.pipeline,
    job_overview.status,
    job_overview.total,
    job_overview.done,
    job_overview.failed,
    job_overview.lost,
    job_overview.cancelled,
    job_overview.pending,
    job_overview.percent,
    job_overview.finished_5m,
    job_overview.tasks_per_min,
    job_overview.eta,
    job_overview.age,
    job_overview.idle,
    job_overview.progress_at,
    job_overview.created_at,
    job_overview.started_at,
    job_overview.finished_at
   FROM public.job_overview
  WHERE (job_overview.status = ANY (ARRAY['queued'::text, 'started'::text, 'canceling'::text]))
  ORDER BY job_overview.progress_at DESC, job_overview.id DESC;

COMMENT ON VIEW public.active_jobs IS 'Queued, started and canceling jobs, most recent progress first.';

CREATE TABLE public.api_tokens (
    id bigint NOT NULL,
    name text NOT NULL,
    scope text NOT NULL,
    pipelines text[],
    token_hash bytea NOT NULL,
    fingerprint text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone,
    revoked_at timestamp with time zone,
    last_used_at timestamp with time zone,
    CONSTRAINT api_tokens_check CHECK (((scope <> 'admin'::text) OR (pipelines IS NULL))),
    CONSTRAINT api_tokens_name_check CHECK ((name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'::text)),
    CONSTRAINT api_tokens_pipelines_check CHECK (((pipelines IS NULL) OR (cardinality(pipelines) >= 1))),
    CONSTRAINT api_tokens_scope_check CHECK ((scope = ANY (ARRAY['read'::text, 'submit'::text, 'process'::text, 'admin'::text]))),
    CONSTRAINT api_tokens_token_hash_check CHECK ((octet_length(token_hash) = 32))
);

CREATE SEQUENCE public.api_tokens_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.api_tokens_id_seq OWNED BY public.api_tokens.id;

CREATE TABLE public.job_events (
    id bigint NOT NULL,
    job_id bigint,
    at timestamp with time zone DEFAULT now() NOT NULL,
    level text DEFAULT 'info'::text NOT NULL,
    event text NOT NULL,
    detail jsonb DEFAULT '{}'::jsonb NOT NULL,
    CONSTRAINT job_events_level_check CHECK ((level = ANY (ARRAY['debug'::text, 'info'::text, 'warning'::text, 'error'::text])))
);

CREATE SEQUENCE public.job_events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.job_events_id_seq OWNED BY public.job_events.id;

CREATE TABLE public.job_hooks (
    job_id bigint NOT NULL,
    target text NOT NULL,
    state text DEFAULT 'pending'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    next_at timestamp with time zone DEFAULT now() NOT NULL,
    lease_until timestamp with time zone,
    delivered_at timestamp with time zone,
    last_error text,
    CONSTRAINT job_hooks_attempts_check CHECK ((attempts >= 0)),
    CONSTRAINT job_hooks_state_check CHECK ((state = ANY (ARRAY['pending'::text, 'sending'::text, 'delivered'::text, 'failed'::text])))
);

CREATE TABLE public.job_tasks (
    job_id bigint NOT NULL,
    task_no integer NOT NULL,
    payload json NOT NULL,
    status text DEFAULT 'pending'::text NOT NULL,
    result json,
    error text,
    deliveries integer DEFAULT 0 NOT NULL,
    finished_at timestamp with time zone,
    origin_task integer,
    stream_seq bigint,
    next_attempt_at timestamp with time zone,
    last_error text,
    error_type text,
    error_trace text,
    CONSTRAINT job_tasks_origin_task_check CHECK ((origin_task >= 0)),
    CONSTRAINT job_tasks_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'done'::text, 'failed'::text, 'lost'::text, 'cancelled'::text]))),
    CONSTRAINT job_tasks_stream_seq_check CHECK ((stream_seq >= 0)),
    CONSTRAINT job_tasks_task_no_check CHECK ((task_no >= 0))
)
WITH (fillfactor='80');

COMMENT ON COLUMN public.job_tasks.stream_seq IS 'Where the task''s message sits in its job''s stream: NULL = task_no + 1 once published, 0 = none known (jobsys/streams.py, sql/010_result_binding.sql).';

CREATE VIEW public.job_reconcile_state AS
 SELECT j.id,
    j.status,
    j.pipeline,
    j.max_deliver,
    j.total_count,
    j.published_count,
    j.done_count,
    j.failed_count,
    j.lost_count,
    j.cancelled_count,
    EXTRACT(epoch FROM (now() - GREATEST(j.progress_at, COALESCE(j.started_at, j.created_at)))) AS idle_s,
        CASE
            WHEN (j.status = 'canceling'::text) THEN EXTRACT(epoch FROM (now() - COALESCE(( SELECT max(e.at) AS max
               FROM public.job_events e
              WHERE ((e.job_id = j.id) AND (e.event = 'status'::text) AND ((e.detail ->> 'to'::text) = 'canceling'::text))), j.progress_at)))
            ELSE NULL::numeric
        END AS canceling_s,
    l.pending,
    l.done,
    l.failed,
    l.lost,
    l.cancelled,
    l.total,
    j.stream_created
   FROM (public.jobs j
     CROSS JOIN LATERAL ( SELECT count(*) FILTER (WHERE (t.status = 'pending'::text)) AS pending,
            count(*) FILTER (WHERE (t.status = 'done'::text)) AS done,
            count(*) FILTER (WHERE (t.status = 'failed'::text)) AS failed,
            count(*) FILTER (WHERE (t.status = 'lost'::text)) AS lost,
            count(*) FILTER (WHERE (t.status = 'cancelled'::text)) AS cancelled,
            count(*) AS total
           FROM public.job_tasks t
          WHERE (t.job_id = j.id)) l)
  WHERE (j.status = ANY (ARRAY['queued'::text, 'started'::text, 'canceling'::text]));

CREATE VIEW public.job_throughput WITH (security_barrier='true') AS
 WITH minutes AS (
         SELECT generate_series((date_trunc('minute'::text, now()) - '00:59:00'::interval), date_trunc('minute'::text, now()), '00:01:00'::interval) AS minute
        ), per_job AS (
         SELECT m.minute,
            m.job_id,
            GREATEST(sum(m.done), (0)::bigint) AS done,
            GREATEST(sum(m.failed), (0)::bigint) AS failed,
            GREATEST(sum(m.lost), (0)::bigint) AS lost
           FROM public.job_minutes m
          WHERE (m.minute >= (date_trunc('minute'::text, now()) - '00:59:00'::interval))
          GROUP BY m.minute, m.job_id
        )
 SELECT p.minute,
    p.job_id,
    p.done,
    p.failed,
    p.lost,
    ((p.done + p.failed) + p.lost) AS finished
   FROM per_job p
UNION ALL
 SELECT mi.minute,
    NULL::bigint AS job_id,
    COALESCE(sum(p.done), (0)::numeric) AS done,
    COALESCE(sum(p.failed), (0)::numeric) AS failed,
    COALESCE(sum(p.lost), (0)::numeric) AS lost,
    COALESCE(sum(((p.done + p.failed) + p.lost)), (0)::numeric) AS finished
   FROM (minutes mi
     LEFT JOIN per_job p ON ((p.minute = mi.minute)))
  GROUP BY mi.minute;

COMMENT ON VIEW public.job_throughput IS 'Tasks finished per minute over the last hour, per job and (job_id NULL) for all jobs.';

CREATE SEQUENCE public.jobs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.jobs_id_seq OWNED BY public.jobs.id;

CREATE TABLE public.reconcile_findings (
    id bigint NOT NULL,
    run_id bigint,
    job_id bigint,
    at timestamp with time zone DEFAULT now() NOT NULL,
    kind text NOT NULL,
    action text NOT NULL,
    detail jsonb DEFAULT '{}'::jsonb NOT NULL,
    first_at timestamp with time zone DEFAULT now() NOT NULL,
    seen integer DEFAULT 1 NOT NULL,
    reason text,
    CONSTRAINT reconcile_findings_seen_check CHECK ((seen >= 1))
);

CREATE SEQUENCE public.reconcile_findings_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.reconcile_findings_id_seq OWNED BY public.reconcile_findings.id;

CREATE VIEW public.reconcile_findings_recent WITH (security_barrier='true') AS
 SELECT f.id,
    f.at,
    f.run_id,
    f.job_id,
    j.name,
    j.status AS job_status,
    f.kind,
    f.action,
    f.detail,
    f.first_at,
    f.seen,
    f.reason
   FROM (public.reconcile_findings f
     LEFT JOIN public.jobs j ON ((j.id = f.job_id)))
  WHERE (f.at > (now() - '1 day'::interval))
  ORDER BY f.at DESC, f.id DESC;

COMMENT ON VIEW public.reconcile_findings_recent IS 'Reconciler findings last seen in the last day: first seen, last seen (at), passes (seen).';

CREATE TABLE public.reconcile_runs (
    id bigint NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    trigger text DEFAULT 'actor'::text NOT NULL,
    jobs_checked integer DEFAULT 0 NOT NULL,
    findings integer DEFAULT 0 NOT NULL,
    detail jsonb DEFAULT '{}'::jsonb NOT NULL
);

CREATE SEQUENCE public.reconcile_runs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.reconcile_runs_id_seq OWNED BY public.reconcile_runs.id;

CREATE VIEW public.reconcile_runs_recent WITH (security_barrier='true') AS
 SELECT r.id,
    r.started_at,
    r.finished_at,
    (r.finished_at - r.started_at) AS took,
    r.trigger,
    r.jobs_checked,
    r.findings,
    r.detail
   FROM public.reconcile_runs r
  WHERE (r.started_at > (now() - '1 day'::interval))
  ORDER BY r.started_at DESC, r.id DESC;

COMMENT ON VIEW public.reconcile_runs_recent IS 'Reconciler passes of the last day.';

CREATE TABLE public.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE VIEW public.stuck_jobs WITH (security_barrier='true') AS
 SELECT o.id,
    o.name,
    o.pipeline,
    o.status,
    o.total,
    o.done,
    o.failed,
    o.lost,
    o.pending,
    o.percent,
    o.idle,
    o.age,
    o.progress_at,
    f.at AS finding_at,
    f.kind AS finding,
    f.action AS finding_action,
    f.detail AS finding_detail,
    f.seen AS finding_seen,
    f.first_at AS finding_first_at
   FROM (public.active_jobs o
     LEFT JOIN LATERAL ( SELECT rf.at,
            rf.kind,
            rf.action,
            rf.detail,
            rf.seen,
            rf.first_at
           FROM public.reconcile_findings rf
          WHERE (rf.job_id = o.id)
          ORDER BY rf.at DESC, rf.id DESC
         LIMIT 1) f ON (true))
  WHERE (o.progress_at < (now() - COALESCE((NULLIF(current_setting('jobsys.stuck_after'::text, true), ''::text))::interval, '00:02:00'::interval)))
  ORDER BY o.progress_at, o.id;

COMMENT ON VIEW public.stuck_jobs IS 'Active jobs with no progress for jobsys.stuck_after (default 2 min) and the reconciler''s latest finding on each.';

CREATE VIEW public.task_failures WITH (security_barrier='true') AS
 SELECT j.id AS job_id,
    j.name,
    j.status,
    e.error,
    e.tasks,
    e.example_task,
    e.last_at,
    e.rank
   FROM (public.jobs j
     CROSS JOIN LATERAL ( SELECT g.error,
            g.tasks,
            g.example_task,
            g.last_at,
            row_number() OVER (ORDER BY g.tasks DESC, g.error) AS rank
           FROM ( SELECT COALESCE(t.error, '(no message)'::text) AS error,
                    count(*) AS tasks,
                    min(t.task_no) AS example_task,
                    max(t.finished_at) AS last_at
                   FROM public.job_tasks t
                  WHERE ((t.job_id = j.id) AND (t.status = 'failed'::text))
                  GROUP BY COALESCE(t.error, '(no message)'::text)) g) e)
  WHERE (j.failed_count > 0);

COMMENT ON VIEW public.task_failures IS 'Error messages of failed tasks per job: count, an example task, rank within the job.';

ALTER TABLE ONLY public.api_tokens ALTER COLUMN id SET DEFAULT nextval('public.api_tokens_id_seq'::regclass);

ALTER TABLE ONLY public.job_events ALTER COLUMN id SET DEFAULT nextval('public.job_events_id_seq'::regclass);

ALTER TABLE ONLY public.jobs ALTER COLUMN id SET DEFAULT nextval('public.jobs_id_seq'::regclass);

ALTER TABLE ONLY public.reconcile_findings ALTER COLUMN id SET DEFAULT nextval('public.reconcile_findings_id_seq'::regclass);

ALTER TABLE ONLY public.reconcile_runs ALTER COLUMN id SET DEFAULT nextval('public.reconcile_runs_id_seq'::regclass);

ALTER TABLE ONLY public.api_tokens
    ADD CONSTRAINT api_tokens_fingerprint_key UNIQUE (fingerprint);

ALTER TABLE ONLY public.api_tokens
    ADD CONSTRAINT api_tokens_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.api_tokens
    ADD CONSTRAINT api_tokens_token_hash_key UNIQUE (token_hash);

ALTER TABLE ONLY public.job_events
    ADD CONSTRAINT job_events_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.job_hooks
    ADD CONSTRAINT job_hooks_pkey PRIMARY KEY (job_id);

ALTER TABLE ONLY public.job_minutes
    ADD CONSTRAINT job_minutes_pkey PRIMARY KEY (job_id, minute);

ALTER TABLE ONLY public.job_tasks
    ADD CONSTRAINT job_tasks_pkey PRIMARY KEY (job_id, task_no);

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.reconcile_findings
    ADD CONSTRAINT reconcile_findings_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.reconcile_runs
    ADD CONSTRAINT reconcile_runs_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

CREATE UNIQUE INDEX api_tokens_live_name_idx ON public.api_tokens USING btree (name) WHERE (revoked_at IS NULL);

CREATE INDEX job_events_event_idx ON public.job_events USING btree (event, id);

CREATE INDEX job_events_job_idx ON public.job_events USING btree (job_id, id);

CREATE INDEX job_hooks_due_idx ON public.job_hooks USING btree (next_at) WHERE (state = ANY (ARRAY['pending'::text, 'sending'::text]));

CREATE INDEX job_minutes_minute_idx ON public.job_minutes USING btree (minute);

CREATE INDEX job_tasks_origin_idx ON public.job_tasks USING btree (job_id, origin_task) WHERE (origin_task IS NOT NULL);

CREATE INDEX jobs_active_idx ON public.jobs USING btree (status) WHERE (status = ANY (ARRAY['queued'::text, 'started'::text, 'canceling'::text]));

CREATE INDEX jobs_created_idx ON public.jobs USING btree (created_at DESC);

CREATE INDEX jobs_parent_idx ON public.jobs USING btree (parent_id) WHERE (parent_id IS NOT NULL);

CREATE INDEX jobs_prunable_idx ON public.jobs USING btree (finished_at) WHERE ((ledger_state <> 'pruned'::text) AND (status = ANY (ARRAY['success'::text, 'failure'::text, 'revoked'::text])));

CREATE INDEX reconcile_findings_at_idx ON public.reconcile_findings USING btree (at DESC);

CREATE INDEX reconcile_findings_job_idx ON public.reconcile_findings USING btree (job_id, id DESC);

CREATE INDEX reconcile_findings_run_idx ON public.reconcile_findings USING btree (run_id);

CREATE TRIGGER jobs_count_minutes AFTER UPDATE OF done_count, failed_count, lost_count ON public.jobs FOR EACH ROW WHEN (((new.done_count <> old.done_count) OR (new.failed_count <> old.failed_count) OR (new.lost_count <> old.lost_count))) EXECUTE FUNCTION public.job_minutes_count();

ALTER TABLE ONLY public.job_hooks
    ADD CONSTRAINT job_hooks_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.jobs(id);

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_parent_id_fkey FOREIGN KEY (parent_id) REFERENCES public.jobs(id);

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_root_id_fkey FOREIGN KEY (root_id) REFERENCES public.jobs(id);

ALTER TABLE ONLY public.reconcile_findings
    ADD CONSTRAINT reconcile_findings_run_id_fkey FOREIGN KEY (run_id) REFERENCES public.reconcile_runs(id) ON DELETE CASCADE;
