-- Personal data kept out of storage, and who looked at what (docs/SECURITY.md).
--
-- transcript_lines.redacted: the kinds the writer took out of a line before storing it
-- (card_number, email, ..., dtmf for a hidden keypress); NULL when nothing was. The recorder beeps
-- over these lines in the call's recording.
ALTER TABLE transcript_lines ADD COLUMN redacted text[];

-- The audit log: every view or download of a call's transcript or recording by an operator,
-- written by the admin API. Kept AUDIT_RETENTION_DAYS (the writer's retention sweep deletes older
-- entries); never updated.
CREATE TABLE audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    -- who: "token" (the ADMIN_TOKEN bearer) or "session" (a dashboard sign-in), and the sign-in's
    -- public id (never the cookie or the token itself)
    actor_kind text NOT NULL CHECK (actor_kind IN ('token', 'session')),
    actor      text NOT NULL,
    -- what: view_call, export_transcript, download_recording, view_waveform, export_calls
    action     text NOT NULL,
    call_sid   text,                    -- the call, for actions on one call
    detail     jsonb NOT NULL DEFAULT '{}',
    -- from where: the client's address (through trusted proxies only) and browser
    client     text,
    user_agent text
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_call_idx ON audit_log (call_sid, at DESC) WHERE call_sid IS NOT NULL;
