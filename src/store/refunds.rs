//! Refunds in the database: an operator's refund of a paid order, split over the payments that
//! paid it (`domain::refund::allocate`), each internal part given back to its asset at once, in
//! one transaction under the order's lock. A WeChat part is PROCESSING until WeChat settles it
//! (`settle_wechat`, from the refund notify or a query of the notify-worker); the transaction
//! queues the request to WeChat through the outbox. A WeChat payment that took money for an
//! order already closed or paid is refunded in full by itself (`refund_extra_payment`).
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
use crate::channel::{ChannelRefund, RefundState};
use crate::domain::payment::Refusal;
use crate::domain::payment::{Alert, AlertKind};
use crate::domain::refund::{Refundable, Share, allocate};
use crate::domain::{Asset, Code, Money, PayMethod};
use crate::mq::messages::{OrderRefunded, RefundWork};

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
    write(tx, r, &order, &paid, &shares, amount, None).await?;
    let made =
        find(tx, r.refund_no).await?.ok_or_else(|| Error::Invariant(format!("refund {} vanished", r.refund_no)))?;
    Ok(Refunded::Made(made))
}

/// The refund, its parts, the money back on the accounts with ledger and profit_pay rows, the
/// payments' and order's totals and states, and what comes next through the outbox: the request
/// to WeChat of a WeChat part, or (nothing left waiting) the order-refunded event. A WeChat part
/// counts in the totals from here on, so no refund made meanwhile can give it back twice.
/// `of_payment`: the refund of that one payment, which leaves the order's totals alone.
async fn write(
    tx: &mut PgConnection,
    r: &RefundRequest<'_>,
    order: &OrderRow,
    paid: &[PaidRow],
    shares: &[Share],
    amount: Money,
    of_payment: Option<&str>,
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
    // None: a WeChat part, which goes back through WeChat, not to an account.
    let asset_of = |s: &Share| paid[s.index].method.asset();
    let assets: Vec<Option<&str>> = shares.iter().map(|s| asset_of(s).map(Asset::as_str)).collect();
    let balance_after: Vec<Option<Decimal>> = shares
        .iter()
        .map(|s| match asset_of(s) {
            None => Ok(None),
            Some(asset) => user
                .balance(asset)
                .checked_add(s.asset_amount)
                .map(|b| Some(b.as_decimal()))
                .ok_or_else(|| Error::Invariant("a refund overflows the account".into())),
        })
        .collect::<Result<_>>()?;
    let statuses: Vec<&str> = assets.iter().map(|a| if a.is_some() { "SUCCESS" } else { "PROCESSING" }).collect();
    let back = |asset: Asset| {
        shares
            .iter()
            .filter(|s| asset_of(s) == Some(asset))
            .fold(Money::ZERO, |sum, s| sum.checked_add(s.asset_amount).expect("shares of one order fit"))
    };
    let contents: Vec<String> = shares.iter().map(|s| refund_content(paid[s.index].method)).collect();
    let pay_types: Vec<i16> = shares.iter().map(|s| paid[s.index].method.pay_type()).collect();
    let waiting = statuses.contains(&"PROCESSING");

    let (refunds, parts, payments_updated, ledger, refunded): (i64, i64, i64, i64, Option<Money>) = sqlx::query_as(
        "WITH i AS (
             SELECT * FROM unnest($5::text[], $6::text[], $7::text[], $8::numeric[], $9::numeric[], $10::text[],
                                  $11::numeric[], $12::text[], $13::smallint[], $20::text[]) WITH ORDINALITY
                 AS i(part_no, pay_no, method, amount, asset_amount, asset, balance_after, content, pay_type,
                      status, ord)
         ), r AS (
             INSERT INTO refunds (refund_no, order_no, requested_amount, amount, reason, operator, status,
                                  finished_at, pay_no)
             VALUES ($1, $2, $3, $4, $14, $15, CASE WHEN $21 THEN 'PROCESSING' ELSE 'SUCCESS' END,
                     CASE WHEN $21 THEN NULL ELSE now() END, $22)
             RETURNING 1
         ), rp AS (
             INSERT INTO refund_parts (part_no, refund_no, pay_no, method, amount, asset_amount, status, settled_at)
             SELECT part_no, $1, pay_no, method, amount, asset_amount, status,
                    CASE WHEN status = 'SUCCESS' THEN now() END FROM i
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
             SELECT $16, asset, asset_amount, balance_after, 'refund', $2, pay_no, $1 FROM i
             WHERE asset IS NOT NULL ORDER BY ord
             RETURNING 1
         ), pp AS (
             INSERT INTO profit_pay (user_id, order_no, pay_no, change_money, content, pay_type, add_time)
             SELECT $16, $2, part_no, amount, content, pay_type, now() FROM i WHERE status = 'SUCCESS'
         ), o AS (
             UPDATE orders SET refunded = refunded + $4,
                               status = CASE WHEN refunded + $4 = amount THEN 'REFUNDED' ELSE 'PARTIALLY_REFUNDED' END
             WHERE order_no = $2 AND $22::text IS NULL
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
    .bind(&statuses)
    .bind(waiting)
    .bind(of_payment)
    .fetch_one(&mut *tx)
    .await?;
    let n = shares.len() as i64;
    let internal = assets.iter().filter(|a| a.is_some()).count() as i64;
    if (refunds, parts, payments_updated, ledger) != (1, n, n, internal) || refunded.is_some() == of_payment.is_some() {
        return Err(Error::Invariant(format!(
            "refund {}: {refunds} refund, {parts}/{n} parts, {payments_updated}/{n} payments, {ledger}/{internal} ledger rows, order {refunded:?}",
            r.refund_no
        )));
    }
    for (part_no, status) in part_nos.iter().zip(&statuses) {
        if *status == "PROCESSING" {
            outbox::enqueue(tx, &RefundWork::Requested { part_no: part_no.clone() }).await?;
        }
    }
    if !waiting && let Some(refunded) = refunded {
        refunded_event(tx, order, r.refund_no, amount, refunded, user_id, r.reason).await?;
    }
    Ok(())
}

/// The order-refunded event, once nothing of a refund is left waiting.
async fn refunded_event(
    tx: &mut PgConnection,
    order: &OrderRow,
    refund_no: &str,
    amount: Money,
    refunded: Money,
    user_id: i64,
    reason: &str,
) -> Result<()> {
    let event = OrderRefunded {
        order_no: order.order_no.clone(),
        user_id,
        refund_no: refund_no.to_owned(),
        amount,
        refunded,
        full: refunded == order.amount,
        reason: reason.to_owned(),
    };
    outbox::enqueue(tx, &event).await
}

/// Refunds a WeChat payment in full by itself, in the settling transaction (the order locked):
/// WeChat took it for an order that had closed, or that another payment had paid. The order
/// stays as it is. Answers the refund's number (the caller's alert names it).
pub(super) async fn refund_extra_payment(
    tx: &mut PgConnection,
    order: &OrderRow,
    pay_no: &str,
    why: &str,
) -> Result<String> {
    let row: PaidRow = sqlx::query_as(
        "SELECT pay_no, method, amount, asset_amount, refunded, user_id FROM payments WHERE pay_no = $1 FOR UPDATE",
    )
    .bind(pay_no)
    .fetch_one(&mut *tx)
    .await?;
    let refund_no = format!("AUTO-{pay_no}");
    let reason = format!("{why}: refunded in full by payfleet");
    let Some(amount) = row.amount.checked_sub(row.refunded).filter(|a| !a.is_zero()) else {
        return Ok(refund_no);
    };
    let request = RefundRequest {
        order_no: &order.order_no,
        refund_no: &refund_no,
        amount: None,
        reason: &reason,
        operator: "payfleet",
    };
    let refundable =
        [Refundable { method: row.method, amount: row.amount, asset_amount: row.asset_amount, refunded: row.refunded }];
    let shares = allocate(amount, &refundable)
        .map_err(|left| Error::Invariant(format!("{pay_no}: {amount} to refund, {left} left")))?;
    write(tx, &request, order, std::slice::from_ref(&row), &shares, amount, Some(pay_no)).await?;
    Ok(refund_no)
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

/// A WeChat refund part, as the notify-worker asks WeChat for it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WechatPart {
    pub part_no: String,
    pub refund_no: String,
    /// The WeChat payment it gives back (its `out_trade_no`).
    pub pay_no: String,
    pub amount: Money,
    /// What the payment took.
    pub total: Money,
    pub reason: String,
    pub status: String,
    /// WeChat accepted it: from then on it is queried, never asked for again.
    pub asked_at: Option<OffsetDateTime>,
}

pub async fn wechat_part(pool: &PgPool, part_no: &str) -> Result<Option<WechatPart>> {
    Ok(sqlx::query_as(
        "SELECT rp.part_no, rp.refund_no, rp.pay_no, rp.amount, p.amount AS total, r.reason, rp.status, rp.asked_at
         FROM refund_parts rp JOIN refunds r USING (refund_no) JOIN payments p ON p.pay_no = rp.pay_no
         WHERE rp.part_no = $1 AND rp.method = 'wechat'",
    )
    .bind(part_no)
    .fetch_optional(pool)
    .await?)
}

/// What a WeChat refund report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundSettled {
    /// The part moved to this state.
    Moved(RefundState),
    /// Still processing at WeChat: ask again later.
    Waiting,
    /// The part had reached this state before: nothing changed.
    Unchanged(String),
    /// Not settled: an alert was recorded.
    Alert(Alert),
}

#[derive(sqlx::FromRow)]
struct PartRow {
    refund_no: String,
    pay_no: String,
    amount: Money,
    status: String,
    order_no: String,
    of_payment: Option<String>,
    user_id: i64,
}

/// Settles a WeChat refund part from what WeChat reported of it (a refund notify the caller
/// verified, or WeChat's answer to its own request or query), under the order's lock: SUCCESS
/// makes it final (profit_pay row; the order-refunded event once nothing of the refund waits);
/// ABNORMAL keeps the money counted as given back and alerts operators; CLOSED gives the part
/// up, so it no longer counts against what its payment may give back, and alerts. Nothing here
/// asks WeChat for a refund again: a refund owed after CLOSED is an operator's new refund.
/// `why`: what the caller knows beyond the report (WeChat refused the refund), for the alert.
pub async fn settle_wechat(
    pool: &PgPool,
    reported: &ChannelRefund,
    raw: &str,
    why: Option<&str>,
) -> Result<RefundSettled> {
    let mut tx = pool.begin().await?;
    let part_no = reported.out_refund_no.as_str();
    let order_no: Option<String> = sqlx::query_scalar(
        "SELECT r.order_no FROM refund_parts rp JOIN refunds r USING (refund_no)
         WHERE rp.part_no = $1 AND rp.method = 'wechat'",
    )
    .bind(part_no)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(order_no) = order_no else {
        let raised = Alert::new(AlertKind::UnknownRefund, format_args!("WeChat reports refund {part_no}, not ours"));
        super::wechat::alert(&mut tx, &raised, None, Some(reported.out_trade_no.as_str()).filter(|n| !n.is_empty()))
            .await?;
        tx.commit().await?;
        return Ok(RefundSettled::Alert(raised));
    };
    let order = orders::lock_one(&mut tx, &order_no)
        .await?
        .ok_or_else(|| Error::Invariant(format!("the order of refund part {part_no} is gone")))?;
    let part: PartRow = sqlx::query_as(
        "SELECT rp.refund_no, rp.pay_no, rp.amount, rp.status, r.order_no, r.pay_no AS of_payment, p.user_id
         FROM refund_parts rp JOIN refunds r USING (refund_no) JOIN payments p ON p.pay_no = rp.pay_no
         WHERE rp.part_no = $1 FOR UPDATE OF rp",
    )
    .bind(part_no)
    .fetch_one(&mut *tx)
    .await?;
    if reported.out_trade_no != part.pay_no || reported.refund_fen != part.amount.to_fen() {
        let raised = Alert::new(
            AlertKind::UnknownRefund,
            format_args!(
                "WeChat reports refund {part_no} of {} for {} fen; ours gives back {} fen of {}",
                reported.out_trade_no,
                reported.refund_fen,
                part.amount.to_fen(),
                part.pay_no
            ),
        );
        super::wechat::alert(&mut tx, &raised, Some(&part.order_no), Some(&part.pay_no)).await?;
        tx.commit().await?;
        return Ok(RefundSettled::Alert(raised));
    }
    let settled = match (part.status.as_str(), reported.state) {
        ("PROCESSING", RefundState::Processing) => {
            sqlx::query(
                "UPDATE refund_parts SET asked_at = coalesce(asked_at, now()),
                                         channel_refund_id = coalesce($2, channel_refund_id)
                 WHERE part_no = $1",
            )
            .bind(part_no)
            .bind(&reported.refund_id)
            .execute(&mut *tx)
            .await?;
            RefundSettled::Waiting
        }
        ("PROCESSING" | "ABNORMAL", RefundState::Success) => {
            mark(&mut tx, part_no, reported, raw).await?;
            sqlx::query(
                "INSERT INTO profit_pay (user_id, order_no, pay_no, change_money, content, pay_type, add_time)
                 VALUES ($1, $2, $3, $4, $5, $6, now())",
            )
            .bind(part.user_id)
            .bind(&part.order_no)
            .bind(part_no)
            .bind(part.amount)
            .bind(refund_content(PayMethod::Wechat))
            .bind(PayMethod::Wechat.pay_type())
            .execute(&mut *tx)
            .await?;
            RefundSettled::Moved(RefundState::Success)
        }
        ("PROCESSING", RefundState::Abnormal) => {
            mark(&mut tx, part_no, reported, raw).await?;
            let raised = Alert::new(
                AlertKind::RefundAbnormal,
                format_args!(
                    "the {} yuan of refund {} left the merchant but did not reach the payer of {}; see to it in WeChat's merchant platform",
                    part.amount, part.refund_no, part.pay_no
                ),
            );
            super::wechat::alert(&mut tx, &raised, Some(&part.order_no), Some(&part.pay_no)).await?;
            RefundSettled::Moved(RefundState::Abnormal)
        }
        ("PROCESSING" | "ABNORMAL", RefundState::Closed) => {
            mark(&mut tx, part_no, reported, raw).await?;
            give_up(&mut tx, &part).await?;
            let raised = Alert::new(
                AlertKind::RefundClosed,
                format_args!(
                    "refund {} ({} yuan of {}) did not go through: {}; nothing went back; refund again if it is still owed",
                    part.refund_no,
                    part.amount,
                    part.pay_no,
                    why.unwrap_or("WeChat closed it"),
                ),
            );
            super::wechat::alert(&mut tx, &raised, Some(&part.order_no), Some(&part.pay_no)).await?;
            RefundSettled::Moved(RefundState::Closed)
        }
        (status, _) => RefundSettled::Unchanged(status.to_owned()),
    };
    if let RefundSettled::Moved(_) = settled {
        finish(&mut tx, &order, &part).await?;
    }
    tx.commit().await?;
    Ok(settled)
}

/// A part's new state, as WeChat reported it.
async fn mark(tx: &mut PgConnection, part_no: &str, reported: &ChannelRefund, raw: &str) -> Result<()> {
    sqlx::query(
        "UPDATE refund_parts SET status = $2, channel_refund_id = coalesce($3, channel_refund_id),
                                 asked_at = coalesce(asked_at, now()), settled_at = now(), report_raw = $4
         WHERE part_no = $1",
    )
    .bind(part_no)
    .bind(reported.state.as_str())
    .bind(&reported.refund_id)
    .bind(raw)
    .execute(tx)
    .await?;
    Ok(())
}

/// A closed part no longer counts as given back, by its payment or (a refund of the order) the
/// order.
async fn give_up(tx: &mut PgConnection, part: &PartRow) -> Result<()> {
    sqlx::query(
        "UPDATE payments SET refunded = refunded - $2,
                             status = CASE WHEN refunded - $2 = 0 THEN 'SUCCESS' ELSE 'PARTIALLY_REFUNDED' END
         WHERE pay_no = $1",
    )
    .bind(&part.pay_no)
    .bind(part.amount)
    .execute(&mut *tx)
    .await?;
    if part.of_payment.is_none() {
        sqlx::query(
            "UPDATE orders SET refunded = refunded - $2,
                               status = CASE WHEN refunded - $2 = 0 THEN 'PAID' ELSE 'PARTIALLY_REFUNDED' END
             WHERE order_no = $1",
        )
        .bind(&part.order_no)
        .bind(part.amount)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The refund's state from its parts' (any waiting: PROCESSING; else any ABNORMAL; else any
/// CLOSED; else SUCCESS); once nothing waits or is abnormal, the order-refunded event for what
/// went back.
async fn finish(tx: &mut PgConnection, order: &OrderRow, part: &PartRow) -> Result<()> {
    let (status, back, reason): (String, Money, String) = sqlx::query_as(
        "WITH s AS (
             SELECT CASE WHEN bool_or(status = 'PROCESSING') THEN 'PROCESSING'
                         WHEN bool_or(status = 'ABNORMAL') THEN 'ABNORMAL'
                         WHEN bool_or(status = 'CLOSED') THEN 'CLOSED'
                         ELSE 'SUCCESS' END AS status,
                    coalesce(sum(amount) FILTER (WHERE status = 'SUCCESS'), 0) AS back
             FROM refund_parts WHERE refund_no = $1
         )
         UPDATE refunds SET status = s.status,
                            finished_at = CASE WHEN s.status = 'PROCESSING' THEN NULL ELSE now() END
         FROM s WHERE refund_no = $1
         RETURNING s.status, s.back, reason",
    )
    .bind(&part.refund_no)
    .fetch_one(&mut *tx)
    .await?;
    if part.of_payment.is_none() && matches!(status.as_str(), "SUCCESS" | "CLOSED") && !back.is_zero() {
        let refunded: Money = sqlx::query_scalar("SELECT refunded FROM orders WHERE order_no = $1")
            .bind(&order.order_no)
            .fetch_one(&mut *tx)
            .await?;
        refunded_event(tx, order, &part.refund_no, back, refunded, part.user_id, &reason).await?;
    }
    Ok(())
}
