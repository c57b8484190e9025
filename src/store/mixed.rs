//! Mixed payments in the database: every internal part taken in one transaction, all or none;
//! with a WeChat part the internal parts are held until WeChat settles (`finalize`) or the order
//! closes or reopens unpaid (`return_holds`).
//!
//! A mixed payment is a `mixed_payments` row and one `payments` row per part, each naming it.
//! A held part is taken from the account at once (its ledger row says `hold`); made final, it
//! gets its profit_pay row; returned, it gets a `return` ledger row giving the asset back. Both
//! change only parts still HELD, under the order's lock, so a hold is made final or returned
//! exactly once however the expiry check, a cancel and a late notify race.
//!
//! Lock order, as everywhere: the order, then its payments, then the user.

use super::{Error, Result};

use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::orders::{self, OrderRow};
use super::outbox::{self, Outgoing};
use super::payments::{self, LockedUser};
use super::wechat::{self, ChannelVersion, NewWechatPayment};
use crate::domain::mixed::{MixedPart, MixedReceipt, PartReceipt};
use crate::domain::order::check_payable;
use crate::domain::payment::Refusal;
use crate::domain::{Asset, Code, Money, OrderStatus, PayMethod, PayType, PaymentStatus};
use crate::mq::messages::{OrderPaid, WechatPayer};

/// The pay-number prefix of a mixed payment.
const MIXED_PREFIX: &str = "MIX";

/// One mixed payment to make.
#[derive(Debug, Clone)]
pub struct MixedPayment<'a> {
    pub request_id: Uuid,
    pub user_id: i64,
    pub order_no: &'a str,
    pub total: Money,
    /// Checked by `domain::mixed::check_parts`.
    pub parts: &'a [MixedPart],
    /// With a balance part: the hash the pay password was verified against (see
    /// `payments::AssetPayment::verified_hash`).
    pub verified_hash: Option<String>,
    /// With a balance part: the pay password is needed (`pay.balance.require_password`).
    pub password_required: bool,
    /// With a balance part: the user's daily balance limit.
    pub daily_limit: Option<Money>,
    /// With a WeChat part: how its channel order is to be created.
    pub wechat: Option<(&'a WechatPayer, ChannelVersion)>,
}

/// What became of a mixed payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MixedApplied {
    /// Paid (SUCCESS), or its internal parts held for its WeChat part (PAYING); for a
    /// redelivered request, whatever its first delivery made, as it is now.
    Made(MixedReceipt),
    Refused(Refusal),
    /// The pay password changed between its verification and the transaction: verify again.
    Stale,
}

/// Makes a mixed payment in one transaction.
pub async fn pay(pool: &PgPool, payment: &MixedPayment<'_>) -> Result<MixedApplied> {
    let mut tx = pool.begin().await?;
    let applied = pay_in(&mut tx, payment).await?;
    tx.commit().await?;
    Ok(applied)
}

/// `pay` in the caller's transaction: nothing is taken unless the caller commits.
pub async fn pay_in(tx: &mut PgConnection, p: &MixedPayment<'_>) -> Result<MixedApplied> {
    let refused = |code, message: &str| Ok(MixedApplied::Refused(Refusal::new(code, message)));
    // The rules that keep the order's money whole, whoever calls: the parts add up to the
    // total, and there is a WeChat part exactly when there is a WeChat payer.
    let sum = p.parts.iter().try_fold(Money::ZERO, |sum, part| sum.checked_add(part.amount));
    let has_wechat = p.parts.iter().any(|part| part.method == PayMethod::Wechat);
    if sum != Some(p.total) || has_wechat != p.wechat.is_some() {
        return refused(Code::Validation, "the parts do not add up to the total, or a WeChat part lacks its payer");
    }
    let order = orders::lock_one(tx, p.order_no).await?;
    // A redelivery, recognised after the order's lock: its first delivery has committed, or
    // never will.
    let made: Option<String> = sqlx::query_scalar("SELECT mixed_no FROM mixed_payments WHERE request_id = $1")
        .bind(p.request_id)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(mixed_no) = made {
        return Ok(MixedApplied::Made(receipt(tx, &mixed_no).await?));
    }
    if let Err(refusal) = check_payable(order.as_ref().map(OrderRow::facts).as_ref(), p.user_id, p.total) {
        return Ok(MixedApplied::Refused(refusal));
    }
    let order = order.expect("check_payable refuses a missing order");
    if p.wechat.is_some() {
        let had_wechat: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM payments WHERE order_no = $1 AND method = 'wechat')")
                .bind(p.order_no)
                .fetch_one(&mut *tx)
                .await?;
        if had_wechat {
            // WeChat takes no second trade for an order under our numbering rules: its first
            // WeChat payment closed, and the order is payable again only without WeChat.
            return refused(
                Code::OrderClosed,
                "this order's WeChat payment was closed; pay without WeChat or place a new order",
            );
        }
    }

    let Some(user) = payments::lock_users(tx, &[p.user_id]).await?.pop() else {
        return refused(Code::NotFound, "order not found");
    };
    let internal: Vec<(&MixedPart, Asset)> =
        p.parts.iter().filter_map(|part| Some((part, part.method.asset()?))).collect();
    let balance_part = internal.iter().find(|(part, _)| part.method == PayMethod::Balance).map(|(part, _)| *part);
    if let Some(part) = balance_part {
        // Verified against the hash the user still has (a check skipped is no check).
        if p.password_required
            && (p.verified_hash.is_none() || user.pay_password_hash.as_deref() != p.verified_hash.as_deref())
        {
            return Ok(MixedApplied::Stale);
        }
        if p.daily_limit.is_some() {
            let today = payments::balance_paid_today(tx, &[p.user_id]).await?.remove(&p.user_id).unwrap_or(Money::ZERO);
            if let Some(refusal) = payments::past_daily_limit(p.daily_limit, today, part.amount) {
                return Ok(MixedApplied::Refused(refusal));
            }
        }
    }
    let mut remaining = Vec::with_capacity(internal.len());
    for (part, asset) in &internal {
        let left = user.balance(*asset);
        match left.checked_sub(part.asset_amount) {
            Some(after) => remaining.push(after),
            None => return Ok(MixedApplied::Refused(payments::not_enough(*asset, left, part.asset_amount))),
        }
    }

    let held = p.wechat.is_some();
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT nextval('pay_no_seq') FROM generate_series(1, $1)")
        .bind(p.parts.len() as i64 + 1)
        .fetch_all(&mut *tx)
        .await?;
    let mixed_no = payments::pay_no(MIXED_PREFIX, order.now, seqs[0]);
    let pay_nos: Vec<String> = p
        .parts
        .iter()
        .zip(&seqs[1..])
        .map(|(part, seq)| payments::pay_no(part.method.pay_no_prefix(), order.now, *seq))
        .collect();
    let part_status = if held { PaymentStatus::Held } else { PaymentStatus::Success };
    sqlx::query(
        "INSERT INTO mixed_payments (mixed_no, order_no, user_id, amount, status, request_id, paid_at)
         VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $5 = 'SUCCESS' THEN now() END)",
    )
    .bind(&mixed_no)
    .bind(p.order_no)
    .bind(p.user_id)
    .bind(p.total)
    .bind(if held { PaymentStatus::Paying } else { PaymentStatus::Success })
    .bind(p.request_id)
    .execute(&mut *tx)
    .await?;

    let internal_nos: Vec<&str> = p
        .parts
        .iter()
        .zip(&pay_nos)
        .filter(|(part, _)| part.method.asset().is_some())
        .map(|(_, no)| no.as_str())
        .collect();
    take(tx, &user, &order, &mixed_no, &internal, &internal_nos, &remaining, part_status).await?;

    if let Some((payer, version)) = p.wechat {
        let (part, pay_no) = p
            .parts
            .iter()
            .zip(&pay_nos)
            .find(|(part, _)| part.method == PayMethod::Wechat)
            .expect("a mixed payment with a WeChat payer has a WeChat part");
        // A PAYING payment beside the held parts, the order waiting for it: the expiry check, the
        // status sync and retries treat it as any WeChat payment.
        let new = NewWechatPayment {
            pay_no: Some(pay_no),
            amount: part.amount,
            request_id: None,
            mixed_no: Some(&mixed_no),
            trade_type: payer.trade_type,
            openid: payer.openid.as_deref(),
            client_ip: &payer.client_ip,
            version,
        };
        wechat::begin_payment(tx, &order, &new).await?;
    } else {
        let parts: Vec<(&MixedPart, &str)> =
            internal.iter().map(|(part, _)| *part).zip(internal_nos.iter().copied()).collect();
        record_profit(tx, p.user_id, p.order_no, &parts, order.now).await?;
        mark_order_paid(tx, &order, &mixed_no, order.now, p.request_id).await?;
    }

    let mut remaining = remaining.into_iter();
    let parts = p
        .parts
        .iter()
        .zip(pay_nos)
        .map(|(part, pay_no)| PartReceipt {
            method: part.method,
            pay_no,
            amount: part.amount,
            asset_amount: part.asset_amount,
            status: if part.method == PayMethod::Wechat { PaymentStatus::Paying } else { part_status },
            remaining: part.method.asset().and_then(|_| remaining.next()),
        })
        .collect();
    Ok(MixedApplied::Made(MixedReceipt {
        mixed_no,
        status: if held { PaymentStatus::Paying } else { PaymentStatus::Success },
        pay_time: (!held).then_some(order.now),
        parts,
        wechat_pay_info: None,
        note: None,
    }))
}

/// The mixed payment a pay request made, as it is now (a redelivered request is answered from
/// it before anything else is checked).
pub async fn find_by_request(pool: &PgPool, request_id: Uuid) -> Result<Option<MixedReceipt>> {
    let mut conn = pool.acquire().await?;
    let made: Option<String> = sqlx::query_scalar("SELECT mixed_no FROM mixed_payments WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(&mut *conn)
        .await?;
    match made {
        Some(mixed_no) => Ok(Some(receipt(&mut conn, &mixed_no).await?)),
        None => Ok(None),
    }
}

/// A mixed payment as it is now.
pub async fn find(pool: &PgPool, mixed_no: &str) -> Result<MixedReceipt> {
    receipt(&mut *pool.acquire().await?, mixed_no).await
}

/// Takes the internal parts from the user's (locked) account: their payment rows, the
/// conditional debit, the ledger rows (`pay`, or `hold` while the WeChat part waits), and the
/// day's balance total.
#[allow(clippy::too_many_arguments)]
async fn take(
    tx: &mut PgConnection,
    user: &LockedUser,
    order: &OrderRow,
    mixed_no: &str,
    internal: &[(&MixedPart, Asset)],
    pay_nos: &[&str],
    remaining: &[Money],
    status: PaymentStatus,
) -> Result<()> {
    let methods: Vec<&str> = internal.iter().map(|(part, _)| part.method.as_str()).collect();
    let amounts: Vec<Decimal> = internal.iter().map(|(part, _)| part.amount.as_decimal()).collect();
    let asset_amounts: Vec<Decimal> = internal.iter().map(|(part, _)| part.asset_amount.as_decimal()).collect();
    let remaining: Vec<Decimal> = remaining.iter().map(|m| m.as_decimal()).collect();
    let assets: Vec<&str> = internal.iter().map(|(_, asset)| asset.as_str()).collect();
    let taken =
        |asset: Asset| internal.iter().filter(|(_, a)| *a == asset).map(|(part, _)| part.asset_amount).sum_or_zero();
    let reason = if status == PaymentStatus::Held { "hold" } else { "pay" };
    let (debited, inserted): (i64, i64) = sqlx::query_as(
        "WITH i AS (
             SELECT * FROM unnest($3::text[], $4::text[], $5::numeric[], $6::numeric[], $7::text[], $8::numeric[])
                 WITH ORDINALITY AS i(pay_no, method, amount, asset_amount, asset, balance_after, ord)
         ), u AS (
             UPDATE users SET money = money - $9, integral = integral - $10, money2 = money2 - $11
             WHERE id = $1 AND money >= $9 AND integral >= $10 AND money2 >= $11
             RETURNING 1
         ), p AS (
             INSERT INTO payments (pay_no, order_no, user_id, method, amount, asset_amount, status, mixed_no, paid_at)
             SELECT pay_no, $2, $1, method, amount, asset_amount, $12, $13, now() FROM i
             RETURNING 1
         ), l AS (
             INSERT INTO asset_ledger (user_id, asset, change, balance_after, reason, order_no, pay_no)
             SELECT $1, asset, -asset_amount, balance_after, $14, $2, pay_no FROM i ORDER BY ord
         ), bd AS (
             INSERT INTO balance_daily (user_id, day, paid)
             SELECT $1, shanghai_day(now()), amount FROM i WHERE method = 'balance'
             ON CONFLICT (user_id, day) DO UPDATE SET paid = balance_daily.paid + EXCLUDED.paid
         )
         SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM p)",
    )
    .bind(user.id)
    .bind(&order.order_no)
    .bind(pay_nos)
    .bind(&methods)
    .bind(&amounts)
    .bind(&asset_amounts)
    .bind(&assets)
    .bind(&remaining)
    .bind(taken(Asset::Money))
    .bind(taken(Asset::Integral))
    .bind(taken(Asset::Money2))
    .bind(status)
    .bind(mixed_no)
    .bind(reason)
    .fetch_one(&mut *tx)
    .await?;
    // The account was locked and checked above; if this ever fails, roll back.
    if debited != 1 || inserted as usize != internal.len() {
        return Err(Error::Invariant(format!(
            "mixed payment {mixed_no}: {debited}/1 accounts debited, {inserted}/{} parts written",
            internal.len()
        )));
    }
    Ok(())
}

/// profit_pay rows for parts that became final.
async fn record_profit(
    tx: &mut PgConnection,
    user_id: i64,
    order_no: &str,
    parts: &[(&MixedPart, &str)],
    at: OffsetDateTime,
) -> Result<()> {
    let pay_nos: Vec<&str> = parts.iter().map(|(_, no)| *no).collect();
    let amounts: Vec<Decimal> = parts.iter().map(|(part, _)| part.amount.as_decimal()).collect();
    let contents: Vec<&str> = parts.iter().map(|(part, _)| part.method.content()).collect();
    let pay_types: Vec<i16> = parts.iter().map(|(part, _)| part.method.pay_type()).collect();
    sqlx::query(
        "INSERT INTO profit_pay (user_id, order_no, pay_no, change_money, content, pay_type, add_time)
         SELECT $1, $2, pay_no, -amount, content, pay_type, $7
         FROM unnest($3::text[], $4::numeric[], $5::text[], $6::smallint[]) AS i(pay_no, amount, content, pay_type)",
    )
    .bind(user_id)
    .bind(order_no)
    .bind(&pay_nos)
    .bind(&amounts)
    .bind(&contents)
    .bind(&pay_types)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The order paid by the mixed payment, with its order-paid event.
async fn mark_order_paid(
    tx: &mut PgConnection,
    order: &OrderRow,
    mixed_no: &str,
    paid_at: OffsetDateTime,
    correlation_id: Uuid,
) -> Result<()> {
    order.check_becomes(OrderStatus::Paid)?;
    sqlx::query(
        "UPDATE orders SET status = 'PAID', pay_type = 'mixed', pay_no = $2, paid_at = $3, paying_pay_no = NULL
         WHERE order_no = $1",
    )
    .bind(&order.order_no)
    .bind(mixed_no)
    .bind(paid_at)
    .execute(&mut *tx)
    .await?;
    let event = OrderPaid {
        order_no: order.order_no.clone(),
        user_id: order.user_id,
        goods_id: order.goods_id,
        kind: order.kind,
        num: order.num,
        amount: order.amount,
        pay_no: mixed_no.to_owned(),
        pay_type: PayType::Mixed,
        paid_at,
    };
    outbox::enqueue_all(tx, &[Outgoing { correlation_id: Some(correlation_id), ..Outgoing::new(&event) }]).await
}

/// The mixed payment a (WeChat) payment is a part of, if any.
pub(super) async fn of_payment(tx: &mut PgConnection, pay_no: &str) -> Result<Option<String>> {
    Ok(sqlx::query_scalar::<_, Option<String>>("SELECT mixed_no FROM payments WHERE pay_no = $1")
        .bind(pay_no)
        .fetch_optional(&mut *tx)
        .await?
        .flatten())
}

#[derive(sqlx::FromRow)]
struct HeldRow {
    pay_no: String,
    method: PayMethod,
    amount: Money,
    asset_amount: Money,
    request_id: Uuid,
    user_id: i64,
}

/// The WeChat part settled, the order (locked by the caller) paid: every hold becomes final
/// with its profit_pay row, and the order is paid by the mixed payment.
pub(super) async fn finalize(
    tx: &mut PgConnection,
    order: &OrderRow,
    mixed_no: &str,
    paid_at: OffsetDateTime,
) -> Result<()> {
    let held: Vec<HeldRow> = sqlx::query_as(
        "WITH h AS (
             UPDATE payments SET status = 'SUCCESS' WHERE mixed_no = $1 AND status = 'HELD'
             RETURNING pay_no, method, amount, asset_amount, user_id
         ), m AS (
             UPDATE mixed_payments SET status = 'SUCCESS', paid_at = $2 WHERE mixed_no = $1 AND status = 'PAYING'
             RETURNING request_id
         )
         SELECT h.*, m.request_id FROM h, m",
    )
    .bind(mixed_no)
    .bind(paid_at)
    .fetch_all(&mut *tx)
    .await?;
    // Two parts at least, one of them WeChat: a PAYING mixed payment holds something. No held
    // row means it is not PAYING, which the caller should have known: roll back.
    let Some(request_id) = held.first().map(|row| row.request_id) else {
        return Err(Error::Invariant(format!("mixed payment {mixed_no} has no holds to make final")));
    };
    let parts: Vec<(MixedPart, &str)> = held
        .iter()
        .map(|h| (MixedPart { method: h.method, amount: h.amount, asset_amount: h.asset_amount }, h.pay_no.as_str()))
        .collect();
    let refs: Vec<(&MixedPart, &str)> = parts.iter().map(|(part, no)| (part, *no)).collect();
    record_profit(tx, held[0].user_id, &order.order_no, &refs, paid_at).await?;
    mark_order_paid(tx, order, mixed_no, paid_at, request_id).await
}

#[derive(sqlx::FromRow)]
struct ReturnedRow {
    pay_no: String,
    method: PayMethod,
    amount: Money,
    asset_amount: Money,
    held_at: OffsetDateTime,
}

/// The order (locked by the caller) closed or reopened unpaid: every part still held goes back
/// to its asset with a `return` ledger row, the day's balance total gives back a balance part,
/// and the mixed payment is CLOSED. Parts already returned are not touched: once only.
pub(super) async fn return_holds(tx: &mut PgConnection, mixed_no: &str) -> Result<()> {
    sqlx::query(
        "UPDATE mixed_payments SET status = 'CLOSED', closed_at = now() WHERE mixed_no = $1 AND status = 'PAYING'",
    )
    .bind(mixed_no)
    .execute(&mut *tx)
    .await?;
    // The payments before the user (the lock order): the parts still held, and the user.
    let user_id: Option<i64> = sqlx::query_scalar(
        "SELECT max(user_id) FROM (SELECT user_id FROM payments WHERE mixed_no = $1 AND status = 'HELD' FOR UPDATE) h",
    )
    .bind(mixed_no)
    .fetch_one(&mut *tx)
    .await?;
    let Some(user_id) = user_id else {
        // Nothing held any more: returned before, or made final.
        return Ok(());
    };
    let Some(user) = payments::lock_users(tx, &[user_id]).await?.pop() else {
        return Err(Error::Invariant(format!("mixed payment {mixed_no}: its user is gone")));
    };
    let returned: Vec<ReturnedRow> = sqlx::query_as(
        "UPDATE payments SET status = 'RETURNED' WHERE mixed_no = $1 AND status = 'HELD'
         RETURNING pay_no, method, amount, asset_amount, paid_at AS held_at",
    )
    .bind(mixed_no)
    .fetch_all(&mut *tx)
    .await?;
    let asset_of = |row: &ReturnedRow| row.method.asset().expect("only internal parts are held");
    let back = |asset: Asset| returned.iter().filter(|r| asset_of(r) == asset).map(|r| r.asset_amount).sum_or_zero();
    let balance_after: Vec<Decimal> = returned
        .iter()
        .map(|r| user.balance(asset_of(r)).checked_add(r.asset_amount).map(Money::as_decimal))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::Invariant(format!("mixed payment {mixed_no}: a returned hold overflows the account")))?;
    let pay_nos: Vec<&str> = returned.iter().map(|r| r.pay_no.as_str()).collect();
    let assets: Vec<&str> = returned.iter().map(|r| asset_of(r).as_str()).collect();
    let changes: Vec<Decimal> = returned.iter().map(|r| r.asset_amount.as_decimal()).collect();
    let balance_part = returned.iter().find(|r| r.method == PayMethod::Balance);
    sqlx::query(
        "WITH u AS (
             UPDATE users SET money = money + $3, integral = integral + $4, money2 = money2 + $5 WHERE id = $1
         ), l AS (
             INSERT INTO asset_ledger (user_id, asset, change, balance_after, reason, order_no, pay_no)
             SELECT $1, asset, change, balance_after, 'return', (SELECT order_no FROM mixed_payments WHERE mixed_no = $2), pay_no
             FROM unnest($6::text[], $7::text[], $8::numeric[], $9::numeric[]) WITH ORDINALITY
                 AS i(pay_no, asset, change, balance_after, ord)
             ORDER BY ord
         )
         UPDATE balance_daily SET paid = paid - $10
         WHERE $10 > 0 AND user_id = $1 AND day = shanghai_day($11)",
    )
    .bind(user_id)
    .bind(mixed_no)
    .bind(back(Asset::Money))
    .bind(back(Asset::Integral))
    .bind(back(Asset::Money2))
    .bind(&pay_nos)
    .bind(&assets)
    .bind(&changes)
    .bind(&balance_after)
    .bind(balance_part.map_or(Money::ZERO, |r| r.amount))
    .bind(balance_part.map(|r| r.held_at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct ReceiptRow {
    status: PaymentStatus,
    paid_at: Option<OffsetDateTime>,
    method: PayMethod,
    pay_no: String,
    amount: Money,
    asset_amount: Money,
    part_status: PaymentStatus,
    remaining: Option<Money>,
}

/// A mixed payment as it is now.
async fn receipt(tx: &mut PgConnection, mixed_no: &str) -> Result<MixedReceipt> {
    let rows: Vec<ReceiptRow> = sqlx::query_as(
        "SELECT m.status, m.paid_at, p.method, p.pay_no, p.amount, p.asset_amount, p.status AS part_status,
                l.balance_after AS remaining
         FROM mixed_payments m
         JOIN payments p ON p.mixed_no = m.mixed_no
         LEFT JOIN asset_ledger l ON l.pay_no = p.pay_no AND l.reason IN ('pay', 'hold')
         WHERE m.mixed_no = $1 ORDER BY p.id",
    )
    .bind(mixed_no)
    .fetch_all(&mut *tx)
    .await?;
    let first = rows.first().ok_or_else(|| Error::Invariant(format!("mixed payment {mixed_no} has no parts")))?;
    Ok(MixedReceipt {
        mixed_no: mixed_no.to_owned(),
        status: first.status,
        pay_time: first.paid_at,
        wechat_pay_info: None,
        note: None,
        parts: rows
            .into_iter()
            .map(|r| PartReceipt {
                method: r.method,
                pay_no: r.pay_no,
                amount: r.amount,
                asset_amount: r.asset_amount,
                status: r.part_status,
                remaining: r.remaining,
            })
            .collect(),
    })
}

/// Sums amounts that are known to fit (parts of one order).
trait SumOrZero {
    fn sum_or_zero(self) -> Money;
}

impl<I: Iterator<Item = Money>> SumOrZero for I {
    fn sum_or_zero(self) -> Money {
        self.fold(Money::ZERO, |sum, m| sum.checked_add(m).expect("parts of one order fit in an amount"))
    }
}
