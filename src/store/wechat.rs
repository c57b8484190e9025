//! WeChat payments in the database: beginning one (or finding the one to reuse), keeping its
//! prepay, settling it from a confirmed trade, and closing it when the order's pay time runs out.
//!
//! Every transaction here locks the order first (`orders::lock`), then the payment: the order
//! row says whether it waits for a WeChat payment (PAYING), so a concurrent asset payment,
//! which locks the same row, sees it; and one lock order means settling and expiring never
//! deadlock.

use super::{Error, Result};
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use super::orders::{self, OrderRow};
use super::outbox;
use crate::channel::{Prepaid, Trade, TradeState, TradeType};
use crate::config::WechatApiVersion;
use crate::domain::order::{OrderFacts, check_payable};
use crate::domain::payment::{Alert, AlertKind, Refusal};
use crate::domain::{Code, Money, OrderStatus, PayMethod, PayType, PaymentStatus};
use crate::mq::messages::{OrderPaid, TradeReported, TradeSource, WechatCreateRequested};
use crate::wechat::SignedNotify;
use crate::wechat::v2::sign::SignType;

/// WeChat takes a description of at most 127 characters.
const MAX_DESCRIPTION_CHARS: usize = 127;

/// What to do for a create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    Refused(Refusal),
    /// A prepay of this payment is still valid: sign fresh params for it.
    Reuse {
        pay_no: String,
        prepaid: Prepaid,
    },
    /// Call the channel's prepay for this payment (new, or its prepay went stale), with the
    /// details it was begun with: WeChat refuses one out_trade_no with other parameters.
    Prepay {
        pay_no: String,
        expires_at: OffsetDateTime,
        details: PrepayDetails,
    },
}

/// What the channel order was (or is to be) created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepayDetails {
    /// The goods' name: what the payer sees on WeChat's pay sheet and bill, so not the client's
    /// to choose.
    pub description: String,
    pub openid: Option<String>,
    pub client_ip: String,
}

/// How a channel order is created: the API generation, and (v2) the sign type its notifies
/// will be signed with.
#[derive(Debug, Clone, Copy)]
pub struct ChannelVersion {
    pub api_version: WechatApiVersion,
    pub sign_type: Option<SignType>,
}

#[derive(sqlx::FromRow)]
struct WechatRow {
    pay_no: String,
    /// The order's amount, or the WeChat part of a mixed payment.
    amount: Money,
    trade_type: Option<TradeType>,
    prepaid: Option<serde_json::Value>,
    /// The prepay is younger than `wechat.prepay_valid_secs`.
    fresh: bool,
    description: Option<String>,
    openid: Option<String>,
    client_ip: Option<String>,
}

/// Checks the order and finds or creates its WeChat payment, in one transaction.
pub async fn begin(
    pool: &PgPool,
    request: &WechatCreateRequested,
    version: ChannelVersion,
    prepay_valid: Duration,
) -> Result<Begun> {
    let mut tx = pool.begin().await?;
    let begun = begin_in(&mut tx, request, version, prepay_valid).await?;
    tx.commit().await?;
    Ok(begun)
}

/// `begin` in the caller's transaction (the order stays locked until it ends).
pub async fn begin_in(
    tx: &mut PgConnection,
    request: &WechatCreateRequested,
    version: ChannelVersion,
    prepay_valid: Duration,
) -> Result<Begun> {
    let order = orders::lock_one(tx, &request.order_no).await?;
    // Read after the order's lock: a payment committed while this waited is seen.
    let existing: Option<WechatRow> = sqlx::query_as(
        "SELECT pay_no, amount, trade_type, prepaid,
                coalesce(prepaid_at > now() - make_interval(secs => $2), false) AS fresh,
                description, openid, client_ip
         FROM payments WHERE order_no = $1 AND method = 'wechat'",
    )
    .bind(&request.order_no)
    .bind(prepay_valid.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    // The order waits for this very payment: for it, the order is payable, for the payment's
    // amount (a mixed payment's WeChat part pays less than the order).
    let mine = order.as_ref().zip(existing.as_ref()).is_some_and(|(o, p)| o.is_paying_with(&p.pay_no));
    let facts = order.as_ref().map(|o| match &existing {
        Some(p) if mine => OrderFacts { status: OrderStatus::Unpaid, amount: p.amount, ..o.facts() },
        _ => o.facts(),
    });
    if let Err(refusal) = check_payable(facts.as_ref(), request.user_id, request.amount) {
        return Ok(Begun::Refused(refusal));
    }
    let order = order.expect("check_payable refuses a missing order");
    let refuse = |code, message: &str| Ok(Begun::Refused(Refusal::new(code, message)));
    let existing = match existing {
        None => {
            let new = NewWechatPayment {
                pay_no: None,
                amount: order.amount,
                request_id: Some(request.request_id),
                mixed_no: None,
                trade_type: request.trade_type,
                openid: request.openid.as_deref(),
                client_ip: &request.client_ip,
                version,
            };
            let (pay_no, description) = begin_payment(tx, &order, &new).await?;
            let details =
                PrepayDetails { description, openid: request.openid.clone(), client_ip: request.client_ip.clone() };
            return Ok(Begun::Prepay { pay_no, expires_at: order.expires_at, details });
        }
        Some(existing) => existing,
    };
    if !mine {
        // The order is UNPAID and its WeChat payment is over (the trade closed or failed):
        // WeChat takes no second trade under the same number.
        return refuse(Code::OrderClosed, "this order's WeChat payment was closed; place a new order");
    }
    if existing.trade_type != Some(request.trade_type) {
        let message = format!(
            "this order is being paid with {}; retry with that trade_type",
            existing.trade_type.map(TradeType::as_str).unwrap_or_default()
        );
        return refuse(Code::Validation, &message);
    }
    // A JSAPI prepay is bound to the payer's openid.
    if request.trade_type == TradeType::Jsapi && existing.openid != request.openid {
        return refuse(Code::Validation, "this order's WeChat payment belongs to another payer (openid)");
    }
    let prepaid = existing.prepaid.filter(|_| existing.fresh).and_then(|p| serde_json::from_value::<Prepaid>(p).ok());
    Ok(match prepaid {
        Some(prepaid) => Begun::Reuse { pay_no: existing.pay_no, prepaid },
        None => {
            let details = PrepayDetails {
                description: existing.description.unwrap_or_default(),
                openid: existing.openid,
                client_ip: existing.client_ip.unwrap_or_else(|| request.client_ip.clone()),
            };
            Begun::Prepay { pay_no: existing.pay_no, expires_at: order.expires_at, details }
        }
    })
}

/// A WeChat payment to begin: a whole order's (made by its create request), or a mixed
/// payment's WeChat part.
pub(super) struct NewWechatPayment<'a> {
    /// None: numbered here (`WX…`).
    pub pay_no: Option<&'a str>,
    pub amount: Money,
    pub request_id: Option<uuid::Uuid>,
    pub mixed_no: Option<&'a str>,
    pub trade_type: TradeType,
    pub openid: Option<&'a str>,
    pub client_ip: &'a str,
    pub version: ChannelVersion,
}

/// Inserts a PAYING WeChat payment and makes the locked UNPAID order wait for it, in one
/// statement (`pay_type` `wechat`, or `mixed` for a mixed payment's part); answers its number and
/// description (the goods' name, as WeChat shows it).
pub(super) async fn begin_payment(
    tx: &mut PgConnection,
    order: &OrderRow,
    new: &NewWechatPayment<'_>,
) -> Result<(String, String)> {
    order.check_becomes(OrderStatus::Paying)?;
    let (pay_no, description, waiting): (String, String, i64) = sqlx::query_as(
        "WITH p AS (
             INSERT INTO payments (pay_no, order_no, user_id, method, amount, asset_amount, status, request_id, mixed_no,
                                   trade_type, openid, client_ip, description, api_version, sign_type)
             SELECT coalesce($1, 'WX' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS') || lpad(nextval('pay_no_seq')::text, 10, '0')),
                    $2, $3, 'wechat', $4, $4, 'PAYING', $5, $6, $7, $8, $9, left(g.name, $10), $11, $12
             FROM goods g WHERE g.id = $13
             RETURNING pay_no, description
         ), o AS (
             UPDATE orders SET status = 'PAYING', paying_pay_no = p.pay_no,
                               pay_type = CASE WHEN $6::text IS NULL THEN 'wechat' ELSE 'mixed' END
             FROM p WHERE orders.order_no = $2 AND orders.status = 'UNPAID'
             RETURNING 1
         )
         SELECT pay_no, description, (SELECT count(*) FROM o) FROM p",
    )
    .bind(new.pay_no)
    .bind(&order.order_no)
    .bind(order.user_id)
    .bind(new.amount)
    .bind(new.request_id)
    .bind(new.mixed_no)
    .bind(new.trade_type)
    .bind(new.openid)
    .bind(new.client_ip)
    .bind(MAX_DESCRIPTION_CHARS as i32)
    .bind(new.version.api_version)
    .bind(new.version.sign_type)
    .bind(order.goods_id)
    .fetch_one(&mut *tx)
    .await?;
    // The order was locked and checked UNPAID by the caller; if it ever is not, roll back.
    if waiting != 1 {
        return Err(Error::Invariant(format!("order {} did not wait for WeChat payment {pay_no}", order.order_no)));
    }
    Ok((pay_no, description))
}

/// Whether a prepay was kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Kept: the payer may be given pay params for it.
    Kept,
    /// The order no longer waits for this payment (its pay time ran out, or a retry of an
    /// older request): the trade must be closed at the channel, and the payer told why.
    Refused(Refusal),
}

/// Keeps the channel's prepay answer for reuse, if the order still waits for this payment.
pub async fn record_prepaid(pool: &PgPool, pay_no: &str, prepaid: &Prepaid) -> Result<Recorded> {
    let mut tx = pool.begin().await?;
    let order_no: Option<String> = sqlx::query_scalar("SELECT order_no FROM payments WHERE pay_no = $1")
        .bind(pay_no)
        .fetch_optional(&mut *tx)
        .await?;
    let order = match &order_no {
        Some(order_no) => orders::lock_one(&mut tx, order_no).await?,
        None => None,
    };
    if !order.as_ref().is_some_and(|o| o.is_paying_with(pay_no)) {
        let refusal = match &order {
            Some(o) => check_payable(Some(&o.facts()), o.user_id, o.amount).err(),
            None => None,
        };
        return Ok(Recorded::Refused(refusal.unwrap_or_else(|| {
            Refusal::new(Code::OrderClosed, "this order's WeChat payment was closed; place a new order")
        })));
    }
    sqlx::query("UPDATE payments SET prepaid = $2, prepaid_at = now() WHERE pay_no = $1 AND status = 'PAYING'")
        .bind(pay_no)
        .bind(serde_json::to_value(prepaid).expect("serialises"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Recorded::Kept)
}

/// The WeChat payment of an order, as the status and retry endpoints need it.
#[derive(Debug, Clone)]
pub struct WechatPayment {
    pub pay_no: String,
    pub status: PaymentStatus,
    pub trade_type: Option<TradeType>,
    pub openid: Option<String>,
    pub client_ip: Option<String>,
    pub amount: Money,
    /// How long it has been waiting for the payer.
    pub age: Duration,
}

#[derive(sqlx::FromRow)]
struct FoundRow {
    pay_no: String,
    status: PaymentStatus,
    trade_type: Option<TradeType>,
    openid: Option<String>,
    client_ip: Option<String>,
    amount: Money,
    age_secs: f64,
}

pub async fn find(pool: &PgPool, order_no: &str) -> Result<Option<WechatPayment>> {
    let row: Option<FoundRow> = sqlx::query_as(
        "SELECT pay_no, status, trade_type, openid, client_ip, amount,
                extract(epoch FROM now() - created_at)::float8 AS age_secs
         FROM payments WHERE order_no = $1 AND method = 'wechat'",
    )
    .bind(order_no)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| WechatPayment {
        pay_no: r.pay_no,
        status: r.status,
        trade_type: r.trade_type,
        openid: r.openid,
        client_ip: r.client_ip,
        amount: r.amount,
        age: Duration::from_secs_f64(r.age_secs.max(0.0)),
    }))
}

/// Queues a trade our own query found, for the notify-worker to settle (through the outbox, so
/// the relay publishes it with a confirm). The notify-worker asks WeChat again before it
/// settles anything: a message on the queue proves nothing by itself.
pub async fn report_trade(pool: &PgPool, trade: &Trade) -> Result<()> {
    let mut conn = pool.acquire().await?;
    outbox::enqueue(&mut conn, &TradeReported::queried(trade.clone())).await
}

/// What the expiry did to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Closed now (with its waiting WeChat payment).
    Closed,
    /// Paid, closed already, or its pay time has not run out: nothing to do.
    Unchanged,
    /// It waits for a WeChat payment the caller did not check at WeChat (one begun after the
    /// caller looked): check that one first.
    Unchecked,
}

/// Closes an order whose pay time ran out if it is still unpaid, and its WeChat payment if
/// that is `checked`: the one the caller made sure, at WeChat, can no longer be paid.
pub async fn expire(pool: &PgPool, order_no: &str, checked: Option<&str>) -> Result<Expiry> {
    let mut tx = pool.begin().await?;
    let Some(order) = orders::lock_one(&mut tx, order_no).await? else {
        return Ok(Expiry::Unchanged);
    };
    match order.status {
        _ if !order.expired => return Ok(Expiry::Unchanged),
        OrderStatus::Unpaid => {}
        OrderStatus::Paying if order.paying_pay_no.as_deref() == checked => {}
        OrderStatus::Paying => return Ok(Expiry::Unchecked),
        OrderStatus::Paid | OrderStatus::PartiallyRefunded | OrderStatus::Refunded | OrderStatus::Closed => {
            return Ok(Expiry::Unchanged);
        }
    }
    close_unpaid(&mut tx, &order).await?;
    tx.commit().await?;
    Ok(Expiry::Closed)
}

/// What a cancel did to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// Closed now (with its waiting WeChat payment, and a mixed payment's holds returned).
    Closed,
    /// Closed before.
    AlreadyClosed,
    Refused(Refusal),
    /// It waits for this WeChat payment, which the caller did not close at WeChat: close it
    /// first.
    Unchecked(String),
}

/// The owner gives up an unpaid order: it closes as if its pay time ran out. A WeChat payment
/// it waits for must be `checked`: closed at WeChat by the caller.
pub async fn cancel(pool: &PgPool, order_no: &str, user_id: i64, checked: Option<&str>) -> Result<Cancelled> {
    let mut tx = pool.begin().await?;
    let order = orders::lock_one(&mut tx, order_no).await?.filter(|o| o.user_id == user_id);
    let Some(order) = order else {
        return Ok(Cancelled::Refused(Refusal::new(Code::NotFound, "order not found")));
    };
    match order.status {
        OrderStatus::Paid | OrderStatus::PartiallyRefunded | OrderStatus::Refunded => {
            return Ok(Cancelled::Refused(Refusal {
                pay_no: order.pay_no.clone(),
                ..Refusal::new(Code::OrderPaid, "order already paid; ask for a refund instead")
            }));
        }
        OrderStatus::Closed => return Ok(Cancelled::AlreadyClosed),
        OrderStatus::Unpaid => {}
        OrderStatus::Paying if order.paying_pay_no.as_deref() == checked => {}
        OrderStatus::Paying => return Ok(Cancelled::Unchecked(order.paying_pay_no.clone().unwrap_or_default())),
    }
    close_unpaid(&mut tx, &order).await?;
    tx.commit().await?;
    Ok(Cancelled::Closed)
}

/// Closes a locked UNPAID or PAYING order: the WeChat payment it waits for is closed with it
/// (the caller made sure it can no longer be paid), and a mixed payment's holds go back.
async fn close_unpaid(tx: &mut PgConnection, order: &OrderRow) -> Result<()> {
    order.check_becomes(OrderStatus::Closed)?;
    sqlx::query("UPDATE orders SET status = 'CLOSED', paying_pay_no = NULL, pay_type = NULL WHERE order_no = $1")
        .bind(&order.order_no)
        .execute(&mut *tx)
        .await?;
    if let Some(pay_no) = order.paying_pay_no.as_deref().filter(|_| order.status == OrderStatus::Paying) {
        sqlx::query("UPDATE payments SET status = 'CLOSED' WHERE pay_no = $1 AND status = 'PAYING'")
            .bind(pay_no)
            .execute(&mut *tx)
            .await?;
        if let Some(mixed_no) = super::mixed::of_payment(tx, pay_no).await? {
            super::mixed::return_holds(tx, &mixed_no).await?;
        }
    }
    Ok(())
}

/// An order as the expiry check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeoutView {
    pub status: OrderStatus,
    /// Its pay time has run out.
    pub due: bool,
    /// PAYING: the WeChat payment it waits for.
    pub paying_pay_no: Option<String>,
}

pub async fn timeout_view(pool: &PgPool, order_no: &str) -> Result<Option<TimeoutView>> {
    Ok(orders::read(pool, &[order_no]).await?.pop().map(|seen| TimeoutView {
        status: seen.order.status,
        due: seen.order.expired,
        paying_pay_no: seen.order.paying_pay_no,
    }))
}

/// What the notify-worker made of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The payment and its order are now paid.
    Settled,
    /// Already settled by an earlier report: nothing changed.
    Duplicate,
    /// The trade was closed at WeChat; recorded on the payment, and the order is payable again.
    RecordedFailure,
    /// The trade is still waiting for the payer (or an attempt failed and it can be paid again).
    Pending,
    /// Must not settle; an alert was recorded.
    Alert(Alert),
}

impl Settlement {
    fn outcome(&self) -> &str {
        match self {
            Settlement::Settled => "settled",
            Settlement::Duplicate => "duplicate",
            Settlement::RecordedFailure => "recorded_failure",
            Settlement::Pending => "pending",
            Settlement::Alert(_) => "alert",
        }
    }
}

#[derive(sqlx::FromRow)]
struct PaymentRow {
    pay_no: String,
    status: PaymentStatus,
    amount: Money,
    user_id: i64,
    /// The mixed payment this is the WeChat part of.
    mixed_no: Option<String>,
    /// Given back by refunds of ours.
    refunded: Money,
}

/// Settles a WeChat payment from a trade the caller confirmed with WeChat (a notify whose
/// signature it verified, or its own query), in one transaction: the trade must name a payment
/// of ours, our appid and mchid, and the order's amount; then the payment and order are marked
/// paid with the transaction id and the raw report, with profit_pay and the order-paid outbox
/// row. Only SUCCESS settles. Any number of reports of one trade change the state once.
pub async fn settle(pool: &PgPool, report: &TradeReported, appid: &str, mchid: &str) -> Result<Settlement> {
    let trade = &report.trade;
    let mut tx = pool.begin().await?;
    // The order first, then the payment (the module's lock order).
    let order_no: Option<String> =
        sqlx::query_scalar("SELECT order_no FROM payments WHERE pay_no = $1 AND method = 'wechat'")
            .bind(&trade.out_trade_no)
            .fetch_optional(&mut *tx)
            .await?;
    let order = match &order_no {
        Some(order_no) => orders::lock_one(&mut tx, order_no).await?,
        None => None,
    };
    let payment: Option<PaymentRow> =
        match &order {
            Some(_) => sqlx::query_as(
                "SELECT pay_no, status, amount, user_id, mixed_no, refunded FROM payments WHERE pay_no = $1 FOR UPDATE",
            )
            .bind(&trade.out_trade_no)
            .fetch_optional(&mut *tx)
            .await?,
            None => None,
        };

    let settlement = match (&order, &payment) {
        (Some(order), Some(payment)) if trade.appid == appid && trade.mchid == mchid => {
            apply_trade(&mut tx, report, order, payment).await?
        }
        (Some(_), Some(_)) => Settlement::Alert(Alert::new(
            AlertKind::MerchantMismatch,
            format_args!("the trade names appid {} mchid {}, we are {appid} {mchid}", trade.appid, trade.mchid),
        )),
        _ => Settlement::Alert(Alert::new(
            AlertKind::UnknownTrade,
            format_args!("no WeChat payment {}", trade.out_trade_no),
        )),
    };
    if let Settlement::Alert(raised) = &settlement {
        alert(&mut tx, raised, order_no.as_deref(), Some(&trade.out_trade_no)).await?;
    }
    record_report(&mut tx, report, trade.trade_state.as_str(), settlement.outcome()).await?;
    tx.commit().await?;
    Ok(settlement)
}

/// What a trade does to its payment and (locked) order.
async fn apply_trade(
    tx: &mut PgConnection,
    report: &TradeReported,
    order: &OrderRow,
    payment: &PaymentRow,
) -> Result<Settlement> {
    let trade = &report.trade;
    let amount = payment.amount;
    let pay_no = payment.pay_no.as_str();
    let order_no = order.order_no.as_str();
    let waited_for = order.is_paying_with(pay_no);
    match trade.trade_state {
        TradeState::Success if payment.status == PaymentStatus::Success => Ok(Settlement::Duplicate),
        // Settled before, and refunds of ours gave some or all of it back since.
        TradeState::Success
            if matches!(payment.status, PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded)
                && !payment.refunded.is_zero() =>
        {
            Ok(Settlement::Duplicate)
        }
        // Paid back at WeChat already: a SUCCESS for it is an old report (a late retry of the
        // first notify), never money to settle.
        TradeState::Success if payment.status == PaymentStatus::Refunded => Ok(Settlement::Alert(Alert::new(
            AlertKind::SuccessAfterRefund,
            format_args!("a SUCCESS report for {pay_no}, which WeChat reported refunded before; not settled"),
        ))),
        TradeState::Success if trade.total_fen != Some(amount.to_fen()) => Ok(Settlement::Alert(Alert::new(
            AlertKind::AmountMismatch,
            format_args!("WeChat reports {:?} fen, the order is {} fen", trade.total_fen, amount.to_fen()),
        ))),
        TradeState::Success => {
            let paid_at = trade.success_time.unwrap_or_else(OffsetDateTime::now_utc);
            let marked = sqlx::query(
                "UPDATE payments SET status = 'SUCCESS', third_party_no = $2, paid_at = $3, notify_raw = $4
                 WHERE pay_no = $1 AND status IN ('PAYING', 'CLOSED')",
            )
            .bind(pay_no)
            .bind(&trade.transaction_id)
            .bind(paid_at)
            .bind(&report.raw)
            .execute(&mut *tx)
            .await?;
            if marked.rows_affected() != 1 {
                return Err(Error::Invariant(format!(
                    "payment {pay_no} in state {} cannot settle",
                    payment.status.as_str()
                )));
            }
            sqlx::query(
                "INSERT INTO profit_pay (user_id, order_no, pay_no, change_money, content, pay_type) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(payment.user_id)
            .bind(order_no)
            .bind(pay_no)
            .bind(-amount.as_decimal())
            .bind(PayMethod::Wechat.content())
            .bind(PayMethod::Wechat.pay_type())
            .execute(&mut *tx)
            .await?;
            if let Some(mixed_no) = &payment.mixed_no {
                if waited_for {
                    super::mixed::finalize(tx, order, mixed_no, paid_at).await?;
                    return Ok(Settlement::Settled);
                }
                // Its holds went back when the order closed or reopened: the WeChat part alone
                // does not pay the order, which stays as it is, and the part goes back to the
                // payer. The payment is recorded as paid (WeChat took it); the report's outcome
                // is the alert.
                let why = format!(
                    "WeChat took the {amount} yuan part of mixed payment {mixed_no} after its holds were returned"
                );
                let refund_no = super::refunds::refund_extra_payment(tx, order, pay_no, &why).await?;
                return Ok(Settlement::Alert(Alert::new(
                    AlertKind::PaidAfterClose,
                    format_args!("{why}; the order stays {}; refund {refund_no} gives it back", order.status.as_str()),
                )));
            }
            if order.status.was_paid() || order.status == OrderStatus::Closed {
                // Paid twice (another payment settled the order first), or paid as the order
                // closed: the money is real, so the payment stands as paid and goes back to the
                // payer in full; the order stays as it is.
                let (kind, why) = if order.status == OrderStatus::Closed {
                    (AlertKind::PaidAfterClose, "WeChat took the money after the order closed".to_owned())
                } else {
                    (
                        AlertKind::DoublePayment,
                        format!("order already paid by {}", order.pay_no.clone().unwrap_or_default()),
                    )
                };
                let refund_no = super::refunds::refund_extra_payment(tx, order, pay_no, &why).await?;
                let raised = Alert::new(
                    kind,
                    format_args!("{why}; the order stays {}; refund {refund_no} gives it back", order.status.as_str()),
                );
                alert(tx, &raised, Some(order_no), Some(pay_no)).await?;
                return Ok(Settlement::Settled);
            }
            if !waited_for {
                // WeChat reported the trade closed and the order reopened, unpaid: this payment
                // pays it after all.
                let raised = Alert::new(
                    AlertKind::PaidAfterFailure,
                    "WeChat took the money after reporting the trade closed; it is paid now",
                );
                alert(tx, &raised, Some(order_no), Some(pay_no)).await?;
            }
            order.check_becomes(OrderStatus::Paid)?;
            sqlx::query(
                "UPDATE orders SET status = 'PAID', pay_type = 'wechat', pay_no = $2, paid_at = $3, paying_pay_no = NULL
                 WHERE order_no = $1",
            )
            .bind(order_no)
            .bind(pay_no)
            .bind(paid_at)
            .execute(&mut *tx)
            .await?;
            let event = OrderPaid {
                order_no: order_no.to_owned(),
                user_id: payment.user_id,
                goods_id: order.goods_id,
                kind: order.kind,
                num: order.num,
                amount,
                pay_no: pay_no.to_owned(),
                pay_type: PayType::Single(PayMethod::Wechat),
                paid_at,
            };
            outbox::enqueue(tx, &event).await?;
            Ok(Settlement::Settled)
        }
        // Refunds of ours: their own reports (the refund notify, a refund query) settle them.
        TradeState::Refund if !payment.refunded.is_zero() => Ok(Settlement::Duplicate),
        TradeState::Refund if payment.status == PaymentStatus::Success => Ok(Settlement::Alert(Alert::new(
            AlertKind::RefundedOutside,
            format_args!("WeChat reports {pay_no} refunded, outside payfleet, after it settled"),
        ))),
        // The payer paid and the money went back (a refund in the merchant platform) before
        // any report settled it here: nothing was bought, so the order stays unpaid, and an
        // operator reconciles the trade.
        TradeState::Refund => {
            sqlx::query(
                "UPDATE payments SET status = 'REFUNDED', third_party_no = $2, notify_raw = $3 WHERE pay_no = $1",
            )
            .bind(pay_no)
            .bind(&trade.transaction_id)
            .bind(&report.raw)
            .execute(&mut *tx)
            .await?;
            if waited_for {
                reopen(tx, order, payment).await?;
            }
            Ok(Settlement::Alert(Alert::new(
                AlertKind::RefundedUnsettled,
                format_args!(
                    "WeChat reports {pay_no} paid and refunded before it settled here; the order stays unpaid"
                ),
            )))
        }
        // A failed attempt (PAYERROR) leaves the trade payable: the payment stays PAYING and
        // the expiry check closes it.
        state if state.is_closed() => {
            sqlx::query(
                "UPDATE payments SET status = 'CLOSED', notify_raw = $2 WHERE pay_no = $1 AND status = 'PAYING'",
            )
            .bind(pay_no)
            .bind(&report.raw)
            .execute(&mut *tx)
            .await?;
            if waited_for {
                reopen(tx, order, payment).await?;
            }
            Ok(Settlement::RecordedFailure)
        }
        _ => Ok(Settlement::Pending),
    }
}

/// PAYING → UNPAID: the payment it waited for is over without the money, so any method may
/// pay the order again; a mixed payment's holds go back.
async fn reopen(tx: &mut PgConnection, order: &OrderRow, payment: &PaymentRow) -> Result<()> {
    order.check_becomes(OrderStatus::Unpaid)?;
    if let Some(mixed_no) = &payment.mixed_no {
        super::mixed::return_holds(tx, mixed_no).await?;
    }
    Ok(sqlx::query("UPDATE orders SET status = 'UNPAID', paying_pay_no = NULL, pay_type = NULL WHERE order_no = $1")
        .bind(&order.order_no)
        .execute(tx)
        .await
        .map(drop)?)
}

/// Keeps every report that reached the notify-worker, with what it made of it.
async fn record_report(tx: &mut PgConnection, report: &TradeReported, trade_state: &str, outcome: &str) -> Result<()> {
    let source = match report.source {
        TradeSource::Notify => "notify",
        TradeSource::Query => "query",
    };
    Ok(sqlx::query(
        "INSERT INTO wechat_notifies (notify_id, source, out_trade_no, event_type, trade_state, outcome, raw)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&report.report_id)
    .bind(source)
    .bind(&report.trade.out_trade_no)
    .bind(&report.event_type)
    .bind(trade_state)
    .bind(outcome)
    .bind(&report.raw)
    .execute(tx)
    .await
    .map(drop)?)
}

/// A report WeChat does not stand behind (its signature does not verify, or WeChat has no such
/// trade): recorded with an alert, never settled.
pub async fn record_unconfirmed(pool: &PgPool, report: &TradeReported, why: &str) -> Result<()> {
    let mut tx = pool.begin().await?;
    let order_no: Option<String> = sqlx::query_scalar("SELECT order_no FROM payments WHERE pay_no = $1")
        .bind(&report.trade.out_trade_no)
        .fetch_optional(&mut *tx)
        .await?;
    let raised = Alert::new(AlertKind::UnconfirmedReport, why);
    alert(&mut tx, &raised, order_no.as_deref(), Some(&report.trade.out_trade_no)).await?;
    record_report(&mut tx, report, "UNCONFIRMED", "alert").await?;
    Ok(tx.commit().await?)
}

/// The state of a WeChat payment, if it exists.
pub async fn payment_status(pool: &PgPool, pay_no: &str) -> Result<Option<PaymentStatus>> {
    Ok(sqlx::query_scalar("SELECT status FROM payments WHERE pay_no = $1 AND method = 'wechat'")
        .bind(pay_no)
        .fetch_optional(pool)
        .await?)
}

/// The sign type a v2 notify must be verified with: its payment's (None for v3, or a payment
/// created before sign types were kept, or one we do not know: the configured type then).
pub async fn notify_sign_type(pool: &PgPool, notify: &SignedNotify) -> Result<Option<SignType>> {
    let Some(out_trade_no) = notify.v2_out_trade_no() else { return Ok(None) };
    let sign_type: Option<Option<String>> =
        sqlx::query_scalar("SELECT sign_type FROM payments WHERE pay_no = $1 AND method = 'wechat'")
            .bind(out_trade_no)
            .fetch_optional(pool)
            .await?;
    Ok(sign_type.flatten().as_deref().and_then(SignType::parse))
}

pub(super) async fn alert(
    conn: &mut PgConnection,
    alert: &Alert,
    order_no: Option<&str>,
    pay_no: Option<&str>,
) -> Result<()> {
    Ok(sqlx::query("INSERT INTO payment_alerts (kind, order_no, pay_no, detail) VALUES ($1, $2, $3, $4)")
        .bind(alert.kind.as_str())
        .bind(order_no)
        .bind(pay_no)
        .bind(&alert.detail)
        .execute(conn)
        .await
        .map(drop)?)
}

/// The alerts recorded for an order (operators, tests).
pub async fn alerts(pool: &PgPool, order_no: &str) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as("SELECT kind, detail FROM payment_alerts WHERE order_no = $1 ORDER BY id")
        .bind(order_no)
        .fetch_all(pool)
        .await?)
}
