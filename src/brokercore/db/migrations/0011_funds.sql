-- 0011_funds: withdrawals, the money that leaves an account through the payment provider
-- (brokercore.broker.withdrawals, the funds service; docs/funds.md).
--
-- A withdrawal is PENDING while the provider pays it out: its amount is part of the
-- account's blocked_cash, so no order can spend it and accounts_blocked_cash_within_cash
-- keeps cash from going negative. It ends COMPLETED (its block released and the
-- WITHDRAWAL row of `funding` written, reference 'withdrawal:<id>', in one transaction)
-- or FAILED (the block released, cash unchanged). No other change of status is possible,
-- a finished withdrawal never changes again, and none is deleted (trigger below).
-- Deposits need no table of their own: each is a DEPOSIT row of `funding`, its reference
-- 'deposit:<account_id>:<idempotency key>'.

CREATE TABLE withdrawals (
    withdrawal_id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id         BIGINT NOT NULL REFERENCES accounts (account_id),
    amount             BIGINT NOT NULL,
    status             TEXT NOT NULL DEFAULT 'PENDING',
    idempotency_key    TEXT NOT NULL,
    provider_reference TEXT,
    payout_attempts    INT NOT NULL DEFAULT 0,
    payout_due_at      timestamptz,
    requested_at       timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    failure_reason     TEXT,
    CONSTRAINT withdrawals_amount_positive CHECK (amount > 0),
    CONSTRAINT withdrawals_status_valid CHECK (status IN ('PENDING', 'COMPLETED', 'FAILED')),
    CONSTRAINT withdrawals_finished_when_ended CHECK ((status = 'PENDING') = (finished_at IS NULL)),
    CONSTRAINT withdrawals_reason_when_failed CHECK ((status = 'FAILED') = (failure_reason IS NOT NULL)),
    CONSTRAINT withdrawals_key_once UNIQUE (account_id, idempotency_key)
);
COMMENT ON TABLE withdrawals IS
    'Cash paid out to the account''s bank: PENDING (its amount blocked) -> COMPLETED '
    '(funding row written) or FAILED (block released); nothing else.';
COMMENT ON COLUMN withdrawals.amount IS 'Paise, > 0.';
COMMENT ON COLUMN withdrawals.idempotency_key IS
    'The client''s Idempotency-Key: the same request sent twice is one withdrawal.';
COMMENT ON COLUMN withdrawals.provider_reference IS 'The payment provider''s id of the payout.';
COMMENT ON COLUMN withdrawals.payout_due_at IS
    'When the payout is sent (again) to the provider; NULL once the provider took it '
    'or the withdrawal ended.';
CREATE INDEX withdrawals_account_idx ON withdrawals (account_id, withdrawal_id DESC);
CREATE INDEX withdrawals_pending_idx ON withdrawals (account_id) WHERE status = 'PENDING';
CREATE INDEX withdrawals_payout_due_idx ON withdrawals (payout_due_at)
    WHERE status = 'PENDING' AND payout_due_at IS NOT NULL;

-- Only PENDING -> COMPLETED | FAILED; what was asked (account, amount, key, time) never
-- changes; a finished withdrawal is final; none is deleted or truncated away.
CREATE FUNCTION withdrawals_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'withdrawals are never deleted: % is not allowed', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status <> 'PENDING' THEN
        RAISE EXCEPTION 'withdrawal % is % and final', OLD.withdrawal_id, OLD.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'withdrawals_status_transition',
                  TABLE = 'withdrawals';
    END IF;
    IF (NEW.account_id, NEW.amount, NEW.idempotency_key, NEW.requested_at)
       IS DISTINCT FROM (OLD.account_id, OLD.amount, OLD.idempotency_key, OLD.requested_at) THEN
        RAISE EXCEPTION 'withdrawal %: its account, amount, key and time never change',
            OLD.withdrawal_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'withdrawals_request_fixed',
                  TABLE = 'withdrawals';
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER withdrawals_guard_update_delete
    BEFORE UPDATE OR DELETE ON withdrawals
    FOR EACH ROW EXECUTE FUNCTION withdrawals_guard();
CREATE TRIGGER withdrawals_no_truncate
    BEFORE TRUNCATE ON withdrawals
    FOR EACH STATEMENT EXECUTE FUNCTION withdrawals_guard();
