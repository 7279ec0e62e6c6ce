-- A caller line whose words could not be transcribed is kept, flagged, with empty text: the
-- caller said something, and the transcript must show that rather than drop the line.
ALTER TABLE transcript_lines ADD COLUMN untranscribed boolean NOT NULL DEFAULT false;
