//! Operator routes (`/admin/v1/…`), behind an operator token (`payctl token --operator NAME`);
//! a user's token is refused with FORBIDDEN, and every read is logged with the operator's name.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

use super::extract::{Json, Operator};
use super::fields::{check_order_no, payment_amount};
use super::payment::payment_details;
use super::respond::{ok, rfc3339};
use super::{ApiError, AppState, Result};
use crate::domain::PayType;
use crate::store;
use crate::store::refunds::{RefundRequest, RefundView, Refunded};
use serde::Deserialize;

/// GET /admin/v1/orders/{orderNo}: an order, whoever's, with every payment (and part) and every
/// alert raised about it.
async fn order(
    State(app): State<AppState>,
    Operator(operator): Operator,
    Path(order_no): Path<String>,
) -> Result<Response> {
    check_order_no(&order_no)?;
    let order = store::orders::find(&app.db, &order_no).await?.ok_or_else(|| ApiError::not_found("order"))?;
    let alerts = store::wechat::alerts(&app.db, &order_no).await?;
    tracing::info!(operator, order_no, "operator read an order");
    Ok(ok(
        "ok",
        json!({
            "order_no": order.order_no,
            "user_id": order.user_id,
            "status": order.status,
            "amount": order.amount,
            "pay_type": order.pay_type.map(PayType::name),
            "pay_no": order.pay_no,
            "paid_at": order.paid_at.map(rfc3339),
            "refunded": order.refunded,
            "expires_at": rfc3339(order.expires_at),
            "payments": payment_details(&order),
            "alerts": alerts.into_iter().map(|(kind, detail)| json!({ "kind": kind, "detail": detail })).collect::<Vec<_>>(),
        }),
    ))
}

#[derive(Deserialize)]
struct NewRefund {
    refund_no: String,
    /// Missing: what is left of the order.
    #[serde(default)]
    amount: Option<String>,
    reason: String,
}

/// POST /admin/v1/orders/{orderNo}/refunds: gives (part of) a paid order back, idempotent by
/// `refund_no`.
async fn refund(
    State(app): State<AppState>,
    Operator(operator): Operator,
    Path(order_no): Path<String>,
    Json(body): Json<NewRefund>,
) -> Result<Response> {
    check_order_no(&order_no)?;
    let valid_no = (1..=64).contains(&body.refund_no.len())
        && body.refund_no.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid_no {
        return Err(ApiError::validation("refund_no must be 1 to 64 letters, digits, '_' or '-'"));
    }
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 200 {
        return Err(ApiError::validation("reason must say why, in at most 200 characters"));
    }
    let amount = match &body.amount {
        Some(raw) => Some(payment_amount(&app, "amount", raw)?),
        None => None,
    };
    let request =
        RefundRequest { order_no: &order_no, refund_no: &body.refund_no, amount, reason, operator: &operator };
    match store::refunds::create(&app.db, &request).await? {
        Refunded::Made(made) => {
            tracing::info!(operator, order_no, refund_no = %made.refund_no, amount = %made.amount, reason, "refund made");
            Ok(ok("refund made", refund_json(&made)))
        }
        Refunded::Again(earlier) => Ok(ok("this refund was made before", refund_json(&earlier))),
        Refunded::Refused(refusal) => {
            tracing::info!(operator, order_no, refund_no = %body.refund_no, code = refusal.code.as_str(), reason = %refusal.message, "refund refused");
            Err(refusal.into())
        }
    }
}

/// GET /admin/v1/orders/{orderNo}/refunds: the order's refunds, oldest first.
async fn refunds(
    State(app): State<AppState>,
    Operator(operator): Operator,
    Path(order_no): Path<String>,
) -> Result<Response> {
    check_order_no(&order_no)?;
    tracing::info!(operator, order_no, "operator read an order's refunds");
    store::orders::find(&app.db, &order_no).await?.ok_or_else(|| ApiError::not_found("order"))?;
    let refunds = store::refunds::list(&app.db, &order_no).await?;
    Ok(ok("ok", json!({ "order_no": order_no, "refunds": refunds.iter().map(refund_json).collect::<Vec<_>>() })))
}

fn refund_json(r: &RefundView) -> serde_json::Value {
    json!({
        "refund_no": r.refund_no,
        "order_no": r.order_no,
        "amount": r.amount,
        "reason": r.reason,
        "operator": r.operator,
        "status": r.status,
        "created_at": rfc3339(r.created_at),
        "parts": r.parts.iter().map(|p| json!({
            "part_no": p.part_no, "pay_no": p.pay_no, "method": p.method.as_str(), "amount": p.amount,
            "asset_amount": p.asset_amount, "status": p.status,
        })).collect::<Vec<_>>(),
    })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/orders/{order_no}", get(order))
        .route("/admin/v1/orders/{order_no}/refunds", get(refunds).post(refund))
}
