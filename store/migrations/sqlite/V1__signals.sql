-- Every routed signal, append-only, after the source architecture's
-- signals.trading_signals. Prices are DECIMAL(15,4) kept as integer ten-thousandths,
-- confidence DECIMAL(5,2) as hundredths, times as integer nanoseconds since the epoch.
CREATE TABLE trading_signals (
    pos                  INTEGER PRIMARY KEY,  -- the store's order: keyset pagination
    id                   TEXT    NOT NULL UNIQUE,
    source_id            TEXT    NOT NULL,
    source_type          TEXT    NOT NULL,
    producer_id          TEXT,
    symbol               TEXT    NOT NULL,
    exchange             TEXT    NOT NULL,
    category             TEXT    NOT NULL,
    signal_type          TEXT    NOT NULL,
    entry_price          INTEGER NOT NULL,
    target_price         INTEGER NOT NULL,
    stop_loss            INTEGER NOT NULL,
    quantity_recommended INTEGER,
    confidence_level     INTEGER NOT NULL,
    generated_at         INTEGER NOT NULL,
    expires_at           INTEGER NOT NULL,
    analysis_data        TEXT,                 -- JSON
    market_conditions    TEXT,                 -- JSON: the snapshot it was routed with
    ingest_ts            INTEGER NOT NULL,
    routed_ts            INTEGER NOT NULL,
    created_at           INTEGER NOT NULL,
    data                 TEXT    NOT NULL      -- the SIGNAL_UPDATE data, encoded once
);
CREATE INDEX trading_signals_routed ON trading_signals (routed_ts, pos);
CREATE INDEX trading_signals_symbol ON trading_signals (symbol, exchange, routed_ts, pos);
CREATE INDEX trading_signals_source ON trading_signals (source_id, routed_ts, pos);

-- Each channel (tier) and seq a signal entered; a seq is never reused.
CREATE TABLE signal_channels (
    tier INTEGER NOT NULL,  -- 0 free, 1 basic, 2 premium, 3 enterprise
    seq  INTEGER NOT NULL,
    pos  INTEGER NOT NULL REFERENCES trading_signals (pos),
    PRIMARY KEY (tier, seq)
) WITHOUT ROWID;
CREATE INDEX signal_channels_pos ON signal_channels (pos, tier);

-- The epoch of each channel's log.
CREATE TABLE channel_epochs (
    tier  INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL
);

-- Later facts about a signal (its outcome), append-only, never an update.
CREATE TABLE signal_events (
    event_pos INTEGER PRIMARY KEY,
    signal_id TEXT    NOT NULL REFERENCES trading_signals (id),
    kind      TEXT    NOT NULL,
    at        INTEGER NOT NULL,
    data      TEXT    NOT NULL
);
CREATE INDEX signal_events_signal ON signal_events (signal_id, event_pos);
