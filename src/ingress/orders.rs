//! POST /api/v1/orders: an order of `num` × goods at the server's price.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::extract::{AuthUser, Json};
use super::fields::check_order_no;
use super::limits::{self, ClientIp, Kind};
use super::payment::payment_details;
use super::respond::{ok, rfc3339};
use super::{ApiError, AppState, Result};
use crate::domain::PayType;
use crate::store;
use crate::store::orders::{CreateOrderError, create_order};

/// The most tickets one order may hold.
const MAX_NUM: i64 = 1000;

#[derive(Deserialize)]
struct CreateOrder {
    goods_id: i64,
    num: i64,
}

async fn create(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    client: ClientIp,
    Json(body): Json<CreateOrder>,
) -> Result<Response> {
    limits::check(&app, Kind::Orders, user_id, client).await?;
    if !(1..=MAX_NUM).contains(&body.num) {
        return Err(ApiError::validation(format!("num must be between 1 and {MAX_NUM}")));
    }
    let ttl = Duration::from_secs(app.pay.order_ttl_secs);
    let order = create_order(&app.db, user_id, body.goods_id, body.num as i32, ttl).await.map_err(|e| match e {
        CreateOrderError::GoodsNotFound => ApiError::not_found("goods"),
        CreateOrderError::UserNotFound => ApiError::unauthorized("your account does not exist; sign in again"),
        CreateOrderError::TooLarge => ApiError::validation("order amount too large"),
        CreateOrderError::Db(e) => e.into(),
    })?;
    tracing::info!(user_id, order_no = %order.order_no, amount = %order.amount, "order created");
    Ok(ok(
        "order created",
        json!({
            "order_no": order.order_no,
            "amount": order.amount,
            "status": "UNPAID",
            "expires_at": rfc3339(order.expires_at),
        }),
    ))
}

/// GET /api/v1/orders/{orderNo}: the owner's order with its payments and, once it is served,
/// its draws (`followup` null: not served yet).
async fn show(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    client: ClientIp,
    Path(order_no): Path<String>,
) -> Result<Response> {
    limits::check(&app, Kind::Status, user_id, client).await?;
    check_order_no(&order_no)?;
    let order =
        store::orders::find_for_user(&app.db, &order_no, user_id).await?.ok_or_else(|| ApiError::not_found("order"))?;
    let (followup, draws) = store::followups::of_order(&app.db, &order_no).await?;
    Ok(ok(
        "ok",
        json!({
            "order_no": order.order_no,
            "kind": order.kind,
            "goods_id": order.goods_id,
            "num": order.num,
            "amount": order.amount,
            "status": order.status,
            "pay_type": order.pay_type.map(PayType::name),
            "pay_no": order.pay_no,
            "paid_at": order.paid_at.map(rfc3339),
            "refunded_amount": order.refunded,
            "created_at": rfc3339(order.created_at),
            "expires_at": rfc3339(order.expires_at),
            "payment_details": payment_details(&order),
            "followup": followup.map(|f| json!({
                "outcome": f.outcome, "refund_no": f.refund_no, "detail": f.detail, "done_at": rfc3339(f.done_at),
            })),
            "draws": draws.iter().map(|d| json!({
                "position": d.position, "prize": d.prize, "drawn_at": rfc3339(d.drawn_at),
            })).collect::<Vec<_>>(),
        }),
    ))
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/orders", post(create)).route("/api/v1/orders/{order_no}", get(show))
}
