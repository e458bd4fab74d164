-- Signing keys sealed at rest (envelope encryption under a key-encryption key that
-- never touches the database, accounts/src/kek.rs). The sidecar seals any key still
-- stored in clear when it starts, and erases the clear copy.
ALTER TABLE auth.signing_keys ADD COLUMN sealed BYTEA;
ALTER TABLE auth.signing_keys ALTER COLUMN pkcs8 DROP NOT NULL;
ALTER TABLE auth.signing_keys ADD CONSTRAINT signing_keys_private_key
    CHECK (pkcs8 IS NOT NULL OR sealed IS NOT NULL);
