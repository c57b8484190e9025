//! WeChat Pay over HTTP: creating a payment (through the pay-worker, which calls WeChat), fresh
//! pay params for a waiting order, and WeChat's notifies — verified here, published to
//! `wechat.notify` with a publisher confirm, and only then answered success.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::extract::{AuthUser, Json};
use super::limits::{self, ClientIp, Kind};
use super::payment::{call_pay_worker, check_order_no, payment_amount, processing};
use super::{ApiError, AppState, RequestId, Result, error::ok};
use crate::channel::TradeType;
use crate::config::WechatApiVersion;
use crate::domain::{Code, OrderStatus, PaymentStatus};
use crate::mq::messages::{PayReplied, PayRequested, TradeReported, TradeSource, WechatCreateRequested};
use crate::mq::rpc::Outgoing;
use crate::wechat::v3::crypto::SignedHeaders;
use crate::wechat::{Notified, SignedNotify};

/// How long a v3 notify nonce stays claimed: longer than the five-minute timestamp window, so
/// a replay is refused by one or the other.
const V3_NONCE_TTL: Duration = Duration::from_secs(600);
/// How long a v2 notify's nonce stays claimed: v2 has no timestamp, so for as long as WeChat
/// sends a notify (its schedule spans about a day).
const V2_NONCE_TTL: Duration = Duration::from_secs(25 * 3600);

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
    headers: HeaderMap,
    Json(body): Json<CreateWechat>,
) -> Result<Response> {
    limits::check(&app, Kind::Create, user_id, client).await?;
    check_order_no(&body.order_no)?;
    let amount = payment_amount(&app, "amount", &body.amount)?;
    let trade_type = match body.trade_type.as_deref() {
        None => TradeType::Jsapi,
        Some(t) => {
            TradeType::parse(t).ok_or_else(|| ApiError::validation("trade_type must be JSAPI, H5, NATIVE or APP"))?
        }
    };
    let openid = body.openid.filter(|o| !o.is_empty());
    if trade_type == TradeType::Jsapi && openid.is_none() {
        return Err(ApiError::validation("openid is required for JSAPI (mini-program) payments"));
    }
    if openid.as_deref().is_some_and(|o| !is_openid(o)) {
        return Err(ApiError::validation("openid must be 1 to 128 letters, digits, '_' or '-'"));
    }
    let client_ip = body.client_ip.or_else(|| forwarded_ip(&headers)).unwrap_or_else(|| "127.0.0.1".to_owned());
    if client_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(ApiError::validation("client_ip must be an IP address"));
    }
    let request = WechatCreateRequested {
        request_id: request_id.0,
        user_id,
        order_no: body.order_no.clone(),
        amount,
        trade_type,
        openid,
        client_ip,
        requested_at: OffsetDateTime::now_utc(),
    };
    match call_pay_worker(&app, request_id, &body.order_no, &PayRequested::WechatCreate(request)).await? {
        Some(PayReplied::Prepaid(prepaid)) => {
            let mut data = prepaid.pay_params;
            data["order_no"] = json!(prepaid.order_no);
            data["pay_no"] = json!(prepaid.pay_no);
            Ok(ok("WeChat payment created", data))
        }
        Some(PayReplied::Refused(refusal)) => Err(refusal.into()),
        Some(PayReplied::Paid(_)) => Err(ApiError::internal(&"the pay-worker answered a WeChat create with a receipt")),
        None => Ok(processing(&body.order_no)),
    }
}

/// The shape of a WeChat openid (28 characters of base64url in practice). In production it
/// must come from the user's login (code2Session), not from what the client sends.
fn is_openid(openid: &str) -> bool {
    (1..=128).contains(&openid.len()) && openid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The client address a proxy in front of the ingress reports.
fn forwarded_ip(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("x-forwarded-for")?.to_str().ok()?;
    Some(value.split(',').next()?.trim().to_owned())
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
    let order = crate::store::orders::find_for_user(&app.db, &order_no, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    match order.status {
        OrderStatus::Paid => {
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
    match call_pay_worker(&app, request_id, &order_no, &PayRequested::WechatCreate(request)).await? {
        Some(PayReplied::Prepaid(prepaid)) => Ok(ok(
            "fresh pay params",
            json!({ "order_no": order_no, "pay_no": prepaid.pay_no, "new_pay_info": prepaid.pay_params }),
        )),
        Some(PayReplied::Refused(refusal)) => Err(refusal.into()),
        Some(PayReplied::Paid(_)) => Err(ApiError::internal(&"the pay-worker answered a retry with a receipt")),
        None => Ok(processing(&order_no)),
    }
}

/// The body WeChat takes as "received" (v3 JSON or v2 XML), or as "try again".
fn notify_answer(xml: bool, status: StatusCode, code: &str, message: &str) -> Response {
    if xml {
        let body = format!(
            "<xml><return_code><![CDATA[{}]]></return_code><return_msg><![CDATA[{message}]]></return_msg></xml>",
            if status.is_success() { "SUCCESS" } else { "FAIL" }
        );
        (status, [("content-type", "text/xml; charset=utf-8")], body).into_response()
    } else {
        (status, axum::Json(json!({ "code": code, "message": message }))).into_response()
    }
}

/// POST /api/v1/payment/wechat/notify. Anything that fails before the broker confirmed the
/// report answers failure, so WeChat sends the notify again.
async fn notify(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let xml = SignedNotify::is_xml(&body);
    let Some(wechat) = &app.wechat else {
        tracing::error!("a WeChat notify arrived but WeChat Pay is not configured");
        return notify_answer(xml, StatusCode::SERVICE_UNAVAILABLE, "FAIL", "WeChat Pay is not configured");
    };
    let refused = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "refused a WeChat notify");
        notify_answer(xml, StatusCode::UNAUTHORIZED, Code::SignError.as_str(), &format!("notify refused: {e}"))
    };
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let signed_headers = SignedHeaders {
        timestamp: get("wechatpay-timestamp"),
        nonce: get("wechatpay-nonce"),
        signature: get("wechatpay-signature"),
        serial: get("wechatpay-serial"),
    };
    let signed = match SignedNotify::received(signed_headers, &body) {
        Ok(signed) => signed,
        Err(e) => return refused(&e),
    };
    // A v2 notify verifies only with the sign type its payment was created with.
    let sign_type = match crate::store::wechat::notify_sign_type(&app.db, &signed).await {
        Ok(sign_type) => sign_type,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the payment's sign type; asking WeChat to send the notify again");
            return notify_answer(xml, StatusCode::SERVICE_UNAVAILABLE, "FAIL", "try again later");
        }
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let verified = match wechat.verify_notify(&signed, Some(now), sign_type) {
        Ok(Notified::Trade(verified)) => verified,
        Ok(Notified::Other { id, event_type }) => {
            // Genuine, but no payment: answered as received, so WeChat does not send it for a
            // day; nothing here settles from it.
            tracing::warn!(notify_id = %id, %event_type, "a WeChat notify that is not a payment reached the pay-notify URL; ignored");
            return notify_answer(xml, StatusCode::OK, "SUCCESS", &format!("{event_type} is not handled at this URL"));
        }
        Err(e) => return refused(&e),
    };
    let version = signed.api_version();
    let ttl = if version == WechatApiVersion::V3 { V3_NONCE_TTL } else { V2_NONCE_TTL };
    let Some(replay_key) = signed.replay_key() else { return refused(&"the notify has no nonce") };
    match app.cache.notify_seen(&replay_key).await {
        Ok(false) => {}
        // v3: WeChat signs every delivery afresh, so a nonce seen before is a replay.
        Ok(true) if version == WechatApiVersion::V3 => {
            tracing::warn!(notify_id = %verified.id, replay_key, "refused a replayed WeChat notify");
            return refused(&"replayed nonce");
        }
        // v2: WeChat sends the same notify again byte for byte, and wants SUCCESS for a duplicate;
        // a replay looks the same. Either way it was queued once: answered, never queued again.
        Ok(true) => {
            tracing::info!(notify_id = %verified.id, replay_key, "a v2 notify queued before: answered, not queued again");
            return notify_answer(xml, StatusCode::OK, "SUCCESS", "OK");
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the notify nonce; asking WeChat to send it again");
            return notify_answer(xml, StatusCode::SERVICE_UNAVAILABLE, "FAIL", "try again later");
        }
    }
    let report = TradeReported {
        source: TradeSource::Notify,
        report_id: verified.id.clone(),
        event_type: verified.event_type.clone(),
        trade: verified.trade.clone(),
        raw: String::from_utf8_lossy(&body).into_owned(),
        signed: Some(signed),
    };
    let payload = serde_json::to_vec(&report).expect("a report serialises");
    let message_id = uuid::Uuid::now_v7();
    let (id, traceparent) = (message_id.to_string(), crate::mq::envelope::traceparent_for(message_id));
    let out = Outgoing::event::<TradeReported>(&id, &traceparent, &payload);
    match app.rpc.publish(&out).await {
        Ok(()) => {
            tracing::info!(notify_id = %verified.id, out_trade_no = %verified.trade.out_trade_no, "WeChat notify accepted");
            // Remembered only now it is queued, so a notify that failed to queue is taken when
            // WeChat resends it. Two copies at once may both be queued; settling is idempotent.
            if let Err(e) = app.cache.remember_notify(&replay_key, ttl).await {
                tracing::warn!(error = %e, replay_key, "notify queued, but its nonce could not be kept: a replay of it would be queued again");
            }
            notify_answer(xml, StatusCode::OK, "SUCCESS", if xml { "OK" } else { "成功" })
        }
        Err(e) => {
            tracing::warn!(error = %e, notify_id = %verified.id, "cannot queue a WeChat notify; WeChat will send it again");
            notify_answer(xml, StatusCode::SERVICE_UNAVAILABLE, "FAIL", "try again later")
        }
    }
}

/// Status sync: a WeChat payment waiting longer than `wechat.query_after_secs` is queried at
/// WeChat (at most every ten seconds); a paid trade goes to the notify-worker like a notify, so
/// an order whose notify was lost still settles.
pub(super) async fn sync_status(app: &AppState, order_no: &str) {
    let Some(wechat) = &app.wechat else { return };
    let payment = match crate::store::wechat::find(&app.db, order_no).await {
        Ok(Some(p)) if p.status == PaymentStatus::Paying && p.age >= app.wechat_query_after => p,
        Ok(_) => return,
        Err(e) => return tracing::warn!(error = %e, order_no, "status sync cannot read the payment"),
    };
    match app.cache.claim_status_sync(&payment.pay_no, Duration::from_secs(10)).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => return tracing::warn!(error = %e, "status sync throttle unavailable"),
    }
    let trade = match crate::channel::PayChannel::query(wechat.as_ref(), &payment.pay_no).await {
        Ok(trade) if trade.trade_state.was_paid() || trade.trade_state.is_closed() => trade,
        Ok(_) => return,
        Err(e) => return tracing::warn!(error = %e, pay_no = %payment.pay_no, "status sync query failed"),
    };
    tracing::warn!(pay_no = %payment.pay_no, trade_state = trade.trade_state.as_str(), "status sync found a settled trade without its notify");
    if let Err(e) = crate::store::wechat::report_trade(&app.db, &trade).await {
        tracing::warn!(error = %e, "status sync cannot queue the trade");
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/payment/wechat/create", post(create))
        .route("/api/v1/payment/wechat/notify", post(notify))
        .route("/api/v1/payment/{order_no}/retry", post(retry))
}
