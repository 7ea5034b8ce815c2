-- 0002_order_settlement: what an order blocks and has settled, per order
-- (the fields of brokercore.ledger.OrderHold), so that fills and an order's end
-- release exactly its own hold.

ALTER TABLE orders
    ADD COLUMN hold_price_ticks BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN blocked_cash     BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN blocked_shares   BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN filled_notional  BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN fees             BIGINT NOT NULL DEFAULT 0,
    ADD CONSTRAINT orders_blocks_nonnegative CHECK (blocked_cash >= 0 AND blocked_shares >= 0),
    ADD CONSTRAINT orders_settled_nonnegative CHECK (filled_notional >= 0 AND fees >= 0);
COMMENT ON COLUMN orders.hold_price_ticks IS
    'Price per share (engine ticks) the cash hold of a buy assumes: the limit price, or '
    'the protection price of a market buy. 0 for market sells.';
COMMENT ON COLUMN orders.blocked_cash IS 'Paise of the account''s blocked_cash this order still holds.';
COMMENT ON COLUMN orders.blocked_shares IS 'Shares of the position''s blocked_quantity this order still holds.';
COMMENT ON COLUMN orders.filled_notional IS 'Paise traded so far (price x quantity over its fills).';
COMMENT ON COLUMN orders.fees IS 'Paise of fees charged so far.';

-- The broker's fee income, so that cash is conserved: accounts' cash + this = constant.
CREATE TABLE fee_income (
    trade_id   TEXT NOT NULL,
    side       TEXT NOT NULL,
    amount     BIGINT NOT NULL CHECK (amount >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (trade_id, side)
);
