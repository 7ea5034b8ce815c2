-- 0012_inbox_watchlists: the customer's read side (issue 15): realised P&L on positions,
-- the notification inbox, watchlists.
--
-- Units as in 0001: money in paise, P&L NUMERIC paise (the average cost it comes from
-- has four decimals of a paisa), quantities in shares.

-- ---------------------------------------------------------------------------------
-- Realised P&L, kept by settlement (brokercore.consumers.settlement) in the transaction
-- that settles each fill
-- ---------------------------------------------------------------------------------

ALTER TABLE positions ADD COLUMN realised_pnl NUMERIC(24, 4) NOT NULL DEFAULT 0;
COMMENT ON COLUMN positions.realised_pnl IS
    'Paise realised on this symbol since this column exists: each fill that reduces the '
    'position adds (price - average cost) x the shares it closes (negated for a short), '
    'and each sell subtracts its fee. Positions held before this migration start at 0.';

-- ---------------------------------------------------------------------------------
-- The notification inbox: every notification the notifier renders
-- (brokercore.notify.inbox), written before it is published; read and marked read
-- through notifier-api
-- ---------------------------------------------------------------------------------

CREATE TABLE notification_inbox (
    inbox_id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id TEXT NOT NULL UNIQUE,
    user_id         TEXT NOT NULL,
    notification    JSONB NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    read_at         timestamptz
);
COMMENT ON TABLE notification_inbox IS
    'Every notification told to a user (whatever their channel preference), once: a '
    're-delivered event renders the same notification id, which is stored only the first '
    'time. Unread while read_at is NULL.';
COMMENT ON COLUMN notification_inbox.notification_id IS
    'The notification''s own id (brokercore.notify.render), the one pushed on WebSocket.';
COMMENT ON COLUMN notification_inbox.notification IS
    'The notification as pushed (brokercore.realtime.channels.Notification).';
-- the inbox's order: unread first, then newest (by inbox_id, the order stored)
CREATE INDEX notification_inbox_user_idx
    ON notification_inbox (user_id, (read_at IS NULL), inbox_id);

-- ---------------------------------------------------------------------------------
-- Watchlists: named lists of symbols per user (brokercore.read.watchlists)
-- ---------------------------------------------------------------------------------

-- A user's lists take the slots 1..20, so the database itself refuses a 21st list.
CREATE TABLE watchlists (
    watchlist_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      TEXT NOT NULL,
    slot         SMALLINT NOT NULL,
    name         TEXT NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT watchlists_slot_valid CHECK (slot BETWEEN 1 AND 20),
    CONSTRAINT watchlists_name_valid CHECK (length(name) BETWEEN 1 AND 64),
    CONSTRAINT watchlists_user_slot_unique UNIQUE (user_id, slot),
    CONSTRAINT watchlists_user_name_unique UNIQUE (user_id, name)
);
COMMENT ON COLUMN watchlists.slot IS 'Which of the user''s 20 lists this is (1..20).';

-- A list's symbols in the user's order: positions 0..49, so at most 50 per list.
CREATE TABLE watchlist_symbols (
    watchlist_id BIGINT NOT NULL REFERENCES watchlists (watchlist_id) ON DELETE CASCADE,
    position     SMALLINT NOT NULL,
    symbol       TEXT NOT NULL,
    PRIMARY KEY (watchlist_id, position),
    CONSTRAINT watchlist_symbols_position_valid CHECK (position BETWEEN 0 AND 49),
    CONSTRAINT watchlist_symbols_unique UNIQUE (watchlist_id, symbol)
);
COMMENT ON TABLE watchlist_symbols IS
    'The symbols of a list, in order. Whether a symbol is a known instrument is checked '
    'by the query service (the instruments file), not here.';
