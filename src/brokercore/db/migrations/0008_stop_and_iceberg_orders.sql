-- 0008_stop_and_iceberg_orders: stop orders, disclosed quantity (icebergs) and the status
-- of a waiting stop (docs/engine.md, "The trading day").
--
-- The order type stays in the column `type` (0001), now one of LIMIT, MARKET, STOP
-- (stop-market) and STOP_LIMIT. A stop has a trigger price; until a trade reaches it the
-- order waits outside the book with the status TRIGGER_PENDING (it holds cash or shares
-- from its acceptance, since it can fire at any time). An iceberg is a LIMIT order with
-- a disclosed quantity > 0: the part of it the market sees at a time.
--
-- Units as in 0001: prices in paise (BIGINT), quantities in shares. The same two columns
-- go on read_model.orders, so the projector and the query service show them.

ALTER TABLE orders
    DROP CONSTRAINT orders_type_valid,
    DROP CONSTRAINT orders_price_matches_type,
    DROP CONSTRAINT orders_status_valid,
    ADD COLUMN trigger_price BIGINT,
    ADD COLUMN disclosed_qty BIGINT NOT NULL DEFAULT 0,
    ADD CONSTRAINT orders_type_valid CHECK (type IN ('LIMIT', 'MARKET', 'STOP', 'STOP_LIMIT')),
    ADD CONSTRAINT orders_price_matches_type CHECK (
        (type IN ('LIMIT', 'STOP_LIMIT') AND price IS NOT NULL AND price > 0)
        OR (type IN ('MARKET', 'STOP') AND price IS NULL)),
    ADD CONSTRAINT orders_trigger_matches_type CHECK (
        (type IN ('STOP', 'STOP_LIMIT') AND trigger_price IS NOT NULL AND trigger_price > 0)
        OR (type IN ('LIMIT', 'MARKET') AND trigger_price IS NULL)),
    ADD CONSTRAINT orders_disclosed_valid CHECK (
        disclosed_qty = 0
        OR (type = 'LIMIT' AND disclosed_qty > 0 AND disclosed_qty <= quantity)),
    ADD CONSTRAINT orders_status_valid CHECK (status IN
        ('PENDING', 'TRIGGER_PENDING', 'OPEN', 'PARTIALLY_FILLED', 'FILLED', 'CANCELLED',
         'REJECTED', 'EXPIRED')),
    ADD CONSTRAINT orders_trigger_pending_is_stop CHECK (
        status <> 'TRIGGER_PENDING' OR type IN ('STOP', 'STOP_LIMIT'));
COMMENT ON COLUMN orders.type IS
    'LIMIT, MARKET, STOP (stop-market: a market order once triggered) or STOP_LIMIT '
    '(a limit order at price once triggered).';
COMMENT ON COLUMN orders.price IS
    'Limit price in paise (LIMIT, STOP_LIMIT); NULL for MARKET and STOP.';
COMMENT ON COLUMN orders.trigger_price IS
    'A stop''s trigger price in paise: a buy stop triggers on a trade at or above it, a '
    'sell stop at or below it. NULL for LIMIT and MARKET.';
COMMENT ON COLUMN orders.disclosed_qty IS
    'An iceberg''s disclosed quantity (shares shown at a time, a lot multiple, at least '
    'the engine''s min_disclosed_percent of the order); 0 = the whole order is shown.';
COMMENT ON COLUMN orders.status IS
    'PENDING (taken, not yet acknowledged by the engine), TRIGGER_PENDING (a stop waiting '
    'for its trigger), OPEN, PARTIALLY_FILLED, then FILLED, CANCELLED, REJECTED or EXPIRED.';

-- An order that can still trade: the index's predicate is OPEN_STATUSES
-- (brokercore.broker.orders), which now has TRIGGER_PENDING.
DROP INDEX orders_open_idx;
CREATE INDEX orders_open_idx ON orders (account_id, symbol)
    WHERE status IN ('PENDING', 'TRIGGER_PENDING', 'OPEN', 'PARTIALLY_FILLED');

ALTER TABLE read_model.orders
    ADD COLUMN trigger_price BIGINT,
    ADD COLUMN disclosed_qty BIGINT NOT NULL DEFAULT 0;
COMMENT ON COLUMN read_model.orders.trigger_price IS 'As orders.trigger_price (paise; NULL: not a stop).';
COMMENT ON COLUMN read_model.orders.disclosed_qty IS 'As orders.disclosed_qty (0: not an iceberg).';
