-- What became of each signal (docs/outcomes.md): a close is one signal_events row (kind
-- its status, data the close's SIGNAL_UPDATE data), and its seqs are rows of
-- signal_channels like the signal's, with event_pos naming the close: a seq is a
-- channel's message, the signal's or its close's, and is given once either way.
ALTER TABLE signals.signal_channels ADD COLUMN event_pos BIGINT REFERENCES signals.signal_events (event_pos);
-- A signal closes once.
CREATE UNIQUE INDEX signal_events_close ON signals.signal_events (signal_id)
    WHERE kind IN ('target_hit', 'stop_hit', 'expired', 'closed');
