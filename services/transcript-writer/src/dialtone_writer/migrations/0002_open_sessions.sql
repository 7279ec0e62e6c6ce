-- The sweeper looks for open sessions that have gone quiet; a partial index keeps that query
-- proportional to the calls in flight, not to every call ever made.
CREATE INDEX call_sessions_open_idx ON call_sessions (updated_at) WHERE ended_at IS NULL;
