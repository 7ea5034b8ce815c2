-- 0019_gtt_keys_and_notices: a GTT's idempotency key, and the user's notification when a
-- GTT ends by itself (issue 16, "triggers that outlive a day": "the user is notified";
-- docs/gtt.md).
--
-- Idempotency: POST /api/v1/gtt may carry an idempotencyKey (brokercore.entry.gtt); the
-- GTT it made keeps the key and its request's hash, so a retry finds it, and the same key
-- for another request is refused. A key names one GTT of the account for ever (GTTs are
-- never deleted): the database refuses a second.
--
-- Notices: the moment a GTT ends without the user (its order placed, its order refused
-- at firing = FAILED, or EXPIRED), the statement that ends it also stores the
-- notification in the user's inbox (notification_inbox, 0012) and owes it to the
-- notifier (owed_notifications), in the same transaction whichever process ends it (the
-- trigger service's placer and expiry today): a crash leaves all or nothing, and a GTT
-- ends once, so it is stored once (its id 'gtt:<id>'). The notifier publishes, pushes
-- and posts what is owed as it does its own notifications, and forgets each once
-- delivered (brokercore.notify.owed). A CANCELLED GTT is the user's own doing: not told.

ALTER TABLE gtts
    ADD COLUMN idempotency_key TEXT,
    ADD COLUMN request_hash    TEXT,
    ADD CONSTRAINT gtts_key_with_hash CHECK ((idempotency_key IS NULL) = (request_hash IS NULL)),
    ADD CONSTRAINT gtts_key_once UNIQUE (account_id, idempotency_key);
COMMENT ON COLUMN gtts.idempotency_key IS
    'The client''s idempotencyKey of the POST that made it (NULL: none); one GTT per key.';
COMMENT ON COLUMN gtts.request_hash IS
    'Hash of that request''s body: the same key with another body is a client error.';

CREATE TABLE owed_notifications (
    notification_id TEXT PRIMARY KEY REFERENCES notification_inbox (notification_id),
    user_id         TEXT NOT NULL,
    notification    JSONB NOT NULL,
    owed_since      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE owed_notifications IS
    'Notifications made outside the notifier, stored in the inbox but not yet delivered '
    'live (published, pushed, posted): the notifier deletes each once delivered, and a '
    'notifier that starts sends again what is left (at-least-once; clients drop a second '
    'copy by id).';

-- A user chooses how each GTT kind reaches them, as any other kind
-- (brokercore.notify.preferences).
ALTER TABLE notification_preferences
    DROP CONSTRAINT notification_preferences_event_type_valid,
    ADD CONSTRAINT notification_preferences_event_type_valid CHECK (event_type IN
        ('FILL', 'TRIGGERED', 'CANCELLED', 'EXPIRED', 'REJECTED', 'PRICE_ALERT',
         'GTT_TRIGGERED', 'GTT_FAILED', 'GTT_EXPIRED'));

-- The notification as the notifier renders one (brokercore.realtime.channels.Notification:
-- type, id, kind, title, body, symbol, createdAt, orderId), amounts as format_paise
-- writes them.
CREATE FUNCTION gtts_notice() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    leg     jsonb := CASE NEW.fired_leg WHEN 2 THEN NEW.order_2 ELSE NEW.order_1 END;
    gtt     text := format('Your GTT %s on %s', NEW.gtt_id, NEW.symbol);
    fired   text := 'triggered at ' || to_char(NEW.fired_price / 100.0, 'FM999,999,999,990.00');
    order_s text := format('order to %s %s %s', leg ->> 'side',
                           to_char((leg ->> 'quantity')::bigint, 'FM999,999,999,990'),
                           NEW.symbol);
    kind    text;
    title   text;
    body    text;
BEGIN
    IF NEW.status = 'EXPIRED' THEN
        kind := 'GTT_EXPIRED';
        title := 'GTT expired';
        body := gtt || ' expired without triggering';
    ELSIF NEW.status = 'FAILED' THEN
        kind := 'GTT_FAILED';
        title := 'GTT order refused';
        body := format('%s %s, but its %s was refused: %s',
                       gtt, fired, order_s, NEW.failure_message);
    ELSE
        kind := 'GTT_TRIGGERED';
        title := 'GTT triggered';
        body := format('%s %s: %s placed', gtt, fired, order_s);
    END IF;
    WITH n AS (
        SELECT 'gtt:' || NEW.gtt_id AS id, a.user_id,
               jsonb_build_object(
                   'type', 'NOTIFICATION', 'id', 'gtt:' || NEW.gtt_id, 'kind', kind,
                   'title', title, 'body', body, 'symbol', NEW.symbol,
                   'createdAt', to_char(now() AT TIME ZONE 'UTC',
                                        'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
                   'orderId', NEW.order_id) AS notification
          FROM accounts a WHERE a.account_id = NEW.account_id),
    stored AS (
        INSERT INTO notification_inbox (notification_id, user_id, notification)
        SELECT id, user_id, notification FROM n
        ON CONFLICT (notification_id) DO NOTHING
        RETURNING notification_id)
    INSERT INTO owed_notifications (notification_id, user_id, notification)
    SELECT n.id, n.user_id, n.notification FROM n JOIN stored ON stored.notification_id = n.id;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER gtts_notice_on_end
    AFTER UPDATE OF status, order_id ON gtts
    FOR EACH ROW
    WHEN ((NEW.status IN ('EXPIRED', 'FAILED') AND OLD.status <> NEW.status)
          OR (NEW.order_id IS NOT NULL AND OLD.order_id IS NULL))
    EXECUTE FUNCTION gtts_notice();
