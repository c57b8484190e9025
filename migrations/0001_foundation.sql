-- The foundation schema: users' assets, goods, orders, payments, the asset ledger, profit_pay
-- (seed 001's payment record) and the transactional outbox.
--
-- Money and the two internal currencies are NUMERIC(12,2): exact, never floating point. Every
-- asset column has a CHECK (>= 0) so that even a buggy statement cannot overdraw an account.

CREATE TABLE users (
    id                 BIGSERIAL PRIMARY KEY,
    nickname           TEXT NOT NULL DEFAULT '',
    -- balance in yuan
    money              NUMERIC(12,2) NOT NULL DEFAULT 0 CHECK (money >= 0),
    -- integral points (10 points = 1 yuan by default, see [pay] integral_rate)
    integral           NUMERIC(12,2) NOT NULL DEFAULT 0 CHECK (integral >= 0),
    -- 哈尼券 coupons, worth one yuan each
    money2             NUMERIC(12,2) NOT NULL DEFAULT 0 CHECK (money2 >= 0),
    -- bcrypt(password + pepper); NULL until the user sets a pay password
    pay_password_hash  TEXT,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE goods (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('ichiban', 'infinite')),
    name        TEXT NOT NULL,
    price       NUMERIC(12,2) NOT NULL CHECK (price > 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE SEQUENCE order_no_seq;
CREATE SEQUENCE pay_no_seq;

CREATE TABLE orders (
    id          BIGSERIAL PRIMARY KEY,
    order_no    TEXT NOT NULL UNIQUE,
    user_id     BIGINT NOT NULL REFERENCES users (id),
    goods_id    BIGINT NOT NULL REFERENCES goods (id),
    kind        TEXT NOT NULL,
    num         INTEGER NOT NULL CHECK (num > 0),
    amount      NUMERIC(12,2) NOT NULL CHECK (amount > 0),
    status      TEXT NOT NULL DEFAULT 'UNPAID' CHECK (status IN ('UNPAID', 'PAID', 'CLOSED')),
    -- set together when the order is paid; pay_no names the payment that settled it
    pay_type    TEXT,
    pay_no      TEXT,
    paid_at     TIMESTAMPTZ,
    expires_at  TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status = 'PAID') = (pay_no IS NOT NULL))
);
CREATE INDEX orders_user_idx ON orders (user_id, created_at DESC);

-- One row per order and method: the unique key is what makes a double payment impossible
-- even if two workers race past every other check.
CREATE TABLE payments (
    id            BIGSERIAL PRIMARY KEY,
    pay_no        TEXT NOT NULL UNIQUE,
    order_no      TEXT NOT NULL REFERENCES orders (order_no),
    user_id       BIGINT NOT NULL REFERENCES users (id),
    method        TEXT NOT NULL CHECK (method IN ('balance', 'integral', 'money2', 'wechat')),
    -- the part of the order amount this payment covers, in yuan
    amount        NUMERIC(12,2) NOT NULL CHECK (amount > 0),
    -- what left the user's account in the asset's own unit (points for integral)
    asset_amount  NUMERIC(12,2) NOT NULL CHECK (asset_amount > 0),
    status        TEXT NOT NULL CHECK (status IN ('PAYING', 'SUCCESS', 'FAILED', 'CLOSED')),
    -- the pay request that produced this row: a redelivered request is recognised by it
    request_id    UUID NOT NULL UNIQUE,
    third_party_no TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    paid_at       TIMESTAMPTZ,
    UNIQUE (order_no, method)
);
CREATE INDEX payments_user_idx ON payments (user_id);

-- Every change to an asset, with the balance it left behind.
CREATE TABLE asset_ledger (
    id             BIGSERIAL PRIMARY KEY,
    user_id        BIGINT NOT NULL REFERENCES users (id),
    asset          TEXT NOT NULL CHECK (asset IN ('money', 'integral', 'money2')),
    change         NUMERIC(12,2) NOT NULL CHECK (change <> 0),
    balance_after  NUMERIC(12,2) NOT NULL CHECK (balance_after >= 0),
    reason         TEXT NOT NULL,
    order_no       TEXT,
    pay_no         TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX asset_ledger_user_idx ON asset_ledger (user_id, id);
CREATE UNIQUE INDEX asset_ledger_pay_no_idx ON asset_ledger (pay_no, asset) WHERE pay_no IS NOT NULL;

-- Seed 001's ProfitPay: every successful payment has its row (seed property 5).
CREATE TABLE profit_pay (
    id            BIGSERIAL PRIMARY KEY,
    user_id       BIGINT NOT NULL REFERENCES users (id),
    order_no      TEXT NOT NULL,
    pay_no        TEXT NOT NULL UNIQUE,
    -- negative: money leaving the user towards the order, in yuan
    change_money  NUMERIC(12,2) NOT NULL,
    content       TEXT NOT NULL,
    -- 1 wechat, 2 balance, 3 integral, 4 money2 (domain::payment::PayMethod::pay_type)
    pay_type      SMALLINT NOT NULL,
    add_time      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX profit_pay_order_idx ON profit_pay (order_no);

-- Messages a transaction must emit once it commits. The relay publishes them with publisher
-- confirms and only then sets sent_at; a crash in between publishes again (consumers dedupe on
-- message_id).
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    message_id   UUID NOT NULL UNIQUE,
    -- the queue's base name (mq::topology), the relay adds the namespace
    queue        TEXT NOT NULL,
    kind         TEXT NOT NULL,
    payload      JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at      TIMESTAMPTZ
);
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
