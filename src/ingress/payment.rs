//! Paying with balance, integral or money2, and reading a payment's status.
//!
//! A pay request is validated here, published to `pay.requests` with a publisher confirm, and
//! answered with the pay-worker's reply; if none comes within `ingress.reply_timeout_ms` the
//! answer is 202 PROCESSING, the request stays queued, and the worker still settles it.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::extract::{AuthUser, Json};
use super::limits::{self, ClientIp, Kind};
use super::{ApiError, AppState, RequestId, Result, error::ok};
use crate::domain::payment::Receipt;
use crate::domain::{Code, Money, MoneyError, OrderStatus, PayMethod, PaymentStatus};
use crate::mq::MqError;
use crate::mq::envelope::traceparent_for;
use crate::mq::messages::{AssetPayRequested, PayReplied, PayRequested};
use crate::mq::rpc::{Called, Outgoing};
use crate::password::SealedFor;

#[derive(Deserialize)]
struct BalancePay {
    order_no: String,
    amount: String,
    pay_password: String,
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
    if !crate::password::is_well_formed(&body.pay_password) {
        return Err(ApiError::validation("pay_password must be exactly 6 digits"));
    }
    let sealed_for = SealedFor { user_id, request_id: request_id.0, order_no: &body.order_no, amount };
    let sealed = app.sealer.seal(&sealed_for, &body.pay_password);
    submit(&app, request_id, user_id, body.order_no, PayMethod::Balance, amount, amount, Some(sealed)).await
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
    let (min, max, rate) = (app.pay.integral_min, app.pay.integral_max_per_order, app.pay.integral_rate);
    if points.to_fen() % 100 != 0 {
        return Err(ApiError::validation("integral_amount must be a whole number of points"));
    }
    if points < min || points > max {
        return Err(ApiError::validation(format!("integral_amount must be between {min} and {max} points per order")));
    }
    if money.checked_mul(i64::from(rate)) != Some(points) {
        return Err(ApiError::validation(format!(
            "integral_amount {points} is not money_amount {money} at {rate} points per yuan"
        )));
    }
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
    let request = PayRequested::Asset(AssetPayRequested {
        request_id: request_id.0,
        user_id,
        order_no: order_no.clone(),
        method,
        amount,
        asset_amount,
        sealed_password,
        requested_at: OffsetDateTime::now_utc(),
    });
    let reply = call_pay_worker(app, request_id, &order_no, &request).await?;
    match reply {
        Some(PayReplied::Paid(receipt)) => Ok(paid(&order_no, &receipt)),
        Some(PayReplied::Refused(refusal)) => Err(refusal.into()),
        Some(PayReplied::Prepaid(_)) => {
            Err(ApiError::internal(&"the pay-worker answered an asset payment with pay params"))
        }
        None => Ok(processing(&order_no)),
    }
}

/// Publishes a pay request and waits for the pay-worker's answer: None when it did not come in
/// time (the request is queued and will be handled; answer 202).
pub(super) async fn call_pay_worker(
    app: &AppState,
    RequestId(request_id): RequestId,
    order_no: &str,
    request: &PayRequested,
) -> Result<Option<PayReplied>> {
    let body = serde_json::to_vec(request).map_err(|e| ApiError::internal(&e))?;
    let message_id = request_id.to_string();
    let traceparent = traceparent_for(request_id);
    let out = Outgoing::event::<PayRequested>(&message_id, &traceparent, &body);
    match app.rpc.call(&out, app.reply_timeout).await {
        Ok(Called::Replied(reply)) => match serde_json::from_slice::<PayReplied>(&reply) {
            Ok(reply) => Ok(Some(reply)),
            Err(e) => {
                Err(ApiError::uncertain(&format_args!("unreadable reply from the pay-worker for {order_no}: {e}")))
            }
        },
        Ok(Called::TimedOut) => Ok(None),
        Err(e @ MqError::Unconfirmed(_)) => Err(ApiError::uncertain(&e)),
        Err(e) => Err(ApiError::unavailable(&e)),
    }
}

/// 200 with the seed's fields for the method.
fn paid(order_no: &str, receipt: &Receipt) -> Response {
    let (remaining_key, message) = match receipt.method {
        PayMethod::Balance => ("remaining_balance", "balance payment succeeded"),
        PayMethod::Integral => ("remaining_integral", "integral payment succeeded"),
        PayMethod::Money2 => ("remaining_money2", "money2 payment succeeded"),
        PayMethod::Wechat => ("remaining", "payment succeeded"),
    };
    let mut data = json!({
        "order_no": order_no,
        "pay_no": receipt.pay_no,
        "pay_time": rfc3339(receipt.pay_time),
        "pay_status": "SUCCESS",
    });
    data[remaining_key] = json!(receipt.remaining);
    ok(message, data)
}

/// 202: the request is safely queued but not settled yet.
pub(super) fn processing(order_no: &str) -> Response {
    let body = json!({
        "status": 1,
        "msg": "payment accepted and processing; poll status_url for the result",
        "code": "PROCESSING",
        "data": {
            "order_no": order_no,
            "pay_status": "PROCESSING",
            "status_url": format!("/api/v1/payment/{order_no}/status"),
        },
    });
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
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
        OrderStatus::Closed => "CLOSED",
        OrderStatus::Paying => {
            // A WeChat payment waiting too long: ask WeChat, in case its notify was lost.
            super::wechat::sync_status(&app, &order_no).await;
            "PAYING"
        }
        OrderStatus::Unpaid if order.expires_at <= OffsetDateTime::now_utc() => "CLOSED",
        OrderStatus::Unpaid => "PENDING",
    };
    let details: Vec<Value> = order
        .payments
        .iter()
        .map(|p| {
            let mut detail = json!({ "method": p.method.as_str(), "amount": p.amount, "status": p.status });
            if let Some(no) = &p.third_party_no {
                detail["transaction_id"] = json!(no);
            }
            detail
        })
        .collect();
    // The channel's number of the payment that settled the order, as on the payer's bill.
    let transaction_id = order
        .payments
        .iter()
        .find(|p| p.status == PaymentStatus::Success && order.pay_method == Some(p.method))
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
            "pay_type": order.pay_method.map(PayMethod::pay_type_name),
            "pay_amount": order.amount,
            "pay_time": order.paid_at.map(rfc3339),
            "pay_no": order.pay_no,
            "transaction_id": transaction_id,
            "expires_at": rfc3339(order.expires_at),
            "payment_details": details,
            "last_refusal": last_refusal,
        }),
    ))
}

/// An amount field of a pay request: positive, two decimals at most, within `pay.max_amount`.
pub(super) fn payment_amount(app: &AppState, field: &str, raw: &str) -> Result<Money> {
    let amount = parse_money(field, raw)?;
    if amount.is_zero() {
        return Err(ApiError::validation(format!("{field} must be above zero")));
    }
    if amount > app.pay.max_amount {
        return Err(ApiError::validation(format!("{field} exceeds the limit of {} per payment", app.pay.max_amount)));
    }
    Ok(amount)
}

fn parse_money(field: &str, raw: &str) -> Result<Money> {
    Money::parse(raw).map_err(|e| {
        ApiError::validation(match e {
            MoneyError::Malformed => format!("{field} must be an amount like \"10.00\""),
            MoneyError::TooPrecise => format!("{field} has more than two decimals"),
            MoneyError::Negative => format!("{field} must not be negative"),
            MoneyError::TooLarge => format!("{field} is too large"),
        })
    })
}

/// Order numbers are short and plain; anything else cannot name an order.
pub(super) fn check_order_no(order_no: &str) -> Result<()> {
    if order_no.is_empty() || order_no.len() > 64 || !order_no.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::new(Code::Validation, "order_no must be 1 to 64 letters or digits"));
    }
    Ok(())
}

/// `2024-01-01T12:00:00Z`, to the second, as seed 000 shows it.
pub(super) fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).expect("0 is a valid nanosecond");
    t.format(&time::format_description::well_known::Rfc3339).expect("a UTC time formats as RFC 3339")
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/payment/balance/pay", post(pay_balance))
        .route("/api/v1/payment/integral/pay", post(pay_integral))
        .route("/api/v1/payment/money2/pay", post(pay_money2))
        .route("/api/v1/payment/{order_no}/status", get(status))
}
