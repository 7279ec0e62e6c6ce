-- Dialtone call records: one row per call in call_sessions, the append-only event ledger in
-- call_events, and one table per kind of detail the admin API shows.
--
-- Events can arrive in any order (and before call.started), so every column the writer fills is
-- nullable or defaulted; started_at is the time of the call's earliest event seen so far.

CREATE TABLE call_sessions (
    id             bigserial PRIMARY KEY,
    call_sid       text NOT NULL UNIQUE,
    agent          text,
    direction      text,
    from_number    text,
    to_number      text,
    stream_sid     text,
    started_at     timestamptz NOT NULL,
    ended_at       timestamptz,
    end_reason     text,
    -- status_rank orders competing statuses: 0 in progress, 1 implied by call.ended,
    -- 2 a reported terminal status; within a rank the later status_at wins.
    status         text,
    status_rank    smallint NOT NULL DEFAULT 0,
    status_at      timestamptz,
    answered_by    text,
    outcome        text,
    outcome_detail text,
    outcome_at     timestamptz,
    transferred_to text,
    -- Ordered array of {seq, role, text, agent, source, interrupted, at}, rebuilt from
    -- transcript_lines whenever a line lands, so a reader needs no join for the whole transcript.
    transcript     jsonb NOT NULL DEFAULT '[]',
    usage          jsonb NOT NULL DEFAULT '{}',
    cost_usd       numeric(14, 6) NOT NULL DEFAULT 0,
    metrics        jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The admin list: newest first with keyset pagination, optionally filtered.
CREATE INDEX call_sessions_started_idx ON call_sessions (started_at DESC, id DESC);
CREATE INDEX call_sessions_outcome_started_idx ON call_sessions (outcome, started_at DESC, id DESC);
CREATE INDEX call_sessions_status_started_idx ON call_sessions (status, started_at DESC, id DESC);
CREATE INDEX call_sessions_agent_started_idx ON call_sessions (agent, started_at DESC, id DESC);

-- The idempotency ledger: an event id (also its Nats-Msg-Id) is applied at most once.
CREATE TABLE call_events (
    event_id    text PRIMARY KEY,
    call_sid    text NOT NULL,
    type        text NOT NULL,
    at          timestamptz NOT NULL,
    payload     jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX call_events_call_idx ON call_events (call_sid, at);

CREATE TABLE transcript_lines (
    call_sid    text NOT NULL,
    seq         integer NOT NULL,
    item_id     text NOT NULL,
    role        text NOT NULL,
    text        text NOT NULL,
    agent       text NOT NULL,
    source      text NOT NULL,
    interrupted boolean NOT NULL DEFAULT false,
    at          timestamptz NOT NULL,
    event_id    text NOT NULL,
    UNIQUE (call_sid, item_id)
);
CREATE INDEX transcript_lines_call_seq_idx ON transcript_lines (call_sid, seq);
-- Full-text search without extensions ('simple': no stemming, so names and numbers match as said).
CREATE INDEX transcript_lines_text_fts_idx ON transcript_lines USING gin (to_tsvector('simple', text));

CREATE TABLE tool_calls (
    call_sid      text NOT NULL,
    tool_call_id  text NOT NULL,
    seq           integer NOT NULL,
    name          text NOT NULL,
    agent         text NOT NULL,
    arguments     jsonb,
    raw_arguments text,
    ok            boolean NOT NULL,
    result        jsonb,
    error         text,
    duration_ms   double precision NOT NULL,
    at            timestamptz NOT NULL,
    event_id      text NOT NULL,
    PRIMARY KEY (call_sid, tool_call_id)
);
CREATE INDEX tool_calls_call_seq_idx ON tool_calls (call_sid, seq);

CREATE TABLE call_usage (
    event_id text PRIMARY KEY,
    call_sid text NOT NULL,
    source   text NOT NULL,
    ref      text NOT NULL,
    model    text NOT NULL,
    usage    jsonb NOT NULL,
    -- The counters of the admin API's usage object, flattened from the provider's usage.
    counters jsonb NOT NULL,
    cost_usd numeric(14, 6) NOT NULL,
    at       timestamptz NOT NULL
);
CREATE INDEX call_usage_call_idx ON call_usage (call_sid);

CREATE TABLE call_status_history (
    event_id    text PRIMARY KEY,
    call_sid    text NOT NULL,
    status      text NOT NULL,
    source      text NOT NULL,
    answered_by text,
    sequence    integer,
    duration_s  integer,
    at          timestamptz NOT NULL
);
CREATE INDEX call_status_history_call_idx ON call_status_history (call_sid, at);

CREATE TABLE agent_changes (
    event_id   text PRIMARY KEY,
    call_sid   text NOT NULL,
    from_agent text NOT NULL,
    to_agent   text NOT NULL,
    at         timestamptz NOT NULL
);
CREATE INDEX agent_changes_call_idx ON agent_changes (call_sid, at);
