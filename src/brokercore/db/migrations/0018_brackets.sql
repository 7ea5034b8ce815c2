-- 0018_brackets: bracket orders (issue 16): a LIMIT entry order with a target and a
-- stop-loss (brokercore.entry.brackets, brokercore.entry.bracket_legs, the trigger
-- service; docs/brackets.md).
--
-- As the entry fills, the trigger service places TARGET legs (LIMIT orders of the other
-- side at the target price) for the quantity filled; the STOP-LOSS waits in the trigger
-- service (the legs would need the same shares twice) and is placed only when a trade
-- meets it, after the entry and the open targets are cancelled, for what is left of the
-- position. ACTIVE -> STOPPING (the stop met) -> STOPPED | DONE | FAILED;
-- ACTIVE -> EXITING (the entry cancelled, the user's DELETE, a leg refused) -> CANCELLED |
-- FAILED; ACTIVE -> DONE (the targets closed the whole fill) | EXPIRED (the day ended
-- with a position left). None is deleted (trigger below).

CREATE TABLE brackets (
    bracket_id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      BIGINT NOT NULL REFERENCES accounts (account_id),
    symbol          TEXT NOT NULL,
    side            TEXT NOT NULL,
    quantity        BIGINT NOT NULL,
    price           BIGINT NOT NULL,
    target          BIGINT NOT NULL,
    stop            BIGINT NOT NULL,
    stop_limit      BIGINT,
    entry_order_id  BIGINT NOT NULL UNIQUE,
    request_hash    TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'ACTIVE',
    armed_at        timestamptz,
    entry_cancel_sent BOOLEAN NOT NULL DEFAULT false,
    stop_price      BIGINT,
    stopped_at      timestamptz,
    stop_quantity   BIGINT,
    stop_order_id   BIGINT,
    failure_code    TEXT,
    failure_message TEXT,
    leg_key         TEXT NOT NULL DEFAULT 'bracket-leg:' || gen_random_uuid(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT brackets_side_valid CHECK (side IN ('BUY', 'SELL')),
    CONSTRAINT brackets_quantity_positive CHECK (quantity > 0),
    CONSTRAINT brackets_status_valid CHECK (status IN (
        'ACTIVE', 'STOPPING', 'STOPPED', 'EXITING', 'CANCELLED', 'DONE', 'EXPIRED', 'FAILED')),
    -- a buy's stop-loss below its price below its target; a sell's the other way round;
    -- a stop-limit's limit at or beyond its stop (it sells at the stop or lower)
    CONSTRAINT brackets_prices_ordered CHECK (
        stop > 0 AND CASE side WHEN 'BUY' THEN stop < price AND price < target
                               ELSE target < price AND price < stop END),
    CONSTRAINT brackets_stop_limit_valid CHECK (
        stop_limit IS NULL OR stop_limit > 0
        AND CASE side WHEN 'BUY' THEN stop_limit <= stop ELSE stop_limit >= stop END),
    CONSTRAINT brackets_stop_met_when_stopping CHECK (
        status NOT IN ('STOPPING', 'STOPPED') OR (stop_price IS NOT NULL AND stopped_at IS NOT NULL)),
    CONSTRAINT brackets_stop_order_when_stopped CHECK (
        (stop_order_id IS NULL OR status = 'STOPPED')
        AND (status <> 'STOPPED' OR (stop_order_id IS NOT NULL AND stop_quantity > 0))),
    CONSTRAINT brackets_reason_when_failed CHECK (
        status <> 'FAILED' OR (failure_code IS NOT NULL AND failure_message IS NOT NULL))
);
COMMENT ON TABLE brackets IS
    'Bracket orders: an entry, target legs per fill, a stop-loss placed when met '
    '(brokercore.entry.brackets; docs/brackets.md).';
COMMENT ON COLUMN brackets.price IS 'Paise: the entry''s limit; target, stop, stop_limit too.';
COMMENT ON COLUMN brackets.armed_at IS
    'When the first target leg was planned: the stop-loss counts trades published after it.';
COMMENT ON COLUMN brackets.leg_key IS
    'The legs'' idempotency keys are leg_key || '':t'' || seq and leg_key || '':stop'' '
    '(never shown: a replayed placement gets the same order back).';
CREATE INDEX brackets_account_idx ON brackets (account_id, bracket_id DESC);
-- the watcher's search: the ACTIVE armed brackets of a symbol whose stop a price meets
CREATE INDEX brackets_stop_idx ON brackets (symbol, side, stop)
    WHERE status = 'ACTIVE' AND armed_at IS NOT NULL;
CREATE INDEX brackets_live_idx ON brackets (bracket_id)
    WHERE status IN ('ACTIVE', 'STOPPING', 'EXITING');

-- The target legs: one per fill the trigger service saw, planned (committed) before its
-- order is placed, so a replay places the same quantity under the same key.
CREATE TABLE bracket_targets (
    bracket_id      BIGINT NOT NULL REFERENCES brackets (bracket_id),
    seq             INT NOT NULL,
    quantity        BIGINT NOT NULL,
    order_id        BIGINT,
    cancel_sent     BOOLEAN NOT NULL DEFAULT false,
    failure_code    TEXT,
    failure_message TEXT,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bracket_id, seq),
    CONSTRAINT bracket_targets_quantity_positive CHECK (quantity > 0),
    CONSTRAINT bracket_targets_placed_or_failed CHECK (
        order_id IS NULL OR failure_code IS NULL)
);
CREATE INDEX bracket_targets_to_place_idx ON bracket_targets (bracket_id, seq)
    WHERE order_id IS NULL AND failure_code IS NULL;
-- a restarted trigger service's search: the legs whose order is still PENDING
CREATE INDEX bracket_targets_order_idx ON bracket_targets (order_id);
CREATE INDEX brackets_stop_order_idx ON brackets (stop_order_id) WHERE stop_order_id IS NOT NULL;

-- A bracket: ACTIVE -> anything; STOPPING -> STOPPED | DONE | FAILED; EXITING ->
-- CANCELLED | FAILED; the rest final. What was asked never changes; none is deleted.
-- A target leg: its quantity fixed, its order or failure set once; its legs together
-- never exceed the entry's quantity.
CREATE FUNCTION brackets_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'brackets are never deleted: % is not allowed', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.account_id, NEW.symbol, NEW.side, NEW.quantity, NEW.price, NEW.target, NEW.stop,
        NEW.stop_limit, NEW.entry_order_id, NEW.leg_key, NEW.created_at)
       IS DISTINCT FROM
       (OLD.account_id, OLD.symbol, OLD.side, OLD.quantity, OLD.price, OLD.target, OLD.stop,
        OLD.stop_limit, OLD.entry_order_id, OLD.leg_key, OLD.created_at) THEN
        RAISE EXCEPTION 'bracket %: what was asked never changes', OLD.bracket_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'brackets_request_fixed',
                  TABLE = 'brackets';
    END IF;
    IF OLD.status <> NEW.status AND NOT (
        OLD.status = 'ACTIVE'
        OR (OLD.status = 'STOPPING' AND NEW.status IN ('STOPPED', 'DONE', 'FAILED'))
        OR (OLD.status = 'EXITING' AND NEW.status IN ('CANCELLED', 'FAILED'))) THEN
        RAISE EXCEPTION 'bracket %: % cannot become %', OLD.bracket_id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'brackets_status_transition',
                  TABLE = 'brackets';
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER brackets_guard_update_delete
    BEFORE UPDATE OR DELETE ON brackets
    FOR EACH ROW EXECUTE FUNCTION brackets_guard();
CREATE TRIGGER brackets_no_truncate
    BEFORE TRUNCATE ON brackets
    FOR EACH STATEMENT EXECUTE FUNCTION brackets_guard();

CREATE FUNCTION bracket_targets_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF (SELECT b.quantity < NEW.quantity + coalesce(
                (SELECT sum(t.quantity) FROM bracket_targets t WHERE t.bracket_id = b.bracket_id), 0)
              FROM brackets b WHERE b.bracket_id = NEW.bracket_id FOR UPDATE) THEN
            RAISE EXCEPTION 'bracket %: target legs beyond the entry''s quantity', NEW.bracket_id
                USING ERRCODE = 'check_violation', CONSTRAINT = 'bracket_targets_within_entry',
                      TABLE = 'bracket_targets';
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'bracket legs are never deleted: % is not allowed', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.bracket_id, NEW.seq, NEW.quantity) IS DISTINCT FROM (OLD.bracket_id, OLD.seq, OLD.quantity)
       OR (OLD.order_id IS NOT NULL AND NEW.order_id IS DISTINCT FROM OLD.order_id)
       OR (OLD.failure_code IS NOT NULL AND NEW.failure_code IS DISTINCT FROM OLD.failure_code) THEN
        RAISE EXCEPTION 'bracket % leg %: its quantity, order and failure are set once',
            OLD.bracket_id, OLD.seq
            USING ERRCODE = 'check_violation', CONSTRAINT = 'bracket_targets_fixed',
                  TABLE = 'bracket_targets';
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER bracket_targets_guard
    BEFORE INSERT OR UPDATE OR DELETE ON bracket_targets
    FOR EACH ROW EXECUTE FUNCTION bracket_targets_guard();
CREATE TRIGGER bracket_targets_no_truncate
    BEFORE TRUNCATE ON bracket_targets
    FOR EACH STATEMENT EXECUTE FUNCTION bracket_targets_guard();
