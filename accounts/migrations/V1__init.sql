-- signalcast accounts, after the source architecture's schemas.

CREATE SCHEMA IF NOT EXISTS user_management;
CREATE SCHEMA IF NOT EXISTS finance;
CREATE SCHEMA IF NOT EXISTS signals;
CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE user_management.users (
    id            TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    email         TEXT NOT NULL UNIQUE CHECK (length(email) BETWEEN 3 AND 254),
    password_hash TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE finance.subscription_plans (
    id          TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    name        TEXT NOT NULL,
    tier        TEXT NOT NULL CHECK (tier IN ('free', 'basic', 'premium', 'enterprise')),
    price_cents BIGINT NOT NULL DEFAULT 0 CHECK (price_cents >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE finance.user_subscriptions (
    id         BIGSERIAL PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES user_management.users (id),
    plan_id    TEXT NOT NULL REFERENCES finance.subscription_plans (id),
    status     TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cancelled')),
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ended_at   TIMESTAMPTZ
);
-- At most one active subscription per user: it decides the tier.
CREATE UNIQUE INDEX user_subscriptions_one_active
    ON finance.user_subscriptions (user_id) WHERE status = 'active';

CREATE TABLE signals.signal_subscriptions (
    user_id             TEXT PRIMARY KEY REFERENCES user_management.users (id),
    categories          TEXT[] NOT NULL DEFAULT '{equity,crypto,forex,commodity}',
    max_signals_per_day INTEGER CHECK (max_signals_per_day IS NULL OR max_signals_per_day >= 0),
    real_time_access    BOOLEAN NOT NULL DEFAULT true,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Producer API keys, stored as SHA-256 of the key (the key is shown once, at issue).
CREATE TABLE auth.producer_keys (
    id          BIGSERIAL PRIMARY KEY,
    producer_id TEXT NOT NULL CHECK (length(producer_id) BETWEEN 1 AND 64),
    key_hash    BYTEA NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);

-- Refresh tokens (SHA-256 of the token). A family is one login; reusing a rotated
-- token revokes the whole family.
CREATE TABLE auth.refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES user_management.users (id),
    family     BYTEA NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    rotated_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_family ON auth.refresh_tokens (family);

-- Ed25519 signing keys; the newest unretired one signs, all unretired ones verify.
CREATE TABLE auth.signing_keys (
    kid        TEXT PRIMARY KEY,
    pkcs8      BYTEA NOT NULL,
    public_key BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    retired_at TIMESTAMPTZ
);

-- The entitlement change feed: a durable, ordered log (the position gateways resume
-- from) plus a NOTIFY in the same transaction to wake the streams at once.
CREATE TABLE auth.entitlement_changes (
    position    BIGSERIAL PRIMARY KEY,
    user_id     TEXT,
    producer_id TEXT,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE FUNCTION auth.record_change(p_user TEXT, p_producer TEXT) RETURNS void AS $$
DECLARE pos BIGINT;
BEGIN
    INSERT INTO auth.entitlement_changes (user_id, producer_id) VALUES (p_user, p_producer)
        RETURNING position INTO pos;
    PERFORM pg_notify('entitlements', pos::text);
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION auth.user_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NEW;
    END IF;
    PERFORM auth.record_change(NEW.id, NULL);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER users_changed AFTER INSERT OR UPDATE ON user_management.users
    FOR EACH ROW EXECUTE FUNCTION auth.user_changed();

CREATE FUNCTION auth.user_row_changed() RETURNS trigger AS $$
BEGIN
    PERFORM auth.record_change(COALESCE(NEW.user_id, OLD.user_id), NULL);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER user_subscriptions_changed AFTER INSERT OR UPDATE OR DELETE ON finance.user_subscriptions
    FOR EACH ROW EXECUTE FUNCTION auth.user_row_changed();
CREATE TRIGGER signal_subscriptions_changed AFTER INSERT OR UPDATE OR DELETE ON signals.signal_subscriptions
    FOR EACH ROW EXECUTE FUNCTION auth.user_row_changed();

CREATE FUNCTION auth.producer_key_changed() RETURNS trigger AS $$
BEGIN
    PERFORM auth.record_change(NULL, NEW.producer_id);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER producer_keys_changed AFTER INSERT OR UPDATE ON auth.producer_keys
    FOR EACH ROW EXECUTE FUNCTION auth.producer_key_changed();
