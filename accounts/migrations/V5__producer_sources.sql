-- The signal sources each producer may publish under (their source_id UUIDs, as text):
-- only a source's own producers may, so that no one can close another source's
-- signals or fake its record (docs/outcomes.md). Changes reach gateways on the change
-- feed through the producers_changed trigger, as the tick right does.
ALTER TABLE auth.producers ADD COLUMN sources TEXT[] NOT NULL DEFAULT '{}';
