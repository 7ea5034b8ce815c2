-- 0006_group_commit: the OMS's read of a whole batch of new orders in one statement
-- (brokercore.entry.group_commit decides a batch in one transaction).

-- oms_order_facts (0004) for many orders at once: order i is (p_users[i], p_symbols[i],
-- p_keys[i]); one row per order whose user has an account, tagged with i (ord). The
-- accounts are locked first, all of them, in account_id order: two OMS processes'
-- batches then never wait for each other in a cycle (settlement locks in the same
-- order). The rest is read after the locks by a second statement, with a fresh snapshot,
-- for the reason 0004 gives. Every row draws an order id, used only when the key is new
-- (or expired); ids skipped are harmless gaps. A user's row repeats the account's
-- balances: the caller keeps the running balance of a batch's orders itself.
CREATE FUNCTION oms_batch_facts(p_users text[], p_symbols text[], p_keys text[])
RETURNS TABLE (ord bigint, account_id bigint, cash bigint, blocked_cash bigint,
               allow_short boolean, free_shares bigint, new_order_id bigint,
               key_order_id bigint, key_request_hash text, key_expires_at timestamptz,
               key_order_status text, key_order_updated_at timestamptz,
               unpublished_outbox_id bigint, unpublished_payload bytea)
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
           b.outbox_id, b.payload
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
    'idempotency key with the key''s order and unpublished command, and a new order id.';
