-- What became of each signal (docs/outcomes.md): a close is one signal_events row, kind
-- its status, with its prices and return as numbers for the scoreboard, and the seq its
-- SIGNAL_UPDATE took on each channel that carried the signal (resume and history
-- replay closes in seq order with the signals).
ALTER TABLE signal_events ADD COLUMN entry_price INTEGER;  -- ten-thousandths
ALTER TABLE signal_events ADD COLUMN exit_price INTEGER;
ALTER TABLE signal_events ADD COLUMN return_pct INTEGER;   -- ten-thousandths of a percent
ALTER TABLE signal_events ADD COLUMN seq_free INTEGER;
ALTER TABLE signal_events ADD COLUMN seq_basic INTEGER;
ALTER TABLE signal_events ADD COLUMN seq_premium INTEGER;
ALTER TABLE signal_events ADD COLUMN seq_enterprise INTEGER;
CREATE UNIQUE INDEX signal_events_seq_free ON signal_events (seq_free) WHERE seq_free IS NOT NULL;
CREATE UNIQUE INDEX signal_events_seq_basic ON signal_events (seq_basic) WHERE seq_basic IS NOT NULL;
CREATE UNIQUE INDEX signal_events_seq_premium ON signal_events (seq_premium) WHERE seq_premium IS NOT NULL;
CREATE UNIQUE INDEX signal_events_seq_enterprise ON signal_events (seq_enterprise) WHERE seq_enterprise IS NOT NULL;
-- A signal closes once.
CREATE UNIQUE INDEX signal_events_close ON signal_events (signal_id)
    WHERE kind IN ('target_hit', 'stop_hit', 'expired', 'closed');
-- Open signals at start: the ones not expired, newest first.
CREATE INDEX trading_signals_expires ON trading_signals (expires_at);
