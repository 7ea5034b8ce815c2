-- 0003_read_model: the query side (CQRS), market data, and notifications.
--
-- Everything in schema read_model is written by the projector (services/projector)
-- from the engine's events, in the transaction that stores its Kafka offsets; the
-- query service and the WebSocket gateway only read it. Units as in 0001: money and
-- prices in paise (BIGINT), averages NUMERIC(20,4) paise, quantities in shares.

CREATE SCHEMA read_model;

-- One row per order of ours (orders of accounts in `accounts`), denormalised: who,
-- what, where it stands, and its fills, so one row answers GET /orders/{id}.
CREATE TABLE read_model.orders (
    order_id        BIGINT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    account_id      BIGINT NOT NULL,
    symbol          TEXT NOT NULL,
    side            TEXT NOT NULL,
    type            TEXT NOT NULL,
    time_in_force   TEXT NOT NULL,
    price           BIGINT,                     -- current limit price (after amends); NULL = market
    quantity        BIGINT NOT NULL,            -- filled + open (an amend changes it)
    filled_quantity BIGINT NOT NULL DEFAULT 0,
    filled_notional BIGINT NOT NULL DEFAULT 0,  -- paise traded
    avg_price       NUMERIC(20, 4),             -- NULL before the first fill
    status          TEXT NOT NULL,
    reject_reason   TEXT,
    fills           JSONB NOT NULL DEFAULT '[]'::jsonb,   -- [{tradeId, price, quantity, time}]
    created_at      timestamptz NOT NULL,       -- when the OMS took it
    updated_at      timestamptz NOT NULL,       -- time of the last event applied
    last_update_id  BIGINT NOT NULL DEFAULT 0   -- its newest read_model.order_updates row
);
CREATE INDEX read_orders_user_idx ON read_model.orders (user_id, created_at DESC, order_id DESC);
CREATE INDEX read_orders_user_status_idx ON read_model.orders (user_id, status, created_at DESC);
CREATE INDEX read_orders_user_symbol_idx ON read_model.orders (user_id, symbol, created_at DESC);

-- Shares held per user and symbol, from fills (average cost of what is held).
CREATE TABLE read_model.positions (
    user_id    TEXT NOT NULL,
    symbol     TEXT NOT NULL,
    quantity   BIGINT NOT NULL DEFAULT 0,
    avg_price  NUMERIC(20, 4) NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, symbol)
);

-- Every change of an order as pushed to its user (ORDER_UPDATE), numbered: a client that
-- reconnects asks for what came after the last update_id it saw.
CREATE TABLE read_model.order_updates (
    update_id  BIGSERIAL PRIMARY KEY,
    user_id    TEXT NOT NULL,
    order_id   BIGINT NOT NULL,
    payload    JSONB NOT NULL,                  -- the ORDER_UPDATE message, as sent
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX read_order_updates_user_idx ON read_model.order_updates (user_id, update_id);

-- Market data, for every order on the books (ours or not).
CREATE TABLE read_model.book_orders (
    order_id      BIGINT PRIMARY KEY,
    symbol        TEXT NOT NULL,
    side          TEXT NOT NULL,
    price         BIGINT NOT NULL,              -- paise
    open_quantity BIGINT NOT NULL CHECK (open_quantity > 0)
);
CREATE INDEX read_book_orders_level_idx ON read_model.book_orders (symbol, side, price);

CREATE TABLE read_model.trades (
    trade_id    TEXT PRIMARY KEY,               -- brokercore.settlement.trade_id
    symbol      TEXT NOT NULL,
    seq         BIGINT NOT NULL,                -- the book's sequence number: the trades'
                                                -- order (one sweep shares one timestamp)
    price       BIGINT NOT NULL,                -- paise
    quantity    BIGINT NOT NULL,
    executed_at timestamptz NOT NULL,
    UNIQUE (symbol, seq)
);
CREATE INDEX read_trades_symbol_time_idx ON read_model.trades (symbol, executed_at);

-- ---------------------------------------------------------------------------------
-- Notifications (services/notifier)
-- ---------------------------------------------------------------------------------

-- How a user wants to hear of each kind of event; no row = the default (IN_APP, and
-- PUSH when the user has no open WebSocket).
CREATE TABLE notification_preferences (
    user_id    TEXT NOT NULL,
    event_type TEXT NOT NULL,
    channel    TEXT NOT NULL,
    PRIMARY KEY (user_id, event_type),
    CONSTRAINT notification_preferences_event_type_valid CHECK (event_type IN
        ('FILL', 'CANCELLED', 'EXPIRED', 'REJECTED', 'PRICE_ALERT')),
    CONSTRAINT notification_preferences_channel_valid CHECK (channel IN ('IN_APP', 'PUSH', 'NONE'))
);

-- Where push notifications of a user go (device tokens of the push provider).
CREATE TABLE push_devices (
    user_id      TEXT NOT NULL,
    device_token TEXT NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_token)
);

-- "Notify me when SYMBOL crosses PRICE": fires once each time the last trade price
-- moves from one side of price to the other (side: -1 below, 1 at or above, 0 unknown).
CREATE TABLE price_alerts (
    alert_id      BIGSERIAL PRIMARY KEY,
    user_id       TEXT NOT NULL,
    symbol        TEXT NOT NULL,
    price         BIGINT NOT NULL CHECK (price > 0),   -- paise
    side          SMALLINT NOT NULL DEFAULT 0 CHECK (side IN (-1, 0, 1)),
    fired         INT NOT NULL DEFAULT 0,
    last_fired_at timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX price_alerts_symbol_idx ON price_alerts (symbol);

-- The fires of price alerts whose notifications may not be out yet: written in the
-- transaction that moves the alerts, deleted once the notifier has committed the Kafka
-- offset of the trade's message. A re-delivered trade fires nothing (its alerts have
-- moved on), so a notifier that starts sends again what a predecessor left here.
CREATE TABLE alert_fires (
    notification_id TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    notification    JSONB NOT NULL,             -- the streams.Notification
    partition       INT NOT NULL,               -- where the trade's message is on events
    kafka_offset    BIGINT NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_fires_offset_idx ON alert_fires (partition, kafka_offset);
CREATE INDEX price_alerts_user_idx ON price_alerts (user_id, alert_id);

-- ---------------------------------------------------------------------------------
-- Backfill: a database that already has orders and holdings starts its read model from
-- them (the projector then carries on from the events after its stored offsets).
-- ---------------------------------------------------------------------------------

INSERT INTO read_model.positions (user_id, symbol, quantity, avg_price)
SELECT a.user_id, p.symbol, p.quantity, p.avg_price
  FROM positions p JOIN accounts a USING (account_id);

INSERT INTO read_model.orders (order_id, user_id, account_id, symbol, side, type,
    time_in_force, price, quantity, filled_quantity, filled_notional, avg_price, status,
    reject_reason, fills, created_at, updated_at)
SELECT o.order_id, a.user_id, o.account_id, o.symbol, o.side, o.type, o.time_in_force,
       o.price, o.quantity, o.filled_quantity, o.filled_notional, o.avg_fill_price, o.status,
       o.reject_reason,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'tradeId', f.trade_id, 'price', to_char(f.price / 100.0, 'FM999999999990.00'),
                    'quantity', f.quantity, 'time', f.executed_at) ORDER BY f.executed_at)
                   FROM fills f WHERE f.order_id = o.order_id AND f.side = o.side), '[]'::jsonb),
       o.created_at, o.updated_at
  FROM orders o JOIN accounts a USING (account_id)
 WHERE o.status <> 'PENDING';
