-- Refunds through WeChat (seed 002). A refund's WeChat part is asked of WeChat by the
-- notify-worker and settles by WeChat's refund notify, or by a query when none comes. It may end
-- ABNORMAL (the money left the merchant but did not reach the payer: operators see to it) or
-- CLOSED (WeChat gave it up: the money stayed, and the part no longer counts against what its
-- payment may give back). A WeChat payment that took money for an order already closed or paid
-- is refunded in full by itself: such a refund names that payment and leaves the order alone.

ALTER TABLE refunds DROP CONSTRAINT refunds_status_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_status_check
    CHECK (status IN ('PROCESSING', 'SUCCESS', 'ABNORMAL', 'CLOSED'));
-- set: the refund of this one payment, not of the order
ALTER TABLE refunds ADD COLUMN pay_no TEXT REFERENCES payments (pay_no);
CREATE UNIQUE INDEX refunds_pay_no_idx ON refunds (pay_no) WHERE pay_no IS NOT NULL;

ALTER TABLE refund_parts DROP CONSTRAINT refund_parts_status_check;
ALTER TABLE refund_parts ADD CONSTRAINT refund_parts_status_check
    CHECK (status IN ('PROCESSING', 'SUCCESS', 'ABNORMAL', 'CLOSED'));
-- WeChat's number of the refund; when WeChat accepted it (from then on it is queried, never
-- asked for again); when it settled, and the report it settled by
ALTER TABLE refund_parts ADD COLUMN channel_refund_id TEXT;
ALTER TABLE refund_parts ADD COLUMN asked_at TIMESTAMPTZ;
ALTER TABLE refund_parts ADD COLUMN settled_at TIMESTAMPTZ;
ALTER TABLE refund_parts ADD COLUMN report_raw TEXT;
CREATE INDEX refund_parts_waiting_idx ON refund_parts (refund_no) WHERE status = 'PROCESSING';
