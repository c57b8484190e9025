//! Refunds in the database: an operator's refund of a paid order, split over the payments that
//! paid it (`domain::refund::allocate`), each internal part given back to its asset at once, in
//! one transaction under the order's lock.
//!
//! Idempotent by `refund_no`: the same request again answers the refund it made; another request
//! under the same number is refused. What each payment and the order gave back is kept beside
//! what they took, and CHECK constraints refuse more, so no interleaving of refunds can give back
//! more than was paid.

use super::{Error, Result};

use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use super::orders::{self, OrderRow};
use super::outbox;
use super::payments;
use crate::domain::payment::Refusal;
use crate::domain::refund::{Refundable, Share, allocate};
use crate::domain::{Asset, Code, Money, PayMethod};
use crate::mq::messages::OrderRefunded;

/// A refund an operator asks for.
#[derive(Debug, Clone)]
pub struct RefundRequest<'a> {
    pub order_no: &'a str,
    pub refund_no: &'a str,
    /// None: what is left.
    pub amount: Option<Money>,
    pub reason: &'a str,
    pub operator: &'a str,
}

/// What became of a refund request.
#[derive(Debug, Clone)]
pub enum Refunded {
    Made(RefundView),
    /// The same request came before: its refund, as it is.
    Again(RefundView),
    Refused(Refusal),
}

/// A refund as operators see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefundView {
    pub refund_no: String,
    pub order_no: String,
    pub requested_amount: Option<Money>,
    pub amount: Money,
    pub reason: String,
    pub operator: String,
    pub status: String,
    pub created_at: OffsetDateTime,
    #[sqlx(skip)]
    pub parts: Vec<RefundPart>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefundPart {
    pub refund_no: String,
    pub part_no: String,
    pub pay_no: String,
    pub method: PayMethod,
    pub amount: Money,
    pub asset_amount: Money,
    pub status: String,
}

#[derive(sqlx::FromRow)]
struct PaidRow {
    pay_no: String,
    method: PayMethod,
    amount: Money,
    asset_amount: Money,
    refunded: Money,
    user_id: i64,
}

/// Makes a refund (or answers the one this request made before).
pub async fn create(pool: &PgPool, r: &RefundRequest<'_>) -> Result<Refunded> {
    let mut tx = pool.begin().await?;
    let refunded = create_in(&mut tx, r).await?;
    tx.commit().await?;
    Ok(refunded)
}

/// `create` in the caller's transaction (the order stays locked until it ends).
pub async fn create_in(tx: &mut PgConnection, r: &RefundRequest<'_>) -> Result<Refunded> {
    let refuse = |code, message: String| Ok(Refunded::Refused(Refusal::new(code, message)));
    // One refund_no at a time, whatever order it names: two requests with one number for two
    // orders lock different orders, and the second must still see the first.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('refund:' || $1))").bind(r.refund_no).execute(&mut *tx).await?;
    let Some(order) = orders::lock_one(tx, r.order_no).await? else {
        return refuse(Code::NotFound, "order not found".into());
    };
    // Read after the order's lock: a refund of this number committed meanwhile is seen.
    if let Some(earlier) = find(tx, r.refund_no).await? {
        if earlier.order_no == r.order_no && earlier.requested_amount == r.amount && earlier.reason == r.reason {
            return Ok(Refunded::Again(earlier));
        }
        return refuse(
            Code::IdempotencyConflict,
            format!(
                "refund_no {} was used for another refund (order {}, amount {}, reason {:?})",
                r.refund_no,
                earlier.order_no,
                earlier.requested_amount.map_or("what was left".to_owned(), |a| a.to_string()),
                earlier.reason
            ),
        );
    }
    if !order.status.was_paid() {
        return refuse(Code::Validation, format!("order {} is not paid; there is nothing to refund", r.order_no));
    }
    let paid: Vec<PaidRow> = sqlx::query_as(
        "SELECT pay_no, method, amount, asset_amount, refunded, user_id FROM payments
         WHERE order_no = $1 AND (pay_no = $2 OR mixed_no = $2)
           AND (status IN ('SUCCESS', 'PARTIALLY_REFUNDED') OR (status = 'REFUNDED' AND refunded > 0))
         ORDER BY id FOR UPDATE",
    )
    .bind(r.order_no)
    .bind(&order.pay_no)
    .fetch_all(&mut *tx)
    .await?;
    // Money taken twice (a WeChat payment settling an order paid another way): which payment to
    // give back is the operator's to name, through WeChat; the order's own payments are no
    // answer to that.
    let taken_twice: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM payments
                        WHERE order_no = $1 AND pay_no <> $2 AND mixed_no IS DISTINCT FROM $2
                          AND (status IN ('SUCCESS', 'PARTIALLY_REFUNDED') OR (status = 'REFUNDED' AND refunded > 0)))",
    )
    .bind(r.order_no)
    .bind(&order.pay_no)
    .fetch_one(&mut *tx)
    .await?;
    if taken_twice {
        return refuse(
            Code::Validation,
            format!(
                "order {} took money more than once (see its double_payment alert); its refund must name the extra payment, which refunds through WeChat, not available yet",
                r.order_no
            ),
        );
    }
    let refundable: Vec<Refundable> = paid
        .iter()
        .map(|p| Refundable { method: p.method, amount: p.amount, asset_amount: p.asset_amount, refunded: p.refunded })
        .collect();
    let left = refundable.iter().fold(Money::ZERO, |sum, p| sum.checked_add(p.left()).unwrap_or(sum));
    let amount = r.amount.unwrap_or(left);
    if left.is_zero() {
        return refuse(Code::Validation, format!("order {} is refunded in full already", r.order_no));
    }
    let shares = match allocate(amount, &refundable) {
        Ok(shares) => shares,
        Err(left) => return refuse(Code::Validation, format!("only {left} of order {} is left to refund", r.order_no)),
    };
    if shares.iter().any(|s| paid[s.index].method == PayMethod::Wechat) {
        let internal = refundable
            .iter()
            .filter(|p| p.method != PayMethod::Wechat)
            .fold(Money::ZERO, |sum, p| sum.checked_add(p.left()).unwrap_or(sum));
        return refuse(
            Code::Validation,
            format!(
                "this refund would reach the WeChat payment, and refunds through WeChat are not available yet: at most {internal} (the internal parts) can be refunded now"
            ),
        );
    }
    write(tx, r, &order, &paid, &shares, amount).await?;
    let made =
        find(tx, r.refund_no).await?.ok_or_else(|| Error::Invariant(format!("refund {} vanished", r.refund_no)))?;
    Ok(Refunded::Made(made))
}

/// The refund, its parts, the money back on the accounts with ledger and profit_pay rows, the
/// payments' and order's totals and states, and the order-refunded event.
async fn write(
    tx: &mut PgConnection,
    r: &RefundRequest<'_>,
    order: &OrderRow,
    paid: &[PaidRow],
    shares: &[Share],
    amount: Money,
) -> Result<()> {
    let user_id =
        paid.first().map(|p| p.user_id).ok_or_else(|| Error::Invariant("a refund without payments".into()))?;
    let user = payments::lock_users(tx, &[user_id])
        .await?
        .pop()
        .ok_or_else(|| Error::Invariant(format!("the user of order {} is gone", order.order_no)))?;
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT nextval('pay_no_seq') FROM generate_series(1, $1)")
        .bind(shares.len() as i64)
        .fetch_all(&mut *tx)
        .await?;
    let part_nos: Vec<String> = seqs.iter().map(|seq| payments::pay_no("RF", order.now, *seq)).collect();
    let pay_nos: Vec<&str> = shares.iter().map(|s| paid[s.index].pay_no.as_str()).collect();
    let methods: Vec<&str> = shares.iter().map(|s| paid[s.index].method.as_str()).collect();
    let amounts: Vec<Decimal> = shares.iter().map(|s| s.amount.as_decimal()).collect();
    let asset_amounts: Vec<Decimal> = shares.iter().map(|s| s.asset_amount.as_decimal()).collect();
    let asset_of = |s: &Share| paid[s.index].method.asset().expect("only internal parts are refunded here");
    let assets: Vec<&str> = shares.iter().map(|s| asset_of(s).as_str()).collect();
    let balance_after: Vec<Decimal> = shares
        .iter()
        .map(|s| user.balance(asset_of(s)).checked_add(s.asset_amount).map(Money::as_decimal))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::Invariant("a refund overflows the account".into()))?;
    let back = |asset: Asset| {
        shares
            .iter()
            .filter(|s| asset_of(s) == asset)
            .fold(Money::ZERO, |sum, s| sum.checked_add(s.asset_amount).expect("shares of one order fit"))
    };
    let contents: Vec<String> = shares.iter().map(|s| refund_content(paid[s.index].method)).collect();
    let pay_types: Vec<i16> = shares.iter().map(|s| paid[s.index].method.pay_type()).collect();

    let (refunds, parts, payments_updated, ledger, refunded): (i64, i64, i64, i64, Option<Money>) = sqlx::query_as(
        "WITH i AS (
             SELECT * FROM unnest($5::text[], $6::text[], $7::text[], $8::numeric[], $9::numeric[], $10::text[],
                                  $11::numeric[], $12::text[], $13::smallint[]) WITH ORDINALITY
                 AS i(part_no, pay_no, method, amount, asset_amount, asset, balance_after, content, pay_type, ord)
         ), r AS (
             INSERT INTO refunds (refund_no, order_no, requested_amount, amount, reason, operator, status, finished_at)
             VALUES ($1, $2, $3, $4, $14, $15, 'SUCCESS', now())
             RETURNING 1
         ), rp AS (
             INSERT INTO refund_parts (part_no, refund_no, pay_no, method, amount, asset_amount, status)
             SELECT part_no, $1, pay_no, method, amount, asset_amount, 'SUCCESS' FROM i
             RETURNING 1
         ), p AS (
             UPDATE payments SET refunded = payments.refunded + i.amount,
                                 status = CASE WHEN payments.refunded + i.amount = payments.amount
                                               THEN 'REFUNDED' ELSE 'PARTIALLY_REFUNDED' END
             FROM i WHERE payments.pay_no = i.pay_no
             RETURNING 1
         ), u AS (
             UPDATE users SET money = money + $17, integral = integral + $18, money2 = money2 + $19 WHERE id = $16
         ), l AS (
             INSERT INTO asset_ledger (user_id, asset, change, balance_after, reason, order_no, pay_no, refund_no)
             SELECT $16, asset, asset_amount, balance_after, 'refund', $2, pay_no, $1 FROM i ORDER BY ord
             RETURNING 1
         ), pp AS (
             INSERT INTO profit_pay (user_id, order_no, pay_no, change_money, content, pay_type, add_time)
             SELECT $16, $2, part_no, amount, content, pay_type, now() FROM i
         ), o AS (
             UPDATE orders SET refunded = refunded + $4,
                               status = CASE WHEN refunded + $4 = amount THEN 'REFUNDED' ELSE 'PARTIALLY_REFUNDED' END
             WHERE order_no = $2
             RETURNING refunded
         )
         SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM rp), (SELECT count(*) FROM p),
                (SELECT count(*) FROM l), (SELECT refunded FROM o)",
    )
    .bind(r.refund_no)
    .bind(&order.order_no)
    .bind(r.amount)
    .bind(amount)
    .bind(&part_nos)
    .bind(&pay_nos)
    .bind(&methods)
    .bind(&amounts)
    .bind(&asset_amounts)
    .bind(&assets)
    .bind(&balance_after)
    .bind(&contents)
    .bind(&pay_types)
    .bind(r.reason)
    .bind(r.operator)
    .bind(user_id)
    .bind(back(Asset::Money))
    .bind(back(Asset::Integral))
    .bind(back(Asset::Money2))
    .fetch_one(&mut *tx)
    .await?;
    let n = shares.len() as i64;
    let Some(refunded) = refunded.filter(|_| (refunds, parts, payments_updated, ledger) == (1, n, n, n)) else {
        return Err(Error::Invariant(format!(
            "refund {}: {refunds} refund, {parts}/{n} parts, {payments_updated}/{n} payments, {ledger}/{n} ledger rows, order {refunded:?}",
            r.refund_no
        )));
    };
    let event = OrderRefunded {
        order_no: order.order_no.clone(),
        user_id,
        refund_no: r.refund_no.to_owned(),
        amount,
        refunded,
        full: refunded == order.amount,
        reason: r.reason.to_owned(),
    };
    outbox::enqueue(tx, &event).await
}

/// profit_pay's content of a refund part, worded as the shop's records ("余额退款").
fn refund_content(method: PayMethod) -> String {
    method.content().replace("支付", "退款")
}

async fn find(tx: &mut PgConnection, refund_no: &str) -> Result<Option<RefundView>> {
    let view: Option<RefundView> = sqlx::query_as(
        "SELECT refund_no, order_no, requested_amount, amount, reason, operator, status, created_at
         FROM refunds WHERE refund_no = $1",
    )
    .bind(refund_no)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(mut view) = view else { return Ok(None) };
    view.parts = parts_of(tx, &[refund_no]).await?;
    Ok(Some(view))
}

async fn parts_of(tx: &mut PgConnection, refund_nos: &[&str]) -> Result<Vec<RefundPart>> {
    Ok(sqlx::query_as(
        "SELECT refund_no, part_no, pay_no, method, amount, asset_amount, status FROM refund_parts
         WHERE refund_no = ANY($1) ORDER BY part_no",
    )
    .bind(refund_nos)
    .fetch_all(&mut *tx)
    .await?)
}

/// An order's refunds, oldest first, with their parts.
pub async fn list(pool: &PgPool, order_no: &str) -> Result<Vec<RefundView>> {
    let mut conn = pool.acquire().await?;
    let mut views: Vec<RefundView> = sqlx::query_as(
        "SELECT refund_no, order_no, requested_amount, amount, reason, operator, status, created_at
         FROM refunds WHERE order_no = $1 ORDER BY created_at, refund_no",
    )
    .bind(order_no)
    .fetch_all(&mut *conn)
    .await?;
    let numbers: Vec<&str> = views.iter().map(|v| v.refund_no.as_str()).collect();
    let mut parts = parts_of(&mut conn, &numbers).await?;
    for view in &mut views {
        let (mine, rest) = parts.into_iter().partition(|p| p.refund_no == view.refund_no);
        view.parts = mine;
        parts = rest;
    }
    Ok(views)
}
