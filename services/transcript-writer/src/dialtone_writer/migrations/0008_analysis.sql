-- Post-call analysis (docs/CONTRACTS.md, Analysis): one job per analysed call.
--
-- The writer's analysis worker inserts a call's job when its call.ended arrives (an agent with an
-- [analysis] table only) and keeps it here across restarts: attempts survive a crash, a finished
-- job is never run again, and the result is stored before its call.analyzed event is published,
-- so a worker that dies between the two republishes the same event (same id) rather than asking
-- the model again.
CREATE TABLE analysis_jobs (
    call_sid     text PRIMARY KEY,
    agent        text,
    -- pending: to be run (or running); done: its call.analyzed event is published;
    -- failed: the last allowed attempt failed (reason says why).
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    reason       text,
    model        text NOT NULL,
    cost_usd     numeric(14, 8) NOT NULL DEFAULT 0,
    tokens       jsonb NOT NULL DEFAULT '{}',   -- input, cached, output
    result       jsonb,                         -- the call.analyzed event, once the model answered
    latency_ms   double precision,              -- the call's end to the stored result
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX analysis_jobs_open_idx ON analysis_jobs (created_at) WHERE status = 'pending';

-- The call list's verdict filter (verdict=success|failure), newest first like the other filters.
CREATE INDEX call_sessions_verdict_idx ON call_sessions (((analysis -> 'verdict' ->> 'success')), started_at DESC, id DESC)
    WHERE analysis IS NOT NULL;

-- Full-text search covers the analysis summary too: its own GIN index, OR'ed with the transcript's.
CREATE INDEX call_sessions_summary_fts_idx ON call_sessions
    USING gin (to_tsvector('simple', coalesce(analysis ->> 'summary', '')));
