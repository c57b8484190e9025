//! Paying with balance, integral or money2 (validated here, settled by the pay-worker through
//! `pay_call`), and reading a payment's status.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::extract::{AuthUser, Json};
use super::fields::{check_order_no, parse_money, payment_amount};
use super::limits::{self, ClientIp, Kind};
use super::respond::{ok, rfc3339};
use super::{ApiError, AppState, RequestId, Result, pay_call};
use crate::channel_sync::{self, Closing};
use crate::domain::Code;
use crate::domain::{Money, OrderStatus, PayMethod, PayType};
use crate::mq::messages::{AssetPayRequested, PayRequested};
use crate::password::{BALANCE_TERMS, SealedFor};
use crate::store::orders::{OrderView, PaymentDetail};
use crate::store::{self, wechat::Cancelled};

#[derive(Deserialize)]
struct BalancePay {
    order_no: String,
    amount: String,
    /// Needed unless `pay.balance.require_password` is off.
    #[serde(default)]
    pay_password: Option<String>,
}

#[derive(Deserialize)]
struct IntegralPay {
    order_no: String,
    integral_amount: String,
    money_amount: String,
}

#[derive(Deserialize)]
struct Money2Pay {
    order_no: String,
    amount: String,
}

async fn pay_balance(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    client: ClientIp,
    request_id: RequestId,
    Json(body): Json<BalancePay>,
) -> Result<Response> {
    limits::check(&app, Kind::Pay, user_id, client).await?;
    check_order_no(&body.order_no)?;
    let amount = payment_amount(&app, "amount", &body.amount)?;
    let sealed_for =
        SealedFor { user_id, request_id: request_id.0, order_no: &body.order_no, amount, terms: BALANCE_TERMS };
    let sealed = seal_password(&app, body.pay_password.as_deref(), sealed_for)?;
    submit(&app, request_id, user_id, body.order_no, PayMethod::Balance, amount, amount, sealed).await
}

async fn pay_integral(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    client: ClientIp,
    request_id: RequestId,
    Json(body): Json<IntegralPay>,
) -> Result<Response> {
    limits::check(&app, Kind::Pay, user_id, client).await?;
    check_order_no(&body.order_no)?;
    let money = payment_amount(&app, "money_amount", &body.money_amount)?;
    let points = parse_money("integral_amount", &body.integral_amount)?;
    app.pay.integral_rules().check(money, points).map_err(ApiError::validation)?;
    submit(&app, request_id, user_id, body.order_no, PayMethod::Integral, money, points, None).await
}

async fn pay_money2(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    client: ClientIp,
    request_id: RequestId,
    Json(body): Json<Money2Pay>,
) -> Result<Response> {
    limits::check(&app, Kind::Pay, user_id, client).await?;
    check_order_no(&body.order_no)?;
    let amount = payment_amount(&app, "amount", &body.amount)?;
    submit(&app, request_id, user_id, body.order_no, PayMethod::Money2, amount, amount, None).await
}

/// The pay password of a balance payment (or a mixed payment's balance part), sealed for this
/// request, its order and `amount`; None when `pay.balance.require_password` is off (a password
/// sent then is not checked).
pub(super) fn seal_password(app: &AppState, password: Option<&str>, sealed_for: SealedFor) -> Result<Option<String>> {
    if !app.pay.balance_needs_password() {
        return Ok(None);
    }
    let password = password.unwrap_or_default();
    if !crate::password::is_well_formed(password) {
        return Err(ApiError::validation("pay_password must be exactly 6 digits"));
    }
    Ok(Some(app.sealer.seal(&sealed_for, password)))
}

/// An internal-asset pay request.
#[allow(clippy::too_many_arguments)]
async fn submit(
    app: &AppState,
    request_id: RequestId,
    user_id: i64,
    order_no: String,
    method: PayMethod,
    amount: Money,
    asset_amount: Money,
    sealed_password: Option<String>,
) -> Result<Response> {
    app.pay.rule(method).check(method, amount)?;
    let request = PayRequested::Asset(AssetPayRequested {
        request_id: request_id.0,
        user_id,
        order_no,
        method,
        amount,
        asset_amount,
        sealed_password,
        requested_at: OffsetDateTime::now_utc(),
    });
    pay_call::pay_with_asset(app, request_id, &request).await
}

async fn status(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    client: ClientIp,
    Path(order_no): Path<String>,
) -> Result<Response> {
    limits::check(&app, Kind::Status, user_id, client).await?;
    check_order_no(&order_no)?;
    let order = crate::store::orders::find_for_user(&app.db, &order_no, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    let pay_status = match order.status {
        OrderStatus::Paid => "SUCCESS",
        OrderStatus::PartiallyRefunded => "PARTIALLY_REFUNDED",
        OrderStatus::Refunded => "REFUNDED",
        OrderStatus::Closed => "CLOSED",
        OrderStatus::Paying => {
            // A WeChat payment waiting too long: ask WeChat, in case its notify was lost.
            if let Some(wechat) = &app.wechat {
                channel_sync::sync_status(&app.db, &app.cache, wechat, app.wechat_query_after, &order_no).await;
            }
            "PAYING"
        }
        OrderStatus::Unpaid if order.expires_at <= OffsetDateTime::now_utc() => "CLOSED",
        OrderStatus::Unpaid => "PENDING",
    };
    let details = payment_details(&order);
    // The channel's number of the payment that settled the order (its WeChat part, for a mixed
    // payment), as on the payer's bill.
    let settled_it = |p: &PaymentDetail| match order.pay_type {
        Some(PayType::Single(method)) => p.method == method,
        Some(PayType::Mixed) => p.mixed_no.is_some() && p.mixed_no == order.pay_no,
        None => false,
    };
    let transaction_id = order
        .payments
        .iter()
        .filter(|p| p.status.settled() && order.status.was_paid())
        .find(|p| settled_it(p) && p.third_party_no.is_some())
        .and_then(|p| p.third_party_no.clone());
    // Why an unpaid order is still unpaid, when a pay request of this user was refused (a
    // request answered 202 never saw its refusal). Best effort: Redis being away hides it.
    let last_refusal = if matches!(order.status, OrderStatus::Unpaid | OrderStatus::Paying) {
        match app.cache.last_refusal(&order.order_no, user_id).await {
            Ok(refusal) => refusal.map(|r| json!({ "code": r.code.as_str(), "msg": r.message })),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the last refusal");
                None
            }
        }
    } else {
        None
    };
    Ok(ok(
        "ok",
        json!({
            "order_no": order.order_no,
            "pay_status": pay_status,
            "pay_type": order.pay_type.map(PayType::name),
            "pay_amount": order.amount,
            "pay_time": order.paid_at.map(rfc3339),
            "refunded_amount": order.refunded,
            "pay_no": order.pay_no,
            "transaction_id": transaction_id,
            "expires_at": rfc3339(order.expires_at),
            "payment_details": details,
            "last_refusal": last_refusal,
        }),
    ))
}

/// Every payment of an order, and every part of a mixed one, as `payment_details` lists them.
pub(super) fn payment_details(order: &OrderView) -> Vec<Value> {
    order
        .payments
        .iter()
        .map(|p| {
            let mut detail =
                json!({ "method": p.method.as_str(), "amount": p.amount, "status": p.status, "pay_no": p.pay_no });
            if p.method == PayMethod::Integral {
                detail["points"] = json!(p.asset_amount);
            }
            if let Some(no) = &p.third_party_no {
                detail["transaction_id"] = json!(no);
            }
            detail
        })
        .collect()
}

/// POST /api/v1/payment/{orderNo}/cancel: the owner gives up an unpaid order. A WeChat payment
/// it waits for is closed at WeChat first (if WeChat took the money meanwhile, the order is not
/// cancelled: it settles as paid); a mixed payment's held parts go back to their assets.
async fn cancel(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    client: ClientIp,
    Path(order_no): Path<String>,
) -> Result<Response> {
    limits::check(&app, Kind::Create, user_id, client).await?;
    check_order_no(&order_no)?;
    let mut checked: Option<String> = None;
    // Twice at most: the WeChat payment it waits for is closed at WeChat, then the order here.
    // A third round would mean a new WeChat payment began in between: the payer is still paying.
    for _ in 0..2 {
        match store::wechat::cancel(&app.db, &order_no, user_id, checked.as_deref()).await? {
            Cancelled::Closed | Cancelled::AlreadyClosed => {
                tracing::info!(order_no, user_id, "order cancelled by its owner");
                return Ok(ok("order cancelled", json!({ "order_no": order_no, "status": "CLOSED" })));
            }
            Cancelled::Refused(refusal) => return Err(refusal.into()),
            Cancelled::Unchecked(pay_no) => {
                // The trade must be closed at WeChat before anything the order holds goes back:
                // whoever has its pay params could still pay it.
                let Some(wechat) = &app.wechat else {
                    return Err(ApiError::new(
                        Code::SystemError,
                        "WeChat Pay is not configured here, so its payment cannot be closed; the order closes when its pay time runs out",
                    ));
                };
                match channel_sync::close_trade(wechat, &app.db, &pay_no).await {
                    Ok(Closing::Closed) => {}
                    Ok(Closing::Paid) => {
                        return Err(ApiError::new(
                            Code::OrderPaid,
                            "WeChat took the payment before the cancel; the order shows as paid in a moment",
                        ));
                    }
                    Err(e) => return Err(ApiError::unavailable(&e)),
                }
                checked = Some(pay_no);
            }
        }
    }
    Err(ApiError::new(Code::OrderPaying, "a new WeChat payment of this order began meanwhile; cancel again"))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/payment/balance/pay", post(pay_balance))
        .route("/api/v1/payment/integral/pay", post(pay_integral))
        .route("/api/v1/payment/money2/pay", post(pay_money2))
        .route("/api/v1/payment/{order_no}/status", get(status))
        .route("/api/v1/payment/{order_no}/cancel", post(cancel))
}
