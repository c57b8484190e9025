//! WeChat payments in the database: beginning one (or finding the one to reuse), keeping its
//! prepay, settling it from a reported trade, and closing it when the order's pay time runs out.

use std::time::Duration;

use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::channel::{Prepaid, Trade, TradeType};
use crate::domain::payment::Refusal;
use crate::domain::{Code, GoodsKind, Money, OrderStatus, PayMethod};
use crate::mq::messages::{OrderPaid, TradeReported, TradeSource, WechatCreateRequested};
use crate::mq::topology;

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
    pub description: String,
    pub openid: Option<String>,
    pub client_ip: String,
}

type OrderRow = (i64, Decimal, String, bool, OffsetDateTime);
type PaymentRow =
    (String, String, Option<String>, Option<serde_json::Value>, bool, Option<String>, Option<String>, Option<String>);

/// Checks the order and finds or creates its WeChat payment, in one transaction.
pub async fn begin(
    pool: &PgPool,
    request: &WechatCreateRequested,
    api_version: &str,
    prepay_valid: Duration,
) -> Result<Begun, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let order: Option<OrderRow> = sqlx::query_as(
        "SELECT user_id, amount, status, expires_at <= now(), expires_at FROM orders WHERE order_no = $1 FOR UPDATE",
    )
    .bind(&request.order_no)
    .fetch_optional(&mut *tx)
    .await?;
    let refuse = |code, message: &str| Ok(Begun::Refused(Refusal::new(code, message)));
    let Some((user_id, amount, status, expired, expires_at)) = order.filter(|o| o.0 == request.user_id) else {
        return refuse(Code::NotFound, "order not found");
    };
    match OrderStatus::parse(&status) {
        Some(OrderStatus::Paid) => return refuse(Code::OrderPaid, "order already paid"),
        Some(OrderStatus::Closed) => return refuse(Code::OrderClosed, "order is closed"),
        _ if expired => return refuse(Code::OrderClosed, "order's pay time has run out; place a new order"),
        _ => {}
    }
    if amount != request.amount.as_decimal() {
        let message = format!(
            "amount {} is not the order amount {}",
            request.amount,
            Money::from_decimal(amount).unwrap_or_default()
        );
        return refuse(Code::AmountMismatch, &message);
    }
    let existing: Option<PaymentRow> = sqlx::query_as(
        "SELECT pay_no, status, trade_type, prepaid, coalesce(prepaid_at > now() - make_interval(secs => $2), false),
                description, openid, client_ip
         FROM payments WHERE order_no = $1 AND method = 'wechat'",
    )
    .bind(&request.order_no)
    .bind(prepay_valid.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    let begun = match existing {
        None => {
            let pay_no: String = sqlx::query_scalar(
                "INSERT INTO payments (pay_no, order_no, user_id, method, amount, asset_amount, status, request_id,
                                       trade_type, openid, client_ip, description, api_version)
                 VALUES ('WX' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS') || lpad(nextval('pay_no_seq')::text, 10, '0'),
                         $1, $2, 'wechat', $3, $3, 'PAYING', $4, $5, $6, $7, $8, $9)
                 RETURNING pay_no",
            )
            .bind(&request.order_no)
            .bind(user_id)
            .bind(amount)
            .bind(request.request_id)
            .bind(request.trade_type.as_str())
            .bind(&request.openid)
            .bind(&request.client_ip)
            .bind(&request.description)
            .bind(api_version)
            .fetch_one(&mut *tx)
            .await?;
            let details = PrepayDetails {
                description: request.description.clone(),
                openid: request.openid.clone(),
                client_ip: request.client_ip.clone(),
            };
            Begun::Prepay { pay_no, expires_at, details }
        }
        Some((pay_no, status, trade_type, prepaid, fresh, description, openid, client_ip)) => {
            if status != "PAYING" {
                return refuse(Code::OrderClosed, "this order's WeChat payment was closed; place a new order");
            }
            if trade_type.as_deref() != Some(request.trade_type.as_str()) {
                let message = format!(
                    "this order is being paid with {}; retry with that trade_type",
                    trade_type.unwrap_or_default()
                );
                return refuse(Code::Validation, &message);
            }
            // A JSAPI prepay is bound to the payer's openid.
            if request.trade_type == TradeType::Jsapi && openid != request.openid {
                return refuse(Code::Validation, "this order's WeChat payment belongs to another payer (openid)");
            }
            match prepaid.filter(|_| fresh).and_then(|p| serde_json::from_value::<Prepaid>(p).ok()) {
                Some(prepaid) => Begun::Reuse { pay_no, prepaid },
                None => {
                    let details = PrepayDetails {
                        description: description.unwrap_or_else(|| request.description.clone()),
                        openid,
                        client_ip: client_ip.unwrap_or_else(|| request.client_ip.clone()),
                    };
                    Begun::Prepay { pay_no, expires_at, details }
                }
            }
        }
    };
    tx.commit().await?;
    Ok(begun)
}

/// Keeps the channel's prepay answer for reuse.
pub async fn record_prepaid(pool: &PgPool, pay_no: &str, prepaid: &Prepaid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payments SET prepaid = $2, prepaid_at = now() WHERE pay_no = $1")
        .bind(pay_no)
        .bind(serde_json::to_value(prepaid).expect("serialises"))
        .execute(pool)
        .await
        .map(drop)
}

/// The WeChat payment of an order, as the status and retry endpoints need it.
#[derive(Debug, Clone)]
pub struct WechatPayment {
    pub pay_no: String,
    pub status: String,
    pub trade_type: Option<TradeType>,
    pub openid: Option<String>,
    pub client_ip: Option<String>,
    pub description: Option<String>,
    pub amount: Money,
    /// How long it has been waiting for the payer.
    pub age: Duration,
}

pub async fn find(pool: &PgPool, order_no: &str) -> Result<Option<WechatPayment>, sqlx::Error> {
    type Row = (String, String, Option<String>, Option<String>, Option<String>, Option<String>, Decimal, f64);
    let row: Option<Row> = sqlx::query_as(
        "SELECT pay_no, status, trade_type, openid, client_ip, description, amount,
                extract(epoch FROM now() - created_at)::float8
         FROM payments WHERE order_no = $1 AND method = 'wechat'",
    )
    .bind(order_no)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(pay_no, status, trade_type, openid, client_ip, description, amount, age)| WechatPayment {
        pay_no,
        status,
        trade_type: trade_type.as_deref().and_then(TradeType::parse),
        openid,
        client_ip,
        description,
        amount: Money::from_decimal(amount).expect("NUMERIC(12,2)"),
        age: Duration::from_secs_f64(age.max(0.0)),
    }))
}

/// Queues a trade our own query found, for the notify-worker to settle (through the outbox, so
/// it leaves only if the caller's transaction commits).
pub async fn enqueue_reported(conn: &mut PgConnection, trade: &Trade) -> Result<(), sqlx::Error> {
    let report = TradeReported {
        source: TradeSource::Query,
        report_id: format!("query:{}:{}", trade.out_trade_no, Uuid::now_v7()),
        event_type: format!("QUERY.{}", trade.trade_state.as_str()),
        trade: trade.clone(),
        raw: serde_json::to_string(trade).expect("serialises"),
    };
    sqlx::query("INSERT INTO outbox (message_id, queue, kind, payload) VALUES ($1, $2, 'trade_reported', $3)")
        .bind(Uuid::now_v7())
        .bind(topology::WECHAT_NOTIFY)
        .bind(serde_json::to_value(&report).expect("serialises"))
        .execute(conn)
        .await
        .map(drop)
}

/// `enqueue_reported` in a transaction of its own.
pub async fn report_trade(pool: &PgPool, trade: &Trade) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    enqueue_reported(&mut conn, trade).await
}

/// Closes an unpaid order whose pay time ran out, and its WeChat payment if one is waiting.
pub async fn expire(pool: &PgPool, order_no: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let closed = sqlx::query("UPDATE orders SET status = 'CLOSED' WHERE order_no = $1 AND status = 'UNPAID'")
        .bind(order_no)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    sqlx::query(
        "UPDATE payments SET status = 'CLOSED' WHERE order_no = $1 AND method = 'wechat' AND status = 'PAYING'",
    )
    .bind(order_no)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(closed)
}

/// An order as the timeout check sees it: its state, whether its pay time has run out, and its
/// waiting WeChat payment's number.
pub async fn timeout_view(
    pool: &PgPool,
    order_no: &str,
) -> Result<Option<(OrderStatus, bool, Option<String>)>, sqlx::Error> {
    let row: Option<(String, bool, Option<String>)> = sqlx::query_as(
        "SELECT o.status, o.expires_at <= now(), p.pay_no
         FROM orders o LEFT JOIN payments p ON p.order_no = o.order_no AND p.method = 'wechat' AND p.status = 'PAYING'
         WHERE o.order_no = $1",
    )
    .bind(order_no)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(status, due, pay_no)| (OrderStatus::parse(&status).expect("orders.status CHECK"), due, pay_no)))
}

/// What the notify-worker made of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The payment and its order are now paid.
    Settled,
    /// Already settled by an earlier report: nothing changed.
    Duplicate,
    /// The trade was closed at WeChat; recorded on the payment.
    RecordedFailure,
    /// The trade is still waiting for the payer (or an attempt failed and it can be paid again).
    Pending,
    /// Must not settle; an alert was recorded.
    Alert(String),
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

type SettleRow = (String, String, Decimal, i64, String, String, Option<String>, i64, String, i32);

/// Settles a WeChat payment from a reported trade, in one transaction: the trade must name a
/// payment of ours, our appid and mchid, and the order's amount; then the payment and order
/// are marked paid with the transaction id and the raw report, with profit_pay and the
/// order-paid outbox row. Any number of reports of one trade change the state once.
pub async fn settle(
    pool: &PgPool,
    report: &TradeReported,
    appid: &str,
    mchid: &str,
) -> Result<Settlement, sqlx::Error> {
    let trade = &report.trade;
    let mut tx = pool.begin().await?;
    let row: Option<SettleRow> = sqlx::query_as(
        "SELECT p.pay_no, p.status, p.amount, p.user_id, o.order_no, o.status, o.pay_no, o.goods_id, o.kind, o.num
         FROM payments p JOIN orders o ON o.order_no = p.order_no
         WHERE p.pay_no = $1 AND p.method = 'wechat'
         FOR UPDATE OF p, o",
    )
    .bind(&trade.out_trade_no)
    .fetch_optional(&mut *tx)
    .await?;

    let settlement = match &row {
        None => Settlement::Alert(format!("unknown_trade: no WeChat payment {}", trade.out_trade_no)),
        Some(_) if trade.appid != appid || trade.mchid != mchid => Settlement::Alert(format!(
            "merchant_mismatch: the trade names appid {} mchid {}, we are {appid} {mchid}",
            trade.appid, trade.mchid
        )),
        Some((pay_no, status, amount, user_id, order_no, order_status, order_pay_no, goods_id, kind, num)) => {
            let amount = Money::from_decimal(*amount).expect("NUMERIC(12,2)");
            if trade.trade_state.is_paid() {
                if status == "SUCCESS" {
                    Settlement::Duplicate
                } else if trade.total_fen != Some(amount.to_fen()) {
                    Settlement::Alert(format!(
                        "amount_mismatch: WeChat reports {:?} fen, the order is {} fen",
                        trade.total_fen,
                        amount.to_fen()
                    ))
                } else {
                    let paid_at = trade.success_time.unwrap_or_else(OffsetDateTime::now_utc);
                    sqlx::query(
                        "UPDATE payments SET status = 'SUCCESS', third_party_no = $2, paid_at = $3, notify_raw = $4 WHERE pay_no = $1",
                    )
                    .bind(pay_no)
                    .bind(&trade.transaction_id)
                    .bind(paid_at)
                    .bind(&report.raw)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO profit_pay (user_id, order_no, pay_no, change_money, content, pay_type) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(user_id)
                    .bind(order_no)
                    .bind(pay_no)
                    .bind(-amount.as_decimal())
                    .bind(PayMethod::Wechat.content())
                    .bind(PayMethod::Wechat.pay_type())
                    .execute(&mut *tx)
                    .await?;
                    if order_status == "PAID" {
                        // Paid twice (another method settled it first): the money is real, so
                        // the payment stands and an operator refunds one of them.
                        let detail = format!(
                            "double_payment: order already paid by {}",
                            order_pay_no.clone().unwrap_or_default()
                        );
                        alert(&mut tx, "double_payment", Some(order_no), Some(pay_no), &detail).await?;
                    } else {
                        if order_status == "CLOSED" {
                            let detail =
                                "paid_after_close: WeChat took the money after the order closed; it is paid now";
                            alert(&mut tx, "paid_after_close", Some(order_no), Some(pay_no), detail).await?;
                        }
                        sqlx::query("UPDATE orders SET status = 'PAID', pay_type = 'wechat', pay_no = $2, paid_at = $3 WHERE order_no = $1")
                            .bind(order_no)
                            .bind(pay_no)
                            .bind(paid_at)
                            .execute(&mut *tx)
                            .await?;
                        let event = OrderPaid {
                            order_no: order_no.clone(),
                            user_id: *user_id,
                            goods_id: *goods_id,
                            kind: GoodsKind::parse(kind).expect("orders.kind comes from goods.kind"),
                            num: *num,
                            amount,
                            pay_no: pay_no.clone(),
                            method: PayMethod::Wechat,
                            paid_at,
                        };
                        sqlx::query(
                            "INSERT INTO outbox (message_id, queue, kind, payload) VALUES ($1, $2, 'order_paid', $3)",
                        )
                        .bind(Uuid::now_v7())
                        .bind(topology::ORDER_FOLLOWUP)
                        .bind(serde_json::to_value(&event).expect("serialises"))
                        .execute(&mut *tx)
                        .await?;
                    }
                    Settlement::Settled
                }
            } else if trade.trade_state.is_closed() {
                // A failed attempt (PAYERROR) leaves the order payable: the payment stays PAYING,
                // and the expiry check closes it.
                sqlx::query(
                    "UPDATE payments SET status = 'CLOSED', notify_raw = $2 WHERE pay_no = $1 AND status = 'PAYING'",
                )
                .bind(pay_no)
                .bind(&report.raw)
                .execute(&mut *tx)
                .await?;
                Settlement::RecordedFailure
            } else {
                Settlement::Pending
            }
        }
    };
    let order_no = row.as_ref().map(|r| r.4.as_str());
    if let Settlement::Alert(detail) = &settlement {
        let kind = detail.split(':').next().unwrap_or("alert");
        alert(&mut tx, kind, order_no, Some(&trade.out_trade_no), detail).await?;
    }
    let source = match report.source {
        TradeSource::Notify => "notify",
        TradeSource::Query => "query",
    };
    sqlx::query(
        "INSERT INTO wechat_notifies (notify_id, source, out_trade_no, event_type, trade_state, outcome, raw)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&report.report_id)
    .bind(source)
    .bind(&trade.out_trade_no)
    .bind(&report.event_type)
    .bind(trade.trade_state.as_str())
    .bind(settlement.outcome())
    .bind(&report.raw)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(settlement)
}

async fn alert(
    conn: &mut PgConnection,
    kind: &str,
    order_no: Option<&str>,
    pay_no: Option<&str>,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO payment_alerts (kind, order_no, pay_no, detail) VALUES ($1, $2, $3, $4)")
        .bind(kind)
        .bind(order_no)
        .bind(pay_no)
        .bind(detail)
        .execute(conn)
        .await
        .map(drop)
}

/// The alerts recorded for an order (operators, tests).
pub async fn alerts(pool: &PgPool, order_no: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT kind, detail FROM payment_alerts WHERE order_no = $1 ORDER BY id")
        .bind(order_no)
        .fetch_all(pool)
        .await
}
