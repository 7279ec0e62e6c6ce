-- Test calls (docs/CONTRACTS.md, Test calls): a call placed by `dialtone eval` carries the variable
-- dialtone_eval, the id of its test run; the writer keeps it here from call.started. The overview
-- leaves test calls out of its counts and costs by default; the call list filters on it.
ALTER TABLE call_sessions ADD COLUMN test_run text;
CREATE INDEX call_sessions_test_run_idx ON call_sessions (test_run, started_at DESC, id DESC)
    WHERE test_run IS NOT NULL;
