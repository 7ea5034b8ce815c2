-- 0015_after_market_orders: after-market orders (AMO). An order placed with "amo": true
-- while its market is closed is checked for its next session, held like any order, and
-- stored with the status AMO_PENDING, its engine command kept in amo_orders instead of
-- the outbox. When the symbol's next pre-open has started (the engine's PRE_OPENED, in
-- read_model.phases), brokercore.entry.amo moves it into the outbox in one transaction:
-- the amo_orders row deleted, the order PENDING, the outbox row written, or none of it.
-- So it is published once; cancelling it while it waits deletes the row and releases its
-- hold in the cancel's transaction, with no engine round trip.

ALTER TABLE orders
    DROP CONSTRAINT orders_status_valid,
    ADD CONSTRAINT orders_status_valid CHECK (status IN
        ('AMO_PENDING', 'PENDING', 'TRIGGER_PENDING', 'OPEN', 'PARTIALLY_FILLED', 'FILLED',
         'CANCELLED', 'REJECTED', 'EXPIRED'));
COMMENT ON COLUMN orders.status IS
    'AMO_PENDING (an after-market order waiting for its pre-open, held, not yet sent), '
    'PENDING (taken, not yet acknowledged by the engine), TRIGGER_PENDING (a stop waiting '
    'for its trigger), OPEN, PARTIALLY_FILLED, then FILLED, CANCELLED, REJECTED or EXPIRED.';

-- OPEN_STATUSES (brokercore.broker.orders) gains AMO_PENDING: a waiting AMO holds.
DROP INDEX orders_open_idx;
CREATE INDEX orders_open_idx ON orders (account_id, symbol)
    WHERE status IN ('AMO_PENDING', 'PENDING', 'TRIGGER_PENDING', 'OPEN', 'PARTIALLY_FILLED');

CREATE TABLE amo_orders (
    order_id  BIGINT PRIMARY KEY,
    symbol    TEXT NOT NULL,
    placed_at timestamptz NOT NULL,  -- released by the first pre-open that starts after it
    topic     TEXT NOT NULL,         -- the outbox row it becomes
    partition INT NOT NULL,
    payload   BYTEA NOT NULL
);
CREATE INDEX amo_orders_symbol_idx ON amo_orders (symbol, placed_at);
COMMENT ON TABLE amo_orders IS
    'The engine command of each order AMO_PENDING, exactly those (amo_matches_status).';

-- An order is AMO_PENDING exactly while its amo_orders row exists, checked at commit.
CREATE FUNCTION amo_matches_status() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    id bigint := CASE TG_OP WHEN 'DELETE' THEN OLD.order_id ELSE NEW.order_id END;
    waiting boolean;
    status text;
BEGIN
    SELECT o.status INTO status FROM orders o WHERE o.order_id = id;
    waiting := EXISTS (SELECT 1 FROM amo_orders a WHERE a.order_id = id);
    IF waiting <> (status IS NOT DISTINCT FROM 'AMO_PENDING') THEN
        RAISE EXCEPTION 'order % is % but % in amo_orders', id, status,
            CASE WHEN waiting THEN 'waits' ELSE 'does not wait' END
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER orders_amo_insert AFTER INSERT ON orders
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.status = 'AMO_PENDING') EXECUTE FUNCTION amo_matches_status();
CREATE CONSTRAINT TRIGGER orders_amo_update AFTER UPDATE OF status ON orders
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.status = 'AMO_PENDING' OR NEW.status = 'AMO_PENDING')
    EXECUTE FUNCTION amo_matches_status();
CREATE CONSTRAINT TRIGGER amo_orders_change AFTER INSERT OR DELETE ON amo_orders
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION amo_matches_status();
