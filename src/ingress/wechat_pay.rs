//! Paying with WeChat over HTTP: creating a payment (through the pay-worker, which calls
//! WeChat), and fresh pay params for an order still waiting for its WeChat payment.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::extract::{AuthUser, Json};
use super::fields::{check_order_no, payment_amount};
use super::limits::{self, ClientIp, Kind};
use super::respond::ok;
use super::{ApiError, AppState, RequestId, Result, pay_call};
use crate::channel::TradeType;
use crate::domain::{Code, OrderStatus, PayMethod};
use crate::mq::messages::{PayRequested, WechatCreateRequested, WechatPayer};

#[derive(Deserialize)]
struct CreateWechat {
    order_no: String,
    amount: String,
    /// Accepted for seed 000's body, not used: the payer's bill shows the goods' name.
    #[serde(default, rename = "description")]
    _description: Option<String>,
    #[serde(default)]
    openid: Option<String>,
    #[serde(default)]
    client_ip: Option<String>,
    #[serde(default)]
    trade_type: Option<String>,
}

async fn create(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    client: ClientIp,
    request_id: RequestId,
    Json(body): Json<CreateWechat>,
) -> Result<Response> {
    limits::check(&app, Kind::Create, user_id, client).await?;
    check_order_no(&body.order_no)?;
    let amount = payment_amount(&app, "amount", &body.amount)?;
    app.pay.rule(PayMethod::Wechat).check(PayMethod::Wechat, amount)?;
    let payer = payer(body.trade_type.as_deref(), body.openid, body.client_ip, client)?;
    let request = WechatCreateRequested {
        request_id: request_id.0,
        user_id,
        order_no: body.order_no.clone(),
        amount,
        trade_type: payer.trade_type,
        openid: payer.openid,
        client_ip: payer.client_ip,
        requested_at: OffsetDateTime::now_utc(),
    };
    pay_call::pay_with_wechat(&app, request_id, &PayRequested::WechatCreate(request), |prepaid| {
        let mut data = prepaid.pay_params;
        data["order_no"] = json!(prepaid.order_no);
        data["pay_no"] = json!(prepaid.pay_no);
        ok("WeChat payment created", data)
    })
    .await
}

/// Who pays with WeChat, from a create's (or a mixed payment's) fields: the trade type (JSAPI
/// unless named), the openid JSAPI needs, and the payer's address.
pub(super) fn payer(
    trade_type: Option<&str>,
    openid: Option<String>,
    client_ip: Option<String>,
    client: ClientIp,
) -> Result<WechatPayer> {
    let trade_type = match trade_type {
        None => TradeType::Jsapi,
        Some(t) => {
            TradeType::parse(t).ok_or_else(|| ApiError::validation("trade_type must be JSAPI, H5, NATIVE or APP"))?
        }
    };
    let openid = openid.filter(|o| !o.is_empty());
    if trade_type == TradeType::Jsapi && openid.is_none() {
        return Err(ApiError::validation("openid is required for JSAPI (mini-program) payments"));
    }
    if openid.as_deref().is_some_and(|o| !is_openid(o)) {
        return Err(ApiError::validation("openid must be 1 to 128 letters, digits, '_' or '-'"));
    }
    // The payer's address for WeChat: the one the mini-program sends, or the one the rate
    // limits see (`ClientIp`, which trusts `X-Forwarded-For` only as configured).
    let client_ip = client_ip.or_else(|| client.0.map(|ip| ip.to_string())).unwrap_or_else(|| "127.0.0.1".to_owned());
    if client_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(ApiError::validation("client_ip must be an IP address"));
    }
    Ok(WechatPayer { trade_type, openid, client_ip })
}

/// The shape of a WeChat openid (28 characters of base64url in practice). In production it
/// must come from the user's login (code2Session), not from what the client sends.
fn is_openid(openid: &str) -> bool {
    (1..=128).contains(&openid.len()) && openid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// POST /api/v1/payment/{orderNo}/retry: fresh pay params for an order still waiting to be paid
/// with WeChat (the prepay is reused while valid, re-signed with a new timestamp and nonce).
async fn retry(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    client: ClientIp,
    request_id: RequestId,
    Path(order_no): Path<String>,
) -> Result<Response> {
    limits::check(&app, Kind::Create, user_id, client).await?;
    check_order_no(&order_no)?;
    if !app.pay.wechat.enabled {
        return Err(ApiError::new(Code::MethodDisabled, "wechat payments are switched off"));
    }
    let order = crate::store::orders::find_for_user(&app.db, &order_no, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    match order.status {
        OrderStatus::Paid | OrderStatus::PartiallyRefunded | OrderStatus::Refunded => {
            let pay_no = order.pay_no.clone().map(|p| json!({ "pay_no": p })).unwrap_or_default();
            return Err(ApiError::new(Code::OrderPaid, "order already paid").with_data(pay_no));
        }
        OrderStatus::Closed => return Err(ApiError::new(Code::OrderClosed, "order is closed")),
        OrderStatus::Unpaid | OrderStatus::Paying => {}
    }
    let payment = crate::store::wechat::find(&app.db, &order_no).await?.ok_or_else(|| {
        ApiError::validation("this order has no WeChat payment to retry; create one with /api/v1/payment/wechat/create")
    })?;
    let request = WechatCreateRequested {
        request_id: request_id.0,
        user_id,
        order_no: order_no.clone(),
        amount: payment.amount,
        trade_type: payment.trade_type.unwrap_or(TradeType::Jsapi),
        openid: payment.openid,
        client_ip: payment.client_ip.unwrap_or_else(|| "127.0.0.1".to_owned()),
        requested_at: OffsetDateTime::now_utc(),
    };
    pay_call::pay_with_wechat(&app, request_id, &PayRequested::WechatCreate(request), |prepaid| {
        let data =
            json!({ "order_no": prepaid.order_no, "pay_no": prepaid.pay_no, "new_pay_info": prepaid.pay_params });
        ok("fresh pay params", data)
    })
    .await
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/payment/wechat/create", post(create))
        .route("/api/v1/payment/{order_no}/retry", post(retry))
}
