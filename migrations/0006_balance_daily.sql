-- What each user paid with balance per calendar day in Asia/Shanghai (seed 000's
-- BalancePay.MaxDailyAmount): one row per user and day, written by the statement that deducts
-- the balance and read under the user's row lock, so the daily limit costs one primary-key
-- lookup however many payments the user made that day.
-- The calendar day a moment falls on in Asia/Shanghai, the one definition the limit, its
-- totals and the audit share.
CREATE FUNCTION shanghai_day(t TIMESTAMPTZ) RETURNS DATE
    LANGUAGE sql STABLE AS $$ SELECT (t AT TIME ZONE 'Asia/Shanghai')::date $$;

CREATE TABLE balance_daily (
    user_id BIGINT NOT NULL REFERENCES users (id),
    day     DATE NOT NULL,
    paid    NUMERIC(12, 2) NOT NULL CHECK (paid >= 0),
    PRIMARY KEY (user_id, day)
);

INSERT INTO balance_daily (user_id, day, paid)
SELECT user_id, shanghai_day(paid_at), sum(amount)
FROM payments WHERE method = 'balance' AND status = 'SUCCESS' AND paid_at IS NOT NULL
GROUP BY 1, 2;
