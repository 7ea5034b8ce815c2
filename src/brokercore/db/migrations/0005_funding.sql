-- 0005_funding: what enters and leaves an account other than by trading, so that money
-- and shares can be checked as conserved (brokercore.reconcile.check_invariants):
--
--   accounts.cash       = deposits - withdrawals - bought + sold - fees   (paise)
--   positions.quantity  = shares in - shares out + bought - sold          (shares)
--
-- where bought, sold and fees come from fills and fee_income. Rows are written only by
-- brokercore.funding.fund, in the transaction that changes the balance; the table is
-- append-only (a correction is a new row, as in any ledger).

CREATE TABLE funding (
    funding_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts (account_id),
    kind       TEXT NOT NULL,
    symbol     TEXT,
    amount     BIGINT NOT NULL DEFAULT 0,
    quantity   BIGINT NOT NULL DEFAULT 0,
    price      NUMERIC(20, 4),
    reference  TEXT UNIQUE,
    at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT funding_kind_valid CHECK (kind IN ('DEPOSIT', 'WITHDRAWAL', 'SHARES_IN', 'SHARES_OUT')),
    CONSTRAINT funding_cash_or_shares CHECK (
        (kind IN ('DEPOSIT', 'WITHDRAWAL') AND symbol IS NULL AND amount > 0
            AND quantity = 0 AND price IS NULL)
        OR (kind = 'SHARES_IN' AND symbol IS NOT NULL AND quantity > 0 AND amount = 0
            AND (price IS NULL OR price >= 0))
        OR (kind = 'SHARES_OUT' AND symbol IS NOT NULL AND quantity > 0 AND amount = 0
            AND price IS NULL))
);
COMMENT ON TABLE funding IS
    'Append-only journal of cash and shares moved into or out of an account other than by '
    'trading (deposits, withdrawals, transfers of shares, opening balances).';
COMMENT ON COLUMN funding.amount IS 'Paise, > 0, for DEPOSIT and WITHDRAWAL; 0 otherwise.';
COMMENT ON COLUMN funding.quantity IS 'Shares, > 0, for SHARES_IN and SHARES_OUT; 0 otherwise.';
COMMENT ON COLUMN funding.price IS
    'Cost per share in paise of shares moved in, if known (it sets the average cost).';
COMMENT ON COLUMN funding.reference IS
    'The outside reference (a payment''s id, a transfer''s id); unique, so the same funding '
    'sent twice is applied once.';
CREATE INDEX funding_account_idx ON funding (account_id, funding_id);

CREATE FUNCTION funding_append_only() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'funding is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$fn$;

CREATE TRIGGER funding_no_update_delete
    BEFORE UPDATE OR DELETE ON funding
    FOR EACH ROW EXECUTE FUNCTION funding_append_only();
CREATE TRIGGER funding_no_truncate
    BEFORE TRUNCATE ON funding
    FOR EACH STATEMENT EXECUTE FUNCTION funding_append_only();

-- ---------------------------------------------------------------------------------
-- Opening balances of the accounts that exist already
-- ---------------------------------------------------------------------------------

-- Accounts created before this migration were funded by plain INSERTs. Their opening
-- entry is today's balance minus what their fills explain, so the conservation checks
-- start from here instead of reporting every old account; anything wrong before now is
-- folded into that opening entry (the other checks, negative holdings and holds, still
-- see it).
WITH traded AS (
    SELECT f.account_id,
           sum(CASE f.side WHEN 'SELL' THEN f.price * f.quantity
                           ELSE -(f.price * f.quantity) END)
             - coalesce(sum(fi.amount), 0) AS net
      FROM fills f LEFT JOIN fee_income fi USING (trade_id, side)
     GROUP BY f.account_id),
opening AS (
    SELECT a.account_id, a.created_at, a.cash - coalesce(t.net, 0) AS amount
      FROM accounts a LEFT JOIN traded t USING (account_id))
INSERT INTO funding (account_id, kind, amount, reference, at)
SELECT account_id, CASE WHEN amount > 0 THEN 'DEPOSIT' ELSE 'WITHDRAWAL' END,
       abs(amount)::bigint, 'opening balance: account ' || account_id, created_at
  FROM opening WHERE amount <> 0
 ORDER BY account_id;

WITH traded AS (
    SELECT account_id, symbol, sum(CASE side WHEN 'BUY' THEN quantity ELSE -quantity END) AS net
      FROM fills GROUP BY account_id, symbol),
opening AS (
    SELECT account_id, symbol, coalesce(p.quantity, 0) - coalesce(t.net, 0) AS quantity
      FROM positions p FULL JOIN traded t USING (account_id, symbol))
INSERT INTO funding (account_id, kind, symbol, quantity, reference, at)
SELECT o.account_id, CASE WHEN o.quantity > 0 THEN 'SHARES_IN' ELSE 'SHARES_OUT' END,
       o.symbol, abs(o.quantity)::bigint,
       'opening holding: account ' || o.account_id || ' ' || o.symbol, a.created_at
  FROM opening o JOIN accounts a USING (account_id)
 WHERE o.quantity <> 0
 ORDER BY o.account_id, o.symbol;
