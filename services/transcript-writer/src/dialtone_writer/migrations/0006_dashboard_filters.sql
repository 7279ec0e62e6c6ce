-- The dashboard's call list (owned by the admin API's pages).
--
-- Filters match case-insensitively (lower(column) = lower($1)), each in the list's newest-first
-- order, so a filtered page is an index range scan whatever the filter. The plain (column, ...)
-- indexes of 0001 stay: the filters' choices are read from them by a skip scan (distinct values).
CREATE INDEX call_sessions_agent_ci_idx ON call_sessions (lower(agent), started_at DESC, id DESC);
CREATE INDEX call_sessions_status_ci_idx ON call_sessions (lower(status), started_at DESC, id DESC);
CREATE INDEX call_sessions_outcome_ci_idx ON call_sessions (lower(outcome), started_at DESC, id DESC);
CREATE INDEX call_sessions_direction_ci_idx ON call_sessions (lower(direction), started_at DESC, id DESC);
CREATE INDEX call_sessions_direction_started_idx ON call_sessions (direction, started_at DESC, id DESC);
CREATE INDEX call_sessions_from_started_idx ON call_sessions (from_number, started_at DESC, id DESC);
CREATE INDEX call_sessions_to_started_idx ON call_sessions (to_number, started_at DESC, id DESC);

-- Full-text search per call rather than per line: the words of a call's whole transcript (the
-- jsonb array the writer keeps on the session), so "find the calls where X was said, newest
-- first" is one GIN lookup on call_sessions, with no join and no DISTINCT over lines.
CREATE FUNCTION dialtone_transcript_text(transcript jsonb) RETURNS text
-- COST: the planner must know this is dear per row, or for a common word it walks the newest-first
-- index recomputing every transcript (0.5 s at 1M calls) instead of asking the GIN index.
LANGUAGE sql IMMUTABLE PARALLEL SAFE COST 10000 AS $$
    SELECT coalesce(string_agg(e ->> 'text', ' '), '')
    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(transcript) = 'array' THEN transcript ELSE '[]' END) AS e
$$;
CREATE INDEX call_sessions_transcript_fts_idx ON call_sessions
    USING gin (to_tsvector('simple', dialtone_transcript_text(transcript)));
