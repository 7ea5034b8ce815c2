-- 0014_order_modify: an open order may be modified (PATCH /api/v1/orders/{id},
-- brokercore.entry.modify). The engine's AMEND sets the order's new OPEN quantity, so
-- a fill that lands between the request and the engine's AMENDED adds to what the order
-- can still buy or sell: until the engine answers, the order keeps what its old terms
-- hold AND blocks what the new terms need (``modify_cash`` / ``modify_shares``, a part
-- of its blocked_cash / blocked_shares, so the account's and the position's blocked
-- totals still equal the sum of their open orders'). Settlement reprices the order to
-- the engine's AMENDED (releasing the rest) or releases the reserve on a REJECTED amend.
-- One modify at a time per order; the OMS counts them (a configured limit).
-- trigger_price takes the new value at once (so the read model shows it with the
-- AMENDED), ``modify_undo_trigger`` keeping the old one for a REJECTED amend; a new
-- disclosed quantity waits in ``modify_disclosed`` until the AMENDED (it must fit the
-- new quantity, which only the AMENDED sets).

ALTER TABLE orders
    ADD COLUMN modifications          INT     NOT NULL DEFAULT 0,
    ADD COLUMN modify_pending         BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN modify_cash            BIGINT  NOT NULL DEFAULT 0,
    ADD COLUMN modify_shares          BIGINT  NOT NULL DEFAULT 0,
    ADD COLUMN modify_undo_trigger    BIGINT,
    ADD COLUMN modify_disclosed       BIGINT,
    ADD CONSTRAINT orders_modifications_nonnegative CHECK (modifications >= 0),
    ADD CONSTRAINT orders_modify_reserve_within_blocks CHECK (
        modify_cash BETWEEN 0 AND blocked_cash AND modify_shares BETWEEN 0 AND blocked_shares),
    ADD CONSTRAINT orders_modify_reserve_only_pending CHECK (
        modify_pending OR (modify_cash = 0 AND modify_shares = 0));

COMMENT ON COLUMN orders.modifications IS
    'Modify requests the OMS took for this order (it refuses past its configured limit).';
COMMENT ON COLUMN orders.modify_pending IS
    'A modify was sent to the engine and neither its AMENDED nor its REJECTED is settled.';
COMMENT ON COLUMN orders.modify_cash IS
    'Paise of blocked_cash reserved for the pending modify''s new terms.';
COMMENT ON COLUMN orders.modify_shares IS
    'Shares of blocked_shares reserved for the pending modify''s new terms.';
