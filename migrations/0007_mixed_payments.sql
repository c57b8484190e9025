-- Mixed payments (seed 000 §6.4): one order paid by several methods at once. The internal
-- parts are taken in one transaction; with a WeChat part they are held until WeChat settles
-- (then final) or the order closes unpaid (then returned, each with its own ledger row).

CREATE TABLE mixed_payments (
    -- MIX…: what the order's pay_no names once it is paid this way
    mixed_no    TEXT PRIMARY KEY,
    order_no    TEXT NOT NULL REFERENCES orders (order_no),
    user_id     BIGINT NOT NULL REFERENCES users (id),
    amount      NUMERIC(12,2) NOT NULL CHECK (amount > 0),
    -- PAYING: its internal parts are held for its WeChat part; SUCCESS: every part is final;
    -- CLOSED: the order closed or reopened unpaid, and every hold was returned
    status      TEXT NOT NULL CHECK (status IN ('PAYING', 'SUCCESS', 'CLOSED')),
    -- the pay request that made it: a redelivered request is answered from it
    request_id  UUID NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    paid_at     TIMESTAMPTZ,
    closed_at   TIMESTAMPTZ
);
CREATE INDEX mixed_payments_order_idx ON mixed_payments (order_no);

-- A part of a mixed payment is a payments row that names it. Parts carry no request id of
-- their own (the mixed payment has it).
ALTER TABLE payments ADD COLUMN mixed_no TEXT REFERENCES mixed_payments (mixed_no);
ALTER TABLE payments ALTER COLUMN request_id DROP NOT NULL;
ALTER TABLE payments ADD CONSTRAINT payments_request_check CHECK (request_id IS NOT NULL OR mixed_no IS NOT NULL);
CREATE INDEX payments_mixed_idx ON payments (mixed_no) WHERE mixed_no IS NOT NULL;

-- HELD: taken from the account, waiting for the mixed payment's WeChat part;
-- RETURNED: a hold given back when the order closed unpaid.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('PAYING', 'HELD', 'SUCCESS', 'FAILED', 'CLOSED', 'RETURNED', 'REFUNDED'));

-- One live payment per order and method: a returned hold no longer counts, so the order can be
-- paid again with that method once it is payable again.
ALTER TABLE payments DROP CONSTRAINT payments_order_no_method_key;
CREATE UNIQUE INDEX payments_order_method_idx ON payments (order_no, method) WHERE status <> 'RETURNED';

ALTER TABLE orders DROP CONSTRAINT orders_pay_type_check;
ALTER TABLE orders ADD CONSTRAINT orders_pay_type_check
    CHECK (pay_type IN ('wechat', 'balance', 'integral', 'money2', 'mixed'));

-- The ledger keeps one row per payment and movement: the payment ('pay'), its hold ('hold'),
-- the hold given back ('return').
DROP INDEX asset_ledger_pay_no_idx;
CREATE UNIQUE INDEX asset_ledger_pay_no_idx ON asset_ledger (pay_no, reason) WHERE pay_no IS NOT NULL;
