-- Every admin API call that presented the admin token: who (the token's holder and
-- their address), what (method and route), on what (the path's ids, or the id the
-- call created), and how it ended (HTTP status). Append-only by use: nothing in the
-- sidecar updates or deletes a row.
CREATE TABLE auth.admin_audit (
    id      BIGSERIAL PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    status  INTEGER NOT NULL
);
CREATE INDEX admin_audit_at ON auth.admin_audit (at);
