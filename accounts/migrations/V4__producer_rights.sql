-- What a producer may send besides signals. Ticks move the price every client sees and
-- (later) decide signal outcomes: only producers granted the right may send them.
CREATE TABLE auth.producers (
    producer_id TEXT PRIMARY KEY CHECK (length(producer_id) BETWEEN 1 AND 64),
    ticks       BOOLEAN NOT NULL DEFAULT false,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A producer event (keys and rights) goes out on the change feed, as for its keys.
CREATE TRIGGER producers_changed AFTER INSERT OR UPDATE ON auth.producers
    FOR EACH ROW EXECUTE FUNCTION auth.producer_key_changed();

-- The change log is read by time for the snapshot's recently changed users.
CREATE INDEX entitlement_changes_at ON auth.entitlement_changes (at) WHERE user_id IS NOT NULL;
