-- 0010_identity: the broker's customers (brokercore.identity, the accounts service).
--
-- An account gains a KYC status: PENDING at sign-up, VERIFIED or REJECTED by an operator;
-- the OMS takes orders only from VERIFIED accounts. The accounts that exist already were
-- opened by tools and tests that vouch for them: they are VERIFIED.
--
-- users: who may log in (user_id = accounts.user_id = the access token's sub), with an
-- argon2id password hash, an optional TOTP second factor and roles. signing_keys: the
-- RSA keys that sign access tokens (published as a JWKS). refresh_tokens: the rotating
-- refresh tokens, stored hashed, grouped in families (a login's session, its sid).
-- audit_log: every operator action, append-only like funding.

ALTER TABLE accounts ADD COLUMN kyc_status TEXT NOT NULL DEFAULT 'PENDING'
    CONSTRAINT accounts_kyc_status_valid CHECK (kyc_status IN ('PENDING', 'VERIFIED', 'REJECTED'));
UPDATE accounts SET kyc_status = 'VERIFIED';
COMMENT ON COLUMN accounts.kyc_status IS
    'PENDING (signed up), VERIFIED or REJECTED by an operator; orders need VERIFIED.';

CREATE TABLE users (
    user_id          TEXT PRIMARY KEY,
    email            TEXT NOT NULL UNIQUE,
    password_hash    TEXT NOT NULL,
    totp_secret      TEXT,
    totp_pending     TEXT,
    totp_last_step   BIGINT,
    roles            TEXT[] NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_lower CHECK (email = lower(email))
);
COMMENT ON TABLE users IS 'Who may log in; user_id is accounts.user_id and the token''s sub.';
COMMENT ON COLUMN users.password_hash IS 'argon2id (PHC string); the password is never stored.';
COMMENT ON COLUMN users.totp_secret IS 'The confirmed TOTP secret (base32); NULL: no second factor.';
COMMENT ON COLUMN users.totp_pending IS 'A secret enrolled but not confirmed by a code yet.';
COMMENT ON COLUMN users.totp_last_step IS
    'The time step of the last TOTP code accepted: a code of it or an earlier one is refused.';

CREATE TABLE recovery_codes (
    user_id   TEXT NOT NULL REFERENCES users (user_id),
    code_hash BYTEA NOT NULL,
    used_at   timestamptz,
    PRIMARY KEY (user_id, code_hash)
);
COMMENT ON TABLE recovery_codes IS
    'One-time codes that stand for a TOTP code (sha256 of the code; used once).';

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    private_pem TEXT NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    retired_at  timestamptz
);
COMMENT ON TABLE signing_keys IS
    'RSA keys of the access tokens: the newest unretired one signs, every unretired one '
    'is published in the JWKS.';

CREATE TABLE refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    family_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (user_id),
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    spent_at   timestamptz,
    revoked_at timestamptz
);
COMMENT ON TABLE refresh_tokens IS
    'Refresh tokens (sha256 of the token). A family is one login''s chain of tokens (the '
    'access token''s sid); a spent token presented again revokes its whole family.';
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);

CREATE TABLE audit_log (
    audit_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    before   JSONB,
    after    JSONB,
    at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE audit_log IS
    'Append-only: every operator action (who, what, on what, before and after, when), '
    'written in the transaction of the change.';
CREATE INDEX audit_log_target_idx ON audit_log (target, audit_id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$fn$;

CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
