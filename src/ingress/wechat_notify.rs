//! WeChat's notifies: pay notifies (POST /api/v1/payment/wechat/notify) and refund notifies
//! (POST /api/v1/payment/wechat/refund-notify), verified here, published to `wechat.notify` and
//! `wechat.refund` with a publisher confirm, and only then answered success; the notify-worker
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
use crate::mq::messages::{RefundWork, TradeReported, TradeSource};
use crate::mq::rpc::Outgoing;
use crate::wechat::v3::client::signed_headers;
use crate::wechat::{Notified, RefundNotified, SignedNotify, Wechat};

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
    const WHAT: &str = "pay notify";
    let xml = SignedNotify::is_xml(&body);
    let refuse = |e: &dyn std::fmt::Display| refused(xml, WHAT, e);
    let (wechat, signed) = match received(&app, &headers, &body, WHAT) {
        Ok(received) => received,
        Err(answer) => return answer,
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
        Ok(Notified::Other { id, event_type } | Notified::Refund(RefundNotified { id, event_type, .. })) => {
            // Genuine, but no payment: answered as received, so WeChat does not send it for a
            // day; nothing here settles from it (refunds report to the refund-notify URL).
            tracing::warn!(notify_id = %id, %event_type, "a WeChat notify that is not a payment reached the pay-notify URL; ignored");
            return notify_answer(xml, StatusCode::OK, "SUCCESS", &format!("{event_type} is not handled at this URL"));
        }
        Err(e) => return refuse(&e),
    };
    let Some(replay_key) = signed.replay_key() else { return refuse(&"the notify has no nonce") };
    if let Err(answer) = claim(&app, &signed, &replay_key, &verified.id).await {
        return answer;
    }
    let report = TradeReported {
        source: TradeSource::Notify,
        report_id: verified.id.clone(),
        event_type: verified.event_type.clone(),
        trade: verified.trade.clone(),
        raw: String::from_utf8_lossy(&body).into_owned(),
        signed: Some(signed.clone()),
    };
    let payload = serde_json::to_vec(&report).expect("a report serialises");
    let about = &verified.trade.out_trade_no;
    queue::<TradeReported>(&app, &signed, (&replay_key, &verified.id, about), &payload).await
}

/// POST /api/v1/payment/wechat/refund-notify: a refund's progress (v3 `REFUND.*`, verified like
/// a pay notify; v2 with its encrypted `req_info`), queued for the notify-worker's refunds.
async fn refund_notify(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    const WHAT: &str = "refund notify";
    let xml = SignedNotify::is_xml(&body);
    let refuse = |e: &dyn std::fmt::Display| refused(xml, WHAT, e);
    let (wechat, signed) = match received(&app, &headers, &body, WHAT) {
        Ok(received) => received,
        Err(answer) => return answer,
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let notified = match wechat.verify_refund_notify(&signed, Some(now)) {
        Ok(notified) => notified,
        Err(e) => return refuse(&e),
    };
    let Some(replay_key) = signed.refund_replay_key() else { return refuse(&"the notify has no nonce") };
    if let Err(answer) = claim(&app, &signed, &replay_key, &notified.id).await {
        return answer;
    }
    let work = RefundWork::Reported { report_id: notified.id.clone(), signed: signed.clone() };
    let payload = serde_json::to_vec(&work).expect("a refund report serialises");
    let about = &notified.refund.out_refund_no;
    queue::<RefundWork>(&app, &signed, (&replay_key, &notified.id, about), &payload).await
}

/// The configured channel and the notify as WeChat signed it (`what`: which notify, for the
/// log); Err is the answer for WeChat: try again later, or refused.
#[expect(clippy::result_large_err, reason = "the Err is the one HTTP answer of a request, built once")]
fn received<'a>(
    app: &'a AppState,
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> Result<(&'a Wechat, SignedNotify), Response> {
    let xml = SignedNotify::is_xml(body);
    let Some(wechat) = app.wechat.as_deref() else {
        tracing::error!("a WeChat {what} arrived but WeChat Pay is not configured");
        return Err(notify_answer(xml, StatusCode::SERVICE_UNAVAILABLE, "FAIL", "WeChat Pay is not configured"));
    };
    SignedNotify::received(signed_headers(headers), body)
        .map(|signed| (wechat, signed))
        .map_err(|e| refused(xml, what, &e))
}

/// A notify that does not verify: refused, so WeChat (or whoever sent it) is told.
fn refused(xml: bool, what: &str, e: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "refused a WeChat {what}");
    notify_answer(xml, StatusCode::UNAUTHORIZED, Code::SignError.as_str(), &format!("notify refused: {e}"))
}

/// Whether a verified notify is new: Err is the answer to give WeChat instead of queueing it.
async fn claim(app: &AppState, signed: &SignedNotify, replay_key: &str, id: &str) -> Result<(), Response> {
    let xml = signed.api_version() == WechatApiVersion::V2;
    match app.cache.notify_seen(replay_key).await {
        Ok(false) => Ok(()),
        // v3: WeChat signs every delivery afresh, so a nonce seen before is a replay.
        Ok(true) if !xml => {
            tracing::warn!(notify_id = %id, replay_key, "refused a replayed WeChat notify");
            Err(notify_answer(
                xml,
                StatusCode::UNAUTHORIZED,
                Code::SignError.as_str(),
                "notify refused: replayed nonce",
            ))
        }
        // v2: WeChat sends the same notify again byte for byte, and wants SUCCESS for a duplicate;
        // a replay looks the same. Either way it was queued once: answered, never queued again.
        Ok(true) => {
            tracing::info!(notify_id = %id, replay_key, "a v2 notify queued before: answered, not queued again");
            Err(notify_answer(xml, StatusCode::OK, "SUCCESS", "OK"))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the notify nonce; asking WeChat to send it again");
            Err(notify_answer(xml, StatusCode::SERVICE_UNAVAILABLE, "FAIL", "try again later"))
        }
    }
}

/// Publishes a verified notify to its queue and answers WeChat: success only once the broker
/// confirmed it. `(replay key, notify id, the payment or refund it is about)`.
async fn queue<E: crate::mq::messages::Event>(
    app: &AppState,
    signed: &SignedNotify,
    (replay_key, id, about): (&str, &str, &str),
    payload: &[u8],
) -> Response {
    let version = signed.api_version();
    let xml = version == WechatApiVersion::V2;
    let ttl = if xml { V2_NONCE_TTL } else { V3_NONCE_TTL };
    let message_id = uuid::Uuid::now_v7();
    let (message, traceparent) = (message_id.to_string(), crate::mq::envelope::traceparent_for(message_id));
    let out = Outgoing::event::<E>(&message, &traceparent, payload);
    match app.rpc.publish(&out).await {
        Ok(()) => {
            tracing::info!(notify_id = %id, about, queue = E::QUEUE, "WeChat notify accepted");
            // Remembered only now it is queued, so a notify that failed to queue is taken when
            // WeChat resends it. Two copies at once may both be queued; settling is idempotent.
            if let Err(e) = app.cache.remember_notify(replay_key, ttl).await {
                tracing::warn!(error = %e, replay_key, "notify queued, but its nonce could not be kept: a replay of it would be queued again");
            }
            notify_answer(xml, StatusCode::OK, "SUCCESS", if xml { "OK" } else { "成功" })
        }
        Err(e) => {
            tracing::warn!(error = %e, notify_id = %id, "cannot queue a WeChat notify; WeChat will send it again");
            notify_answer(xml, StatusCode::SERVICE_UNAVAILABLE, "FAIL", "try again later")
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/payment/wechat/notify", post(notify))
        .route("/api/v1/payment/wechat/refund-notify", post(refund_notify))
}
