-- analysis_data and market_conditions stop being generated columns of trading_signals:
-- SQLite computes every generated column, virtual ones too, on every insert (two JSON
-- parses of each signal's data, about an eighth of an append's time), although only a
-- reader ever needs them. The view trading_signals_json reads them out of `data` when
-- asked. SQLite cannot drop them in place here (its DROP COLUMN trips on the comments
-- of the table's text), so the table is rebuilt: every row keeps its pos.
CREATE TABLE trading_signals_v5 (
    pos                  INTEGER PRIMARY KEY,
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
    seq_free             INTEGER,
    seq_basic            INTEGER,
    seq_premium          INTEGER,
    seq_enterprise       INTEGER,
    data                 TEXT    NOT NULL
);
INSERT INTO trading_signals_v5 (pos, id, source_id, source_type, producer_id, symbol, exchange,
    category, signal_type, entry_price, target_price, stop_loss, quantity_recommended,
    confidence_level, generated_at, expires_at, ingest_ts, routed_ts, created_at, seq_free,
    seq_basic, seq_premium, seq_enterprise, data)
SELECT pos, id, source_id, source_type, producer_id, symbol, exchange, category, signal_type,
    entry_price, target_price, stop_loss, quantity_recommended, confidence_level, generated_at,
    expires_at, ingest_ts, routed_ts, created_at, seq_free, seq_basic, seq_premium,
    seq_enterprise, data
FROM trading_signals ORDER BY pos;
-- signal_events' foreign key names trading_signals: it points at the new table once
-- renamed (the store turns foreign keys off around its migrations, as SQLite's table
-- rebuild requires, and checks them before the commit).
DROP TABLE trading_signals;
ALTER TABLE trading_signals_v5 RENAME TO trading_signals;
CREATE INDEX trading_signals_routed ON trading_signals (routed_ts, pos);
CREATE INDEX trading_signals_symbol ON trading_signals (symbol, exchange, routed_ts, pos);
CREATE INDEX trading_signals_source ON trading_signals (source_id, routed_ts, pos);
CREATE UNIQUE INDEX trading_signals_seq_free ON trading_signals (seq_free) WHERE seq_free IS NOT NULL;
CREATE UNIQUE INDEX trading_signals_seq_basic ON trading_signals (seq_basic) WHERE seq_basic IS NOT NULL;
CREATE UNIQUE INDEX trading_signals_seq_premium ON trading_signals (seq_premium) WHERE seq_premium IS NOT NULL;
CREATE UNIQUE INDEX trading_signals_seq_enterprise ON trading_signals (seq_enterprise) WHERE seq_enterprise IS NOT NULL;
CREATE INDEX trading_signals_expires ON trading_signals (expires_at);
-- The source architecture's columns, for SQL readers.
CREATE VIEW trading_signals_json AS
    SELECT *, json_extract(data, '$.analysis') AS analysis_data,
              json_extract(data, '$.market') AS market_conditions
    FROM trading_signals;
