-- 0004_invariants: the money and share rules as the database's own, and the OMS's
-- read of an order's facts after the lock that orders its writers.
--
-- A bug in any writer (OMS, settlement, a future path) must become an error here, never a
-- short sale: an account without allow_short can neither hold fewer than zero shares nor
-- block more shares than it holds. The cash rules (cash >= 0, 0 <= blocked_cash <= cash)
-- are CHECK constraints since 0001.

-- ---------------------------------------------------------------------------------
-- Short selling: positions of accounts that may not short
-- ---------------------------------------------------------------------------------

-- A CHECK constraint cannot see accounts.allow_short, so a trigger checks the rows that
-- would break the rule; its WHEN clause keeps the common case (nothing broken) free.
CREATE FUNCTION positions_check_short() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NOT (SELECT allow_short FROM accounts WHERE account_id = NEW.account_id) THEN
        IF NEW.quantity < 0 THEN
            RAISE EXCEPTION 'positions_no_short: account % may not short, but its % holding would be % shares',
                NEW.account_id, NEW.symbol, NEW.quantity
                USING ERRCODE = 'check_violation', CONSTRAINT = 'positions_no_short',
                      TABLE = 'positions';
        END IF;
        RAISE EXCEPTION 'positions_blocked_within_held: account % may not short, but % blocked % shares of %',
            NEW.account_id, NEW.symbol, NEW.blocked_quantity, NEW.quantity
            USING ERRCODE = 'check_violation', CONSTRAINT = 'positions_blocked_within_held',
                  TABLE = 'positions';
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER positions_short_selling
    BEFORE INSERT OR UPDATE ON positions
    FOR EACH ROW WHEN (NEW.quantity < 0 OR NEW.blocked_quantity > NEW.quantity)
    EXECUTE FUNCTION positions_check_short();

-- Taking short selling away from an account that is short (or over-blocked) would leave a
-- state the rule above forbids.
CREATE FUNCTION accounts_check_short_revoked() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM positions WHERE account_id = NEW.account_id
                AND (quantity < 0 OR blocked_quantity > quantity)) THEN
        RAISE EXCEPTION 'positions_no_short: account % has short or over-blocked positions; '
                        'allow_short cannot be turned off', NEW.account_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'positions_no_short',
                  TABLE = 'accounts';
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER accounts_short_revoked
    BEFORE UPDATE OF allow_short ON accounts
    FOR EACH ROW WHEN (OLD.allow_short AND NOT NEW.allow_short)
    EXECUTE FUNCTION accounts_check_short_revoked();

-- ---------------------------------------------------------------------------------
-- The OMS's read of a new order's facts
-- ---------------------------------------------------------------------------------

-- Everything the OMS's checks of a new order depend on, read AFTER the account's row lock.
-- In READ COMMITTED a single statement keeps the snapshot it started with: a
-- SELECT ... FOR UPDATE that waited for the lock sees the locked row's newest version but
-- reads every other table (the position, the idempotency key) as it was before the wait,
-- so blocks committed meanwhile were invisible and concurrent sells oversold a holding.
-- In a plpgsql function each statement takes a fresh snapshot, so the reads below see
-- every write committed by the transactions the lock made this one wait for, and the
-- whole read stays one round trip. The account lock orders every writer of an account's
-- cash, positions and keys (settlement locks accounts before positions, too).
CREATE FUNCTION oms_order_facts(p_user text, p_symbol text, p_key text)
RETURNS TABLE (account_id bigint, cash bigint, blocked_cash bigint, allow_short boolean,
               free_shares bigint, new_order_id bigint, key_order_id bigint,
               key_request_hash text, key_expires_at timestamptz, key_order_status text,
               key_order_updated_at timestamptz, unpublished_outbox_id bigint,
               unpublished_payload bytea)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
BEGIN
    SELECT a.account_id, a.cash, a.blocked_cash, a.allow_short
      INTO account_id, cash, blocked_cash, allow_short
      FROM accounts a WHERE a.user_id = p_user FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- a fresh snapshot from here on
    SELECT p.quantity - p.blocked_quantity INTO free_shares
      FROM positions p WHERE p.account_id = oms_order_facts.account_id AND p.symbol = p_symbol;
    SELECT k.order_id, k.request_hash, k.expires_at, o.status, o.updated_at
      INTO key_order_id, key_request_hash, key_expires_at, key_order_status,
           key_order_updated_at
      FROM idempotency_keys k LEFT JOIN orders o ON o.order_id = k.order_id
     WHERE k.user_id = p_user AND k.key = p_key;
    IF key_order_id IS NOT NULL THEN
        -- a retry: the order's command, if it is still unpublished, so the retry sends it
        SELECT b.outbox_id, b.payload INTO unpublished_outbox_id, unpublished_payload
          FROM (SELECT outbox_id, payload, published_at FROM outbox
                 WHERE order_id = key_order_id ORDER BY outbox_id LIMIT 1) b
         WHERE b.published_at IS NULL;
    ELSE
        new_order_id := nextval('order_id_seq');
    END IF;
    RETURN NEXT;
END
$fn$;
COMMENT ON FUNCTION oms_order_facts(text, text, text) IS
    'Locks the user''s account, then reads (fresh, after the lock) the free shares of the '
    'symbol, the idempotency key with its order and the order''s unpublished command, and '
    'a new order id for a new key.';

COMMENT ON TABLE positions IS
    'Shares held per account and symbol. For an account without allow_short, quantity '
    '>= 0 and blocked_quantity <= quantity (trigger positions_short_selling); for every '
    'account blocked_quantity >= 0.';
COMMENT ON COLUMN positions.quantity IS 'Shares held (negative = short, only with allow_short).';
