-- 0016_gtt: GTT triggers (good till triggered), single and OCO (issue 16, "triggers that
-- outlive a day"; brokercore.entry.gtt, the trigger service; docs/gtt.md).
--
-- A GTT watches its symbol's last trade price: leg 1 (and leg 2 of an OCO) holds a
-- condition (last price >= or <= its trigger) and the order to place when it is met.
-- ACTIVE -> TRIGGERED (one leg fired: fired_leg; an OCO's other leg is cancelled with it,
-- so both can never fire), CANCELLED (the user), EXPIRED (past expires_at). A TRIGGERED
-- GTT gets the id of the order it placed once (order_id, set once), or ends FAILED when
-- the order path refused that order (failure_code, failure_message). No other change of
-- status; the legs change only while ACTIVE; none is deleted (trigger below).

CREATE TABLE gtts (
    gtt_id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      BIGINT NOT NULL REFERENCES accounts (account_id),
    symbol          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    condition_1     TEXT NOT NULL,
    trigger_1       BIGINT NOT NULL,
    order_1         JSONB NOT NULL,
    condition_2     TEXT,
    trigger_2       BIGINT,
    order_2         JSONB,
    status          TEXT NOT NULL DEFAULT 'ACTIVE',
    fired_leg       SMALLINT,
    fired_price     BIGINT,
    triggered_at    timestamptz,
    order_id        BIGINT,
    failure_code    TEXT,
    failure_message TEXT,
    fire_key        TEXT NOT NULL DEFAULT 'gtt:' || gen_random_uuid(),
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT gtts_kind_valid CHECK (kind IN ('SINGLE', 'OCO')),
    CONSTRAINT gtts_status_valid CHECK (
        status IN ('ACTIVE', 'TRIGGERED', 'CANCELLED', 'EXPIRED', 'FAILED')),
    CONSTRAINT gtts_conditions_valid CHECK (
        condition_1 IN ('>=', '<=') AND coalesce(condition_2 IN ('>=', '<='), true)),
    CONSTRAINT gtts_triggers_positive CHECK (trigger_1 > 0 AND coalesce(trigger_2 > 0, true)),
    CONSTRAINT gtts_orders_objects CHECK (
        jsonb_typeof(order_1) = 'object' AND coalesce(jsonb_typeof(order_2) = 'object', true)),
    -- a SINGLE has one leg, an OCO two: one below its other's trigger (<=), one above (>=)
    CONSTRAINT gtts_legs_match_kind CHECK (
        CASE kind
            WHEN 'SINGLE' THEN condition_2 IS NULL AND trigger_2 IS NULL AND order_2 IS NULL
            ELSE condition_2 IS NOT NULL AND trigger_2 IS NOT NULL AND order_2 IS NOT NULL
                 AND condition_1 <> condition_2
                 AND (CASE condition_1 WHEN '<=' THEN trigger_1 < trigger_2
                                       ELSE trigger_2 < trigger_1 END)
        END),
    CONSTRAINT gtts_fired_when_triggered CHECK (
        (status IN ('TRIGGERED', 'FAILED'))
            = (fired_leg IS NOT NULL AND fired_price IS NOT NULL AND triggered_at IS NOT NULL)),
    CONSTRAINT gtts_fired_leg_exists CHECK (
        fired_leg IS NULL OR fired_leg = 1 OR (fired_leg = 2 AND kind = 'OCO')),
    CONSTRAINT gtts_order_when_triggered CHECK (order_id IS NULL OR status = 'TRIGGERED'),
    CONSTRAINT gtts_reason_when_failed CHECK (
        (status = 'FAILED') = (failure_code IS NOT NULL AND failure_message IS NOT NULL)),
    CONSTRAINT gtts_expiry_after_creation CHECK (expires_at > created_at)
);
COMMENT ON TABLE gtts IS
    'GTT triggers: ACTIVE -> TRIGGERED (then its order_id, or FAILED with the refusal) | '
    'CANCELLED | EXPIRED; an OCO fires one leg only (brokercore.entry.gtt).';
COMMENT ON COLUMN gtts.trigger_1 IS 'Paise: leg 1 fires when the last price is condition_1 it.';
COMMENT ON COLUMN gtts.order_1 IS
    'The order leg 1 places: {"side", "type" (LIMIT | MARKET), "quantity", "price"?}.';
COMMENT ON COLUMN gtts.fire_key IS
    'The idempotency key of the fired order (never shown to the user, so none of their '
    'own orders can take it): a replay of the firing gets the same order back.';
COMMENT ON COLUMN gtts.fired_price IS 'Paise: the trade price that met the fired leg.';
CREATE INDEX gtts_account_idx ON gtts (account_id, gtt_id DESC);
-- the trigger service's search: the ACTIVE legs of a symbol one price range may meet
CREATE INDEX gtts_leg_1_idx ON gtts (symbol, condition_1, trigger_1) WHERE status = 'ACTIVE';
CREATE INDEX gtts_leg_2_idx ON gtts (symbol, condition_2, trigger_2)
    WHERE status = 'ACTIVE' AND kind = 'OCO';
CREATE INDEX gtts_to_place_idx ON gtts (gtt_id) WHERE status = 'TRIGGERED' AND order_id IS NULL;

-- ACTIVE -> ACTIVE (new legs or expiry) | TRIGGERED | CANCELLED | EXPIRED; TRIGGERED
-- without an order -> TRIGGERED with one | FAILED; everything else is final. Who, what
-- and when it was made never change; none is deleted or truncated away.
CREATE FUNCTION gtts_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'GTTs are never deleted: % is not allowed', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.account_id, NEW.symbol, NEW.kind, NEW.fire_key, NEW.created_at)
       IS DISTINCT FROM (OLD.account_id, OLD.symbol, OLD.kind, OLD.fire_key, OLD.created_at) THEN
        RAISE EXCEPTION 'GTT %: its account, symbol, kind, key and creation never change',
            OLD.gtt_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'gtts_request_fixed', TABLE = 'gtts';
    END IF;
    IF NOT (OLD.status = 'ACTIVE'
            OR (OLD.status = 'TRIGGERED' AND OLD.order_id IS NULL
                AND NEW.status IN ('TRIGGERED', 'FAILED'))) THEN
        RAISE EXCEPTION 'GTT % is % and final', OLD.gtt_id, OLD.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'gtts_status_transition',
                  TABLE = 'gtts';
    END IF;
    IF OLD.status <> 'ACTIVE'
       AND (NEW.condition_1, NEW.trigger_1, NEW.order_1, NEW.condition_2, NEW.trigger_2,
            NEW.order_2, NEW.expires_at, NEW.fired_leg, NEW.fired_price, NEW.triggered_at)
           IS DISTINCT FROM
           (OLD.condition_1, OLD.trigger_1, OLD.order_1, OLD.condition_2, OLD.trigger_2,
            OLD.order_2, OLD.expires_at, OLD.fired_leg, OLD.fired_price, OLD.triggered_at) THEN
        RAISE EXCEPTION 'GTT % fired: its legs and firing never change', OLD.gtt_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'gtts_fired_fixed', TABLE = 'gtts';
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER gtts_guard_update_delete
    BEFORE UPDATE OR DELETE ON gtts
    FOR EACH ROW EXECUTE FUNCTION gtts_guard();
CREATE TRIGGER gtts_no_truncate
    BEFORE TRUNCATE ON gtts
    FOR EACH STATEMENT EXECUTE FUNCTION gtts_guard();
