-- Soft delete on the tables the seed schema gives it and 0001 left out: a row with a
-- `deleted_at` is deleted for every reader, and kept.
ALTER TABLE meeting_participants ADD COLUMN deleted_at TIMESTAMPTZ;
ALTER TABLE signaling_sessions ADD COLUMN deleted_at TIMESTAMPTZ;
ALTER TABLE signaling_messages ADD COLUMN deleted_at TIMESTAMPTZ;
