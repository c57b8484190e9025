//! Handing a pay request to the pay-worker and turning its reply into the HTTP answer: the
//! request is published to `pay.requests` with a publisher confirm and the reply awaited; if
//! none comes within `ingress.reply_timeout_ms` the answer is 202 PROCESSING, the request stays
//! queued, and the worker still settles it.

use axum::response::Response;
use serde_json::json;

use super::respond::{ok, processing, rfc3339};
use super::{ApiError, AppState, RequestId, Result};
use crate::domain::mixed::MixedReceipt;
use crate::domain::payment::Receipt;
use crate::domain::{PayMethod, PaymentStatus};
use crate::mq::MqError;
use crate::mq::envelope::traceparent_for;
use crate::mq::messages::{PayReplied, PayRequested, PrepaidReply};
use crate::mq::rpc::{Called, Outgoing};

/// Pays from an internal asset: 200 with the receipt, the refusal, or 202.
pub async fn pay_with_asset(app: &AppState, request_id: RequestId, request: &PayRequested) -> Result<Response> {
    let order_no = order_no(request);
    match call_pay_worker(app, request_id, order_no, request).await? {
        Some(PayReplied::Paid(receipt)) => Ok(paid(order_no, &receipt)),
        Some(PayReplied::Refused(refusal)) => Err(refusal.into()),
        Some(other @ (PayReplied::Prepaid(_) | PayReplied::Mixed(_))) => {
            Err(ApiError::internal(&format_args!("the pay-worker answered an asset payment with {other:?}")))
        }
        None => Ok(processing(order_no)),
    }
}

/// Pays with several methods at once: 200 with every part (and the WeChat part's pay params),
/// the refusal, or 202.
pub async fn pay_mixed(app: &AppState, request_id: RequestId, request: &PayRequested) -> Result<Response> {
    let order_no = order_no(request);
    match call_pay_worker(app, request_id, order_no, request).await? {
        Some(PayReplied::Mixed(receipt)) => Ok(mixed(order_no, &receipt)),
        Some(PayReplied::Refused(refusal)) => Err(refusal.into()),
        Some(other) => Err(ApiError::internal(&format_args!("the pay-worker answered a mixed payment with {other:?}"))),
        None => Ok(processing(order_no)),
    }
}

/// Creates or reuses a WeChat payment: the pay params as `present` shapes them, the refusal,
/// or 202.
pub async fn pay_with_wechat(
    app: &AppState,
    request_id: RequestId,
    request: &PayRequested,
    present: impl FnOnce(PrepaidReply) -> Response,
) -> Result<Response> {
    let order_no = order_no(request);
    match call_pay_worker(app, request_id, order_no, request).await? {
        Some(PayReplied::Prepaid(prepaid)) => Ok(present(prepaid)),
        Some(PayReplied::Refused(refusal)) => Err(refusal.into()),
        Some(other @ (PayReplied::Paid(_) | PayReplied::Mixed(_))) => {
            Err(ApiError::internal(&format_args!("the pay-worker answered a WeChat create with {other:?}")))
        }
        None => Ok(processing(order_no)),
    }
}

fn order_no(request: &PayRequested) -> &str {
    match request {
        PayRequested::Asset(r) => &r.order_no,
        PayRequested::WechatCreate(r) => &r.order_no,
        PayRequested::Mixed(r) => &r.order_no,
    }
}

/// Publishes a pay request and waits for the pay-worker's answer: None when it did not come in
/// time (the request is queued and will be handled; answer 202).
async fn call_pay_worker(
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

/// 200 with seed 000's fields for a mixed payment: what each part paid (`integral_paid` in
/// points), what is left of each asset, and the WeChat part's pay params.
fn mixed(order_no: &str, receipt: &MixedReceipt) -> Response {
    let mut data = json!({
        "order_no": order_no,
        "pay_no": receipt.mixed_no,
        "pay_status": receipt.status,
        "pay_time": receipt.pay_time.map(rfc3339),
    });
    for part in &receipt.parts {
        let (paid, remaining) = match part.method {
            PayMethod::Balance => ("balance_paid", "remaining_balance"),
            PayMethod::Integral => ("integral_paid", "remaining_integral"),
            PayMethod::Money2 => ("money2_paid", "remaining_money2"),
            PayMethod::Wechat => ("wechat_amount", ""),
        };
        data[paid] = json!(part.asset_amount);
        if let Some(left) = part.remaining {
            data[remaining] = json!(left);
        }
    }
    if let Some(info) = &receipt.wechat_pay_info {
        data["wechat_pay_info"] = info.clone();
    }
    if let Some(note) = &receipt.note {
        data["note"] = json!(note);
    }
    let message = match receipt.status {
        PaymentStatus::Success => "mixed payment succeeded",
        _ if receipt.wechat_pay_info.is_some() => "mixed payment created; pay the WeChat part to finish",
        _ => "mixed payment created; the WeChat part has no pay params yet",
    };
    ok(message, data)
}
