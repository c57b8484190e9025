-- WeChat Pay: what a WeChat payment needs to be created once and reused (the prepay), the
-- notifies received (each kept raw), and alerts for notifies that must not settle an order.

ALTER TABLE payments
    ADD COLUMN trade_type  TEXT,
    ADD COLUMN openid      TEXT,
    ADD COLUMN client_ip   TEXT,
    ADD COLUMN description TEXT,
    -- v2 or v3: the API generation the channel order was created with
    ADD COLUMN api_version TEXT,
    -- the channel's answer to the prepay (channel::Prepaid as JSON) and when it came
    ADD COLUMN prepaid     JSONB,
    ADD COLUMN prepaid_at  TIMESTAMPTZ,
    -- the notify (or query answer) that settled the payment, as received
    ADD COLUMN notify_raw  TEXT;

-- One row per notify or query answer that reached the notify-worker.
CREATE TABLE wechat_notifies (
    id            BIGSERIAL PRIMARY KEY,
    -- WeChat's notify id (v3), the transaction id (v2), or query:<out_trade_no>:<n>
    notify_id     TEXT NOT NULL,
    source        TEXT NOT NULL CHECK (source IN ('notify', 'query')),
    out_trade_no  TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    trade_state   TEXT NOT NULL,
    -- what the notify-worker did: settled, duplicate, recorded_failure, alert, ignored
    outcome       TEXT NOT NULL,
    raw           TEXT NOT NULL,
    received_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX wechat_notifies_trade_idx ON wechat_notifies (out_trade_no);

-- Something an operator must look at: a notify that must not settle (wrong amount, not our
-- merchant, unknown trade), a payment after the order closed, a second payment of a paid order.
CREATE TABLE payment_alerts (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT NOT NULL,
    order_no    TEXT,
    pay_no      TEXT,
    detail      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX payment_alerts_order_idx ON payment_alerts (order_no);

-- A message the relay publishes with this per-message TTL into a wait queue that dead-letters
-- into its work queue when it expires (pay.timeout.wait → pay.timeout). Every message of a wait
-- queue has the same TTL, so expiry order is queue order and nothing blocks at the head.
ALTER TABLE outbox ADD COLUMN delay_ms BIGINT CHECK (delay_ms > 0);
