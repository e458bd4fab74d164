-- The signal store in PostgreSQL: the same logical schema as migrations/sqlite/V1, in
-- the schema `signals`, after the source architecture's signals.trading_signals.
-- Prices are DECIMAL(15,4), confidence DECIMAL(5,2), the signal's own times TIMESTAMPTZ
-- (microseconds); the ingest and routed times stay integer nanoseconds since the epoch:
-- they order history (a cursor is (routed_ts, pos), the same on both backends) and
-- carry the latency measurements at the engine's precision.
CREATE TABLE signals.trading_signals (
    pos                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- keyset order
    id                   UUID           NOT NULL UNIQUE,
    source_id            UUID           NOT NULL,
    source_type          TEXT           NOT NULL,
    producer_id          TEXT,
    symbol               TEXT           NOT NULL,
    exchange             TEXT           NOT NULL,
    category             TEXT           NOT NULL,
    signal_type          TEXT           NOT NULL,
    entry_price          DECIMAL(15, 4) NOT NULL,
    target_price         DECIMAL(15, 4) NOT NULL,
    stop_loss            DECIMAL(15, 4) NOT NULL,
    quantity_recommended BIGINT,
    confidence_level     DECIMAL(5, 2)  NOT NULL,
    generated_at         TIMESTAMPTZ    NOT NULL,
    expires_at           TIMESTAMPTZ    NOT NULL,
    analysis_data        JSONB,
    market_conditions    JSONB,         -- the market snapshot it was routed with
    ingest_ts            BIGINT         NOT NULL,  -- ns since the epoch
    routed_ts            BIGINT         NOT NULL,  -- ns since the epoch
    created_at           TIMESTAMPTZ    NOT NULL DEFAULT now(),
    data                 TEXT           NOT NULL   -- the SIGNAL_UPDATE data, encoded once
);
CREATE INDEX trading_signals_routed ON signals.trading_signals (routed_ts, pos);
CREATE INDEX trading_signals_symbol ON signals.trading_signals (symbol, exchange, routed_ts, pos);
CREATE INDEX trading_signals_source ON signals.trading_signals (source_id, routed_ts, pos);

-- Each channel (tier) and seq a signal entered; a seq is never reused.
CREATE TABLE signals.signal_channels (
    tier SMALLINT NOT NULL,  -- 0 free, 1 basic, 2 premium, 3 enterprise
    seq  BIGINT   NOT NULL,
    pos  BIGINT   NOT NULL REFERENCES signals.trading_signals (pos),
    PRIMARY KEY (tier, seq)
);
CREATE INDEX signal_channels_pos ON signals.signal_channels (pos, tier);

-- The epoch of each channel's log (u64 stored as its two's-complement BIGINT).
CREATE TABLE signals.channel_epochs (
    tier  SMALLINT PRIMARY KEY,
    epoch BIGINT   NOT NULL
);

-- Later facts about a signal (its outcome), append-only, never an update.
CREATE TABLE signals.signal_events (
    event_pos BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    signal_id UUID        NOT NULL REFERENCES signals.trading_signals (id),
    kind      TEXT        NOT NULL,
    at        TIMESTAMPTZ NOT NULL,
    data      TEXT        NOT NULL  -- the SIGNAL_UPDATE data as encoded (history serves it)
);
CREATE INDEX signal_events_signal ON signals.signal_events (signal_id, event_pos);

-- The Kafka archiver's progress: the next offset to read of each topic partition,
-- written in the transaction that stores the rows read before it.
CREATE TABLE signals.archive_offsets (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT  NOT NULL,
    PRIMARY KEY (topic, partition)
);
