//! Operator routes (`/admin/v1/…`), behind an operator token (`payctl token --operator NAME`);
//! a user's token is refused with FORBIDDEN, and every read is logged with the operator's name.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

use super::extract::Operator;
use super::fields::check_order_no;
use super::payment::payment_details;
use super::respond::{ok, rfc3339};
use super::{ApiError, AppState, Result};
use crate::domain::PayType;
use crate::store;

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
            "expires_at": rfc3339(order.expires_at),
            "payments": payment_details(&order),
            "alerts": alerts.into_iter().map(|(kind, detail)| json!({ "kind": kind, "detail": detail })).collect::<Vec<_>>(),
        }),
    ))
}

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/v1/orders/{order_no}", get(order))
}
