//! WeChat's pay notifies (POST /api/v1/payment/wechat/notify): verified here, published to
//! `wechat.notify` with a publisher confirm, and only then answered success; the notify-worker
//! verifies them again before settling.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;
use time::OffsetDateTime;

use super::AppState;
use crate::config::WechatApiVersion;
use crate::domain::Code;
use crate::mq::messages::{TradeReported, TradeSource};
use crate::mq::rpc::Outgoing;
use crate::wechat::v3::crypto::SignedHeaders;
use crate::wechat::{Notified, SignedNotify};

/// How long a v3 notify nonce stays claimed: longer than the five-minute timestamp window, so
/// a replay is refused by one or the other.
const V3_NONCE_TTL: Duration = Duration::from_secs(600);
/// How long a v2 notify's nonce stays claimed: v2 has no timestamp, so for as long as WeChat
/// sends a notify (its schedule spans about a day).
const V2_NONCE_TTL: Duration = Duration::from_secs(25 * 3600);

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

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/payment/wechat/notify", post(notify))
}
