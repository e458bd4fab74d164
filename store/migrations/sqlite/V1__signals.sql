-- Every routed signal, append-only, after the source architecture's
-- signals.trading_signals. Prices are DECIMAL(15,4) kept as integer ten-thousandths,
-- confidence DECIMAL(5,2) as hundredths, times as integer nanoseconds since the epoch.
--
-- One row per signal also carries the seq it took on each channel (NULL where it did
-- not enter): one insert per signal instead of one more per channel, which is most of
-- what the store costs the pipeline (docs/PERFORMANCE.md). analysis_data and
-- market_conditions are read out of the stored SIGNAL_UPDATE data (generated columns,
-- not stored twice).
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
    ingest_ts            INTEGER NOT NULL,
    routed_ts            INTEGER NOT NULL,
    created_at           INTEGER NOT NULL,
    seq_free             INTEGER,              -- the seq it took on signals_free, …
    seq_basic            INTEGER,
    seq_premium          INTEGER,
    seq_enterprise       INTEGER,
    data                 TEXT    NOT NULL,     -- the SIGNAL_UPDATE data, encoded once
    analysis_data        TEXT GENERATED ALWAYS AS (json_extract(data, '$.analysis')) VIRTUAL,
    market_conditions    TEXT GENERATED ALWAYS AS (json_extract(data, '$.market')) VIRTUAL
);
CREATE INDEX trading_signals_routed ON trading_signals (routed_ts, pos);
CREATE INDEX trading_signals_symbol ON trading_signals (symbol, exchange, routed_ts, pos);
CREATE INDEX trading_signals_source ON trading_signals (source_id, routed_ts, pos);
-- A seq is never given twice on a channel.
CREATE UNIQUE INDEX trading_signals_seq_free ON trading_signals (seq_free) WHERE seq_free IS NOT NULL;
CREATE UNIQUE INDEX trading_signals_seq_basic ON trading_signals (seq_basic) WHERE seq_basic IS NOT NULL;
CREATE UNIQUE INDEX trading_signals_seq_premium ON trading_signals (seq_premium) WHERE seq_premium IS NOT NULL;
CREATE UNIQUE INDEX trading_signals_seq_enterprise ON trading_signals (seq_enterprise) WHERE seq_enterprise IS NOT NULL;

-- The epoch of each channel's log.
CREATE TABLE channel_epochs (
    tier  INTEGER PRIMARY KEY,  -- 0 free, 1 basic, 2 premium, 3 enterprise
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
