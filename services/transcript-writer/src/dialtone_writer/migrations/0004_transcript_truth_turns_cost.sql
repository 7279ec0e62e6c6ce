-- What the caller heard, turn by turn, and what the call cost by kind.
--
-- transcript_lines: rev orders the publications of one item's line (a barge-in corrects a line
-- already written; the highest rev wins, whatever order events arrive in); offset_ms places the
-- line from the start of the media stream; heard_ms of audio_ms is what the caller heard of an
-- agent line; full_text is the whole generated text of a line the caller cut off (text is cut).
ALTER TABLE transcript_lines
    ADD COLUMN rev       integer NOT NULL DEFAULT 0,
    ADD COLUMN offset_ms double precision,
    ADD COLUMN heard_ms  double precision,
    ADD COLUMN audio_ms  double precision,
    ADD COLUMN full_text text;

-- One row per answered turn (turn.measured): the caller stopped speaking -> the first audio of the
-- reply sent (sent_ms) and heard (heard_ms, null when talked over first); tool time within it.
-- Keyed by event: a bridge that takes a call over numbers its turns afresh.
CREATE TABLE call_turns (
    event_id  text PRIMARY KEY,
    call_sid  text NOT NULL,
    turn      integer NOT NULL,
    item_id   text,
    offset_ms double precision,
    sent_ms   double precision NOT NULL,
    heard_ms  double precision,
    tool_ms   double precision NOT NULL DEFAULT 0,
    tools     integer NOT NULL DEFAULT 0,
    at        timestamptz NOT NULL
);
CREATE INDEX call_turns_call_idx ON call_turns (call_sid, at);

-- The cost of each usage event by kind of the session's breakdown (audio_in, audio_out, text_in,
-- text_out, cached, transcription), as {"<kind>_usd": dollars, "<kind>_tokens": tokens}, priced
-- by the bridge; call_sessions.cost_breakdown is their sum per call.
ALTER TABLE call_usage ADD COLUMN breakdown jsonb NOT NULL DEFAULT '{}';
ALTER TABLE call_sessions ADD COLUMN cost_breakdown jsonb NOT NULL DEFAULT '{}';
