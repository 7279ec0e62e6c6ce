-- Test calls (docs/CONTRACTS.md, Test calls): a call placed by `dialtone eval` carries the variable
-- dialtone_eval, the id of its test run; the writer keeps it here from call.started. The overview
-- leaves test calls out of its counts and costs by default; the call list filters on it.
ALTER TABLE call_sessions ADD COLUMN test_run text;
CREATE INDEX call_sessions_test_run_idx ON call_sessions (test_run, started_at DESC, id DESC)
    WHERE test_run IS NOT NULL;

-- Test runs started from the dashboard's Tests page and placed by a test worker (dialtone eval on
-- the running platform): one row per run, one per test call with each expectation's verdict. The
-- worker writes them; the admin API reads them (runs, pass rates over time per scenario).
CREATE TABLE eval_runs (
    run_id       text PRIMARY KEY,
    status       text NOT NULL CHECK (status IN ('queued', 'running', 'passed', 'failed', 'error')),
    agent        text,            -- the run's filters (null: every agent, every scenario)
    scenario     text,
    runs         integer NOT NULL,
    total        integer NOT NULL DEFAULT 0,   -- test calls to place
    done         integer NOT NULL DEFAULT 0,
    passed       integer NOT NULL DEFAULT 0,
    simulated    boolean NOT NULL,             -- the models were Dialtone's simulators (plumbing only)
    error        text,
    requested_by text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX eval_runs_created_idx ON eval_runs (created_at DESC);

CREATE TABLE eval_results (
    run_id     text NOT NULL REFERENCES eval_runs (run_id) ON DELETE CASCADE,
    scenario   text NOT NULL,     -- <agent>/<name>
    engine     text NOT NULL,
    run        integer NOT NULL,  -- 1..runs
    call_sid   text,
    passed     boolean NOT NULL,
    error      text,
    checks     jsonb NOT NULL DEFAULT '[]',   -- [{name, passed, expected, actual, reasoning}]
    seconds    double precision NOT NULL DEFAULT 0,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, scenario, engine, run)
);
CREATE INDEX eval_results_scenario_idx ON eval_results (scenario, at DESC);
