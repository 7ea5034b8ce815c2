-- 0013_kyc_order_facts: the OMS's read of a new order's facts gains the account's KYC
-- status (0010), so the OMS refuses an order of an account that is not VERIFIED
-- (ACCOUNT_NOT_VERIFIED) from the row it already reads under the account's lock: no
-- extra round trip per order, and an operator's decision is seen by the next order.
-- The functions are as in 0004 and 0006 otherwise; a function's result type cannot be
-- changed in place, so each is dropped and made again.

DROP FUNCTION oms_order_facts(text, text, text);
CREATE FUNCTION oms_order_facts(p_user text, p_symbol text, p_key text)
RETURNS TABLE (account_id bigint, cash bigint, blocked_cash bigint, allow_short boolean,
               free_shares bigint, new_order_id bigint, key_order_id bigint,
               key_request_hash text, key_expires_at timestamptz, key_order_status text,
               key_order_updated_at timestamptz, unpublished_outbox_id bigint,
               unpublished_payload bytea, kyc_status text)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
BEGIN
    SELECT a.account_id, a.cash, a.blocked_cash, a.allow_short, a.kyc_status
      INTO account_id, cash, blocked_cash, allow_short, kyc_status
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
    'a new order id for a new key; the account''s KYC status last.';

DROP FUNCTION oms_batch_facts(text[], text[], text[]);
CREATE FUNCTION oms_batch_facts(p_users text[], p_symbols text[], p_keys text[])
RETURNS TABLE (ord bigint, account_id bigint, cash bigint, blocked_cash bigint,
               allow_short boolean, free_shares bigint, new_order_id bigint,
               key_order_id bigint, key_request_hash text, key_expires_at timestamptz,
               key_order_status text, key_order_updated_at timestamptz,
               unpublished_outbox_id bigint, unpublished_payload bytea, kyc_status text)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
BEGIN
    PERFORM FROM accounts a WHERE a.user_id = ANY (p_users) ORDER BY a.account_id FOR UPDATE;
    -- a fresh snapshot from here on
    RETURN QUERY
    SELECT r.ord, a.account_id, a.cash, a.blocked_cash, a.allow_short,
           p.quantity - p.blocked_quantity, nextval('order_id_seq'),
           k.order_id, k.request_hash, k.expires_at, o.status, o.updated_at,
           b.outbox_id, b.payload, a.kyc_status
      FROM unnest(p_users, p_symbols, p_keys) WITH ORDINALITY AS r (user_id, symbol, key, ord)
      JOIN accounts a ON a.user_id = r.user_id
      LEFT JOIN positions p ON p.account_id = a.account_id AND p.symbol = r.symbol
      LEFT JOIN idempotency_keys k ON k.user_id = r.user_id AND k.key = r.key
      LEFT JOIN orders o ON o.order_id = k.order_id
      -- a retry: the order's command, if it is still unpublished, so the retry sends it
      -- (the IS NOT NULL spares a new key the lookup)
      LEFT JOIN LATERAL (
          SELECT f.outbox_id, f.payload
            FROM (SELECT x.outbox_id, x.payload, x.published_at FROM outbox x
                   WHERE k.order_id IS NOT NULL AND x.order_id = k.order_id
                   ORDER BY x.outbox_id LIMIT 1) f
           WHERE f.published_at IS NULL) b ON true
     ORDER BY r.ord;
END
$fn$;
COMMENT ON FUNCTION oms_batch_facts(text[], text[], text[]) IS
    'oms_order_facts for a batch: locks the users'' accounts in account_id order, then '
    'reads per order (ord = its index) the balances, the free shares of its symbol, its '
    'idempotency key with the key''s order and unpublished command, a new order id and '
    'the account''s KYC status.';
