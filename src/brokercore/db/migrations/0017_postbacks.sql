-- 0017_postbacks: the HTTPS URLs a user registers to receive their order updates
-- (issue 16, "updates without polling"): the notifier POSTs each order notification of
-- the user to each of them, signed with the registration's secret
-- (brokercore.notify.postbacks; docs/postbacks.md).

-- A user's registrations take the slots 1..5, so the database itself refuses a sixth.
CREATE TABLE postbacks (
    postback_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     TEXT NOT NULL,
    slot        SMALLINT NOT NULL,
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT postbacks_slot_valid CHECK (slot BETWEEN 1 AND 5),
    CONSTRAINT postbacks_user_slot_unique UNIQUE (user_id, slot),
    CONSTRAINT postbacks_url_https CHECK (url LIKE 'https://%' AND length(url) <= 2000),
    CONSTRAINT postbacks_secret_long CHECK (length(secret) >= 32)
);
COMMENT ON TABLE postbacks IS
    'Where a user''s order notifications are POSTed (brokercore.notify.postbacks).';
COMMENT ON COLUMN postbacks.slot IS 'Which of the user''s 5 registrations this is (1..5).';
COMMENT ON COLUMN postbacks.secret IS
    'The HMAC-SHA256 key of the X-Signature header (brokercore.edge.signature); shown to '
    'the user once, when registered, and kept to sign with.';
