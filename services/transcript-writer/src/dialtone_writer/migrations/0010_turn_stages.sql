-- Turn latency by stage: when the model's first audio of the answer reached the bridge (ms from
-- the caller's stop), beside sent_ms and heard_ms. Null for turns measured before it existed.
ALTER TABLE call_turns ADD COLUMN IF NOT EXISTS received_ms double precision;
