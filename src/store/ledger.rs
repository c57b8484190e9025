//! Reading the asset ledger back: a user's entries, and the consistency checks the demo and the
//! benchmark run over it.

use super::Result;
use rust_decimal::Decimal;
use sqlx::PgPool;

/// One ledger row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Entry {
    pub asset: String,
    pub change: Decimal,
    pub balance_after: Decimal,
    /// `pay`, `hold` (taken for a mixed payment's WeChat part), `return` (a hold given back).
    pub reason: String,
    pub order_no: Option<String>,
    pub pay_no: Option<String>,
}

pub async fn entries(pool: &PgPool, user_id: i64) -> Result<Vec<Entry>> {
    Ok(sqlx::query_as(
        "SELECT asset, change, balance_after, reason, order_no, pay_no FROM asset_ledger WHERE user_id = $1 ORDER BY id",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await?)
}

/// What the ledger and the accounts say about each other.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Audit {
    /// Ledger rows whose balance_after is not the previous row's plus the change.
    pub broken_chains: i64,
    /// (user, asset) pairs whose last balance_after is not the account's balance.
    pub mismatched_accounts: i64,
    /// Successful payments without their profit_pay row, or profit_pay rows without a payment.
    pub unrecorded_payments: i64,
    /// Paid orders whose successful payments do not add up to the order amount (one payment, or
    /// the parts of one mixed payment).
    pub orders_without_payment: i64,
    /// Holds neither final nor returned once their mixed payment ended, or held for an order
    /// that no longer waits for their WeChat part; parts of a paid mixed payment not final;
    /// returned holds without their one `return` ledger row; mixed payments of another amount
    /// than their order.
    pub loose_holds: i64,
    /// Refunds whose parts, payments, orders and profit_pay rows do not agree: a payment's or
    /// order's `refunded` not the sum of its refund parts that were not given up (CLOSED; a
    /// WeChat part counts from its request on), a refund not the sum of its parts, a settled
    /// part without its profit_pay row or its ledger row, a payment's state not its refunded
    /// total.
    pub refunds_off: i64,
    /// (user, day) pairs whose `balance_daily` total is not the sum of that day's successful
    /// balance payments (the daily limit would count wrong).
    pub daily_totals_off: i64,
}

impl Audit {
    pub fn is_clean(&self) -> bool {
        *self
            == Audit {
                broken_chains: 0,
                mismatched_accounts: 0,
                unrecorded_payments: 0,
                orders_without_payment: 0,
                loose_holds: 0,
                refunds_off: 0,
                daily_totals_off: 0,
            }
    }
}

/// Checks the whole database: every ledger chain, every account against its last ledger row,
/// every payment against profit_pay, every paid order against its payments, every hold against
/// its mixed payment, every day's balance total against its payments (held ones count: the money
/// left the account that day).
pub async fn audit(pool: &PgPool) -> Result<Audit> {
    Ok(sqlx::query_as(
        "WITH chain AS (
             SELECT balance_after, change,
                    lag(balance_after) OVER (PARTITION BY user_id, asset ORDER BY id) AS before
             FROM asset_ledger
         ), last AS (
             SELECT DISTINCT ON (user_id, asset) user_id, asset, balance_after
             FROM asset_ledger ORDER BY user_id, asset, id DESC
         ), settled AS (
             -- the payments that took their money (REFUNDED with nothing refunded here is a
             -- channel trade paid back before it settled)
             SELECT * FROM payments
             WHERE status IN ('SUCCESS', 'PARTIALLY_REFUNDED') OR (status = 'REFUNDED' AND refunded > 0)
         ), pay_profit AS (
             SELECT * FROM profit_pay WHERE pay_no NOT IN (SELECT part_no FROM refund_parts)
         )
         SELECT
           (SELECT count(*) FROM chain WHERE before IS NOT NULL AND before + change <> balance_after) AS broken_chains,
           (SELECT count(*) FROM last JOIN users u ON u.id = last.user_id
             WHERE last.balance_after <> CASE last.asset WHEN 'money' THEN u.money
                                                         WHEN 'integral' THEN u.integral
                                                         ELSE u.money2 END) AS mismatched_accounts,
           (SELECT count(*) FROM settled p FULL JOIN pay_profit pp ON pp.pay_no = p.pay_no
             WHERE (pp.pay_no IS NULL OR p.pay_no IS NULL OR pp.order_no <> p.order_no
                    OR pp.change_money <> -p.amount OR pp.pay_type <> CASE p.method WHEN 'wechat' THEN 1
                        WHEN 'balance' THEN 2 WHEN 'integral' THEN 3 ELSE 4 END)) AS unrecorded_payments,
           (SELECT count(*) FROM orders o WHERE o.status IN ('PAID', 'PARTIALLY_REFUNDED', 'REFUNDED')
             AND (SELECT coalesce(sum(p.amount), 0) FROM settled p
                  WHERE p.order_no = o.order_no AND (p.pay_no = o.pay_no OR p.mixed_no = o.pay_no)) <> o.amount)
             AS orders_without_payment,
           (SELECT count(*) FROM payments p JOIN mixed_payments m USING (mixed_no)
             WHERE (p.status = 'HELD' AND m.status <> 'PAYING')
                OR (m.status = 'SUCCESS' AND p.pay_no NOT IN (SELECT pay_no FROM settled))
                OR (p.status = 'RETURNED' AND (SELECT count(*) FROM asset_ledger l
                                               WHERE l.pay_no = p.pay_no AND l.reason = 'return') <> 1)
                OR (p.status = 'HELD' AND NOT EXISTS (
                     SELECT 1 FROM orders o JOIN payments w ON w.pay_no = o.paying_pay_no
                     WHERE o.order_no = p.order_no AND o.status = 'PAYING' AND w.mixed_no = p.mixed_no)))
           + (SELECT count(*) FROM mixed_payments m JOIN orders o USING (order_no) WHERE m.amount <> o.amount)
             AS loose_holds,
           (SELECT count(*) FROM payments p
             WHERE p.refunded <> (SELECT coalesce(sum(r.amount), 0) FROM refund_parts r
                                  WHERE r.pay_no = p.pay_no AND r.status <> 'CLOSED'))
           + (SELECT count(*) FROM orders o
             WHERE o.refunded <> (SELECT coalesce(sum(p.amount), 0) FROM refund_parts p JOIN refunds r USING (refund_no)
                                  WHERE r.order_no = o.order_no AND r.pay_no IS NULL AND p.status <> 'CLOSED')
                OR (o.status = 'REFUNDED') <> (o.refunded = o.amount AND o.status <> 'CLOSED')
                OR (o.status = 'PARTIALLY_REFUNDED') <> (o.refunded > 0 AND o.refunded < o.amount))
           + (SELECT count(*) FROM refunds r
             WHERE r.amount <> (SELECT coalesce(sum(p.amount), 0) FROM refund_parts p WHERE p.refund_no = r.refund_no))
           + (SELECT count(*) FROM refund_parts r LEFT JOIN profit_pay pp ON pp.pay_no = r.part_no
             WHERE r.status = 'SUCCESS' AND (pp.pay_no IS NULL OR pp.change_money <> r.amount))
           + (SELECT count(*) FROM refund_parts r
             WHERE r.status = 'SUCCESS' AND r.method <> 'wechat' AND NOT EXISTS (
                 SELECT 1 FROM asset_ledger l
                 WHERE l.refund_no = r.refund_no AND l.pay_no = r.pay_no AND l.change = r.asset_amount))
           + (SELECT count(*) FROM payments p
             WHERE (p.status = 'SUCCESS' AND p.refunded > 0)
                OR (p.status = 'PARTIALLY_REFUNDED' AND NOT (p.refunded > 0 AND p.refunded < p.amount))
                OR (p.status = 'REFUNDED' AND p.refunded > 0 AND p.refunded <> p.amount))
             AS refunds_off,
           (SELECT count(*) FROM balance_daily d FULL JOIN (
               SELECT user_id, shanghai_day(paid_at) AS day, sum(amount) AS paid
               FROM payments WHERE method = 'balance' AND (status = 'HELD' OR pay_no IN (SELECT pay_no FROM settled))
               GROUP BY 1, 2
             ) p USING (user_id, day)
             WHERE coalesce(d.paid, 0) <> coalesce(p.paid, 0)) AS daily_totals_off",
    )
    .fetch_one(pool)
    .await?)
}
