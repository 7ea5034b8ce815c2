-- 0007_outbox_by_order: a retried order finds its command in the outbox by order id.
--
-- oms_order_facts (0004) and oms_batch_facts (0006) look up the first outbox row of the
-- key's order to send it again if it is still unpublished. Without an index on order_id
-- that lookup walked the outbox from its oldest row, so each retry cost more as the day
-- went on, and at the open the edge and the clients retry the most.

CREATE INDEX outbox_order_idx ON outbox (order_id, outbox_id);
