-- 0009_trading_day_market_data: the read model of the trading day (docs/engine.md, "The
-- trading day"): what the market sees of icebergs, the market orders waiting for an
-- uncross, and each symbol's phase.
--
-- read_model.book_orders (0003) keeps every live order of the books. An iceberg shows
-- only its disclosed part: shown_quantity is the part of the order the market sees now
-- (open_quantity for a plain order), exactly as the engine's depth view counts it, and
-- disclosed_quantity its peak (0: not an iceberg), from which the next part is shown.
-- A market order waiting in PRE_OPEN for the uncross has no price (NULL): it is in no
-- depth level, but it counts for the indicative opening price.

ALTER TABLE read_model.book_orders
    ALTER COLUMN price DROP NOT NULL,
    ADD COLUMN disclosed_quantity BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN shown_quantity BIGINT;
UPDATE read_model.book_orders SET shown_quantity = open_quantity;
ALTER TABLE read_model.book_orders
    ALTER COLUMN shown_quantity SET NOT NULL,
    ADD CONSTRAINT book_orders_shown_valid
        CHECK (shown_quantity > 0 AND shown_quantity <= open_quantity),
    ADD CONSTRAINT book_orders_disclosed_valid CHECK (disclosed_quantity >= 0);
COMMENT ON COLUMN read_model.book_orders.price IS
    'Limit price in paise; NULL: a market order waiting for the uncross.';
COMMENT ON COLUMN read_model.book_orders.shown_quantity IS
    'The part of the open quantity the market sees (an iceberg''s current peak).';

-- The phase of each symbol's book, from its last OPENED, PRE_OPENED, UNCROSSED (which
-- is followed by OPENED), HALTED or CLOSED event; a symbol without a row is OPEN, as a
-- new book is.
CREATE TABLE read_model.phases (
    symbol     TEXT PRIMARY KEY,
    phase      TEXT NOT NULL CHECK (phase IN ('CLOSED', 'OPEN', 'PRE_OPEN', 'HALTED')),
    seq        BIGINT NOT NULL,                 -- the book's seq of that event
    changed_at timestamptz NOT NULL             -- the event's time
);

-- A stop's trigger is news of its own (brokercore.notify.render).
ALTER TABLE notification_preferences
    DROP CONSTRAINT notification_preferences_event_type_valid,
    ADD CONSTRAINT notification_preferences_event_type_valid CHECK (event_type IN
        ('FILL', 'TRIGGERED', 'CANCELLED', 'EXPIRED', 'REJECTED', 'PRICE_ALERT'));
