//! POST /api/v1/orders: an order of `num` × goods at the server's price.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use super::extract::{AuthUser, Json};
use super::limits::{self, ClientIp, Kind};
use super::respond::{ok, rfc3339};
use super::{ApiError, AppState, Result};
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

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/orders", post(create))
}
