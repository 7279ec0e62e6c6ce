-- One row per recorded call, written by the transcript-writer's recorder once the WAV is stored.
-- complete = false says audio is missing (a recorder restart, frames lost on the bus, the recorder
-- joining late) and reason says what; peaks are the waveform (max |sample| per bucket, 0..1).
-- No foreign key to call_sessions: a recording may be stored before the call's first event is.
CREATE TABLE call_recordings (
    call_sid       text PRIMARY KEY,
    storage_key    text NOT NULL,
    bytes          bigint NOT NULL,
    duration_ms    integer NOT NULL,
    sample_rate    integer NOT NULL DEFAULT 8000,
    channels       smallint NOT NULL DEFAULT 2,
    complete       boolean NOT NULL,
    reason         text,
    bucket_samples integer NOT NULL,
    peaks          jsonb NOT NULL,
    recorded_by    text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- The retention sweep deletes the oldest first.
CREATE INDEX call_recordings_created_idx ON call_recordings (created_at);
