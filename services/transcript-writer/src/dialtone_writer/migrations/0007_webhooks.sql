-- Webhooks to the operator's systems (docs/CONTRACTS.md, Webhooks).
--
-- webhook_deliveries is an outbox: the writer inserts a call's deliveries in the transaction that
-- applies its call.started / call.ended / call.analyzed event, so a delivery exists exactly when
-- its event is in the database, and the session row it carries is complete. The deliverer (a
-- worker of the writer) sends them; a row is never deleted by it: delivered and dead ones stay
-- for the admin API's list, its resend and its replay.
--
-- id is the webhook-id header: derived from the endpoint's name and the event id, so a retry, a
-- redelivered event and a restarted deliverer all send the same id.
CREATE TABLE webhook_deliveries (
    id              text PRIMARY KEY,
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    endpoint        text NOT NULL,          -- "global" (WEBHOOK_URL) or "<agent>/<name>" (agent.toml)
    url             text NOT NULL,          -- where it went when enqueued (the endpoint's current one is used)
    event_id        text NOT NULL,
    event_type      text NOT NULL,
    call_sid        text NOT NULL,
    event_at        timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- pending: to be sent (first try or a retry); delivered: a 2xx came back; dead: retries ran
    -- out (or the endpoint refused it for good): kept here, resent only by an operator.
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- Retries stop once now() passes retry_from + WEBHOOK_RETRY_FOR_S (a resend or replay resets it).
    retry_from      timestamptz NOT NULL DEFAULT now(),
    locked_until    timestamptz,            -- a deliverer's claim on a sending attempt (its lease)
    payload         text,                   -- the body, built at the first attempt and sent unchanged after
    delivered_at    timestamptz,
    last_status     integer,
    last_error      text
);
-- A deliverer's claim: the pending deliveries of its endpoint that are due.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (endpoint, next_attempt_at) WHERE status = 'pending';
-- Order per call: a delivery waits while an earlier one of the same call and endpoint is pending.
CREATE INDEX webhook_deliveries_order_idx ON webhook_deliveries (endpoint, call_sid, event_at, seq)
    WHERE status = 'pending';
-- The admin API's list (newest first, keyset on created_at, seq), its filters and the replay.
CREATE INDEX webhook_deliveries_list_idx ON webhook_deliveries (created_at DESC, seq DESC);
CREATE INDEX webhook_deliveries_call_idx ON webhook_deliveries (call_sid);
CREATE INDEX webhook_deliveries_event_at_idx ON webhook_deliveries (event_at);

-- Every attempt of a delivery: when, what came back (status, first 200 bytes) or what failed.
CREATE TABLE webhook_attempts (
    delivery_id text NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    n           integer NOT NULL,
    at          timestamptz NOT NULL,
    status_code integer,
    latency_ms  double precision NOT NULL,
    response    text,
    error       text,
    PRIMARY KEY (delivery_id, n)
);

-- The latest analysis of a call (its call.analyzed event), served with the session.
ALTER TABLE call_sessions ADD COLUMN analysis jsonb, ADD COLUMN analysis_at timestamptz;
