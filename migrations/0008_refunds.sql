-- Refunds (seed 002): an operator gives a paid order's money back, in full or in part, each
-- refund named by the operator's refund_no (so sending it twice refunds once). A refund is split
-- over the payments that paid the order (refund_parts); what each payment and order has given
-- back is kept beside what it took, and the database refuses to give back more.

CREATE TABLE refunds (
    refund_no        TEXT PRIMARY KEY CHECK (refund_no ~ '^[A-Za-z0-9_-]{1,64}$'),
    order_no         TEXT NOT NULL REFERENCES orders (order_no),
    -- as asked: NULL meant "what was left"; a second request must ask the same
    requested_amount NUMERIC(12,2) CHECK (requested_amount > 0),
    amount           NUMERIC(12,2) NOT NULL CHECK (amount > 0),
    reason           TEXT NOT NULL,
    operator         TEXT NOT NULL,
    -- SUCCESS: every part given back
    status           TEXT NOT NULL CHECK (status IN ('PROCESSING', 'SUCCESS')),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at      TIMESTAMPTZ
);
CREATE INDEX refunds_order_idx ON refunds (order_no);

CREATE TABLE refund_parts (
    -- RF…: the number of this part's profit_pay row
    part_no       TEXT PRIMARY KEY,
    refund_no     TEXT NOT NULL REFERENCES refunds (refund_no),
    pay_no        TEXT NOT NULL REFERENCES payments (pay_no),
    method        TEXT NOT NULL CHECK (method IN ('balance', 'integral', 'money2', 'wechat')),
    -- yuan, and what goes back to the account in the asset's unit (points for integral)
    amount        NUMERIC(12,2) NOT NULL CHECK (amount > 0),
    asset_amount  NUMERIC(12,2) NOT NULL CHECK (asset_amount > 0),
    status        TEXT NOT NULL CHECK (status IN ('PROCESSING', 'SUCCESS')),
    UNIQUE (refund_no, pay_no)
);
CREATE INDEX refund_parts_pay_idx ON refund_parts (pay_no);

-- What each payment and order gave back: never more than it took, whatever runs at once.
ALTER TABLE payments ADD COLUMN refunded NUMERIC(12,2) NOT NULL DEFAULT 0;
ALTER TABLE payments ADD CONSTRAINT payments_refunded_check CHECK (refunded >= 0 AND refunded <= amount);
ALTER TABLE orders ADD COLUMN refunded NUMERIC(12,2) NOT NULL DEFAULT 0;
ALTER TABLE orders ADD CONSTRAINT orders_refunded_check CHECK (refunded >= 0 AND refunded <= amount);

ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('PAYING', 'HELD', 'SUCCESS', 'FAILED', 'CLOSED', 'RETURNED', 'PARTIALLY_REFUNDED', 'REFUNDED'));

ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('UNPAID', 'PAYING', 'PAID', 'PARTIALLY_REFUNDED', 'REFUNDED', 'CLOSED'));
ALTER TABLE orders DROP CONSTRAINT orders_check;
ALTER TABLE orders ADD CONSTRAINT orders_paid_check
    CHECK ((status IN ('PAID', 'PARTIALLY_REFUNDED', 'REFUNDED')) = (pay_no IS NOT NULL));

-- A refund's ledger rows name it; a payment may be refunded several times.
ALTER TABLE asset_ledger ADD COLUMN refund_no TEXT REFERENCES refunds (refund_no);
DROP INDEX asset_ledger_pay_no_idx;
CREATE UNIQUE INDEX asset_ledger_pay_no_idx ON asset_ledger (pay_no, reason) WHERE pay_no IS NOT NULL AND refund_no IS NULL;
CREATE UNIQUE INDEX asset_ledger_refund_idx ON asset_ledger (refund_no, pay_no) WHERE refund_no IS NOT NULL;
