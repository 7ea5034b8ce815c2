-- 0020_reconciler_findings: what each run of the reconciler found (issue 17, the
-- operator page: "the shards, lag and the reconciler's findings";
-- brokercore.consumers.reconcile.record_run, brokercore.read.operations).
--
-- A run is one round of the long-running reconciler (the ledger's invariants, every 30 s)
-- or one `brokercore service reconciler --report` (Kafka's events against Postgres, and
-- the invariants). Each run is a row, found something or not (an operator sees when the
-- ledger was last checked), with a row per finding (the first 1,000 of a run: its count
-- is whole), written in one transaction. Both tables are append-only, as a log of what
-- was seen: a finding that goes away is a later run without it.

CREATE TABLE reconciler_runs (
    run_id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ran_at   timestamptz NOT NULL,
    scope    TEXT NOT NULL,
    findings INTEGER NOT NULL,
    CONSTRAINT reconciler_runs_scope_valid CHECK (scope IN ('INVARIANTS', 'FULL')),
    CONSTRAINT reconciler_runs_findings_counted CHECK (findings >= 0)
);
COMMENT ON TABLE reconciler_runs IS
    'Append-only: each run of the reconciler, its time, what it checked (INVARIANTS: the '
    'ledger''s invariants; FULL: also Kafka''s events against Postgres) and how many '
    'findings it stored in reconciler_findings.';
CREATE INDEX reconciler_runs_latest_idx ON reconciler_runs (scope, ran_at DESC, run_id DESC);

CREATE TABLE reconciler_findings (
    run_id     BIGINT NOT NULL REFERENCES reconciler_runs (run_id),
    position   INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    account_id BIGINT,
    order_id   BIGINT,
    detail     TEXT NOT NULL,
    PRIMARY KEY (run_id, position)
);
COMMENT ON TABLE reconciler_findings IS
    'Append-only: the findings of a run (brokercore.consumers.reconcile.Finding), in the '
    'order it reported them (position 0, 1, ...), the first 1,000 of a run at most.';

CREATE FUNCTION reconciler_append_only() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$fn$;

CREATE TRIGGER reconciler_runs_no_update_delete
    BEFORE UPDATE OR DELETE ON reconciler_runs
    FOR EACH ROW EXECUTE FUNCTION reconciler_append_only();
CREATE TRIGGER reconciler_runs_no_truncate
    BEFORE TRUNCATE ON reconciler_runs
    FOR EACH STATEMENT EXECUTE FUNCTION reconciler_append_only();
CREATE TRIGGER reconciler_findings_no_update_delete
    BEFORE UPDATE OR DELETE ON reconciler_findings
    FOR EACH ROW EXECUTE FUNCTION reconciler_append_only();
CREATE TRIGGER reconciler_findings_no_truncate
    BEFORE TRUNCATE ON reconciler_findings
    FOR EACH STATEMENT EXECUTE FUNCTION reconciler_append_only();
