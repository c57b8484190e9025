//! The simulator's refunds: v3 `POST /v3/refund/domestic/refunds` and
//! `GET /v3/refund/domestic/refunds/{out_refund_no}` (with a REFUND.SUCCESS notify), and v2
//! `POST /secapi/pay/refund` (docs/wechat-pay.md §2.6, §3.9). Over loopback there is no mutual
//! TLS; the v2 `sign` is checked as for every v2 call.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use super::v3::{Signed, error, ok_json};
use super::{Sim, SimRefund};
use crate::channel::TradeState;
use crate::wechat::v3::client::beijing_rfc3339;

#[derive(Deserialize)]
struct RefundAmount {
    refund: i64,
    total: i64,
    #[serde(default)]
    currency: Option<String>,
}

#[derive(Deserialize)]
struct RefundRequest {
    #[serde(default)]
    out_trade_no: Option<String>,
    #[serde(default)]
    transaction_id: Option<String>,
    out_refund_no: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    notify_url: Option<String>,
    amount: RefundAmount,
}

/// The Refund object of v3 answers.
#[derive(Serialize)]
pub(super) struct RefundView {
    refund_id: String,
    out_refund_no: String,
    transaction_id: String,
    out_trade_no: String,
    channel: &'static str,
    user_received_account: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    success_time: Option<String>,
    create_time: String,
    status: &'static str,
    funds_account: &'static str,
    amount: serde_json::Value,
}

pub(super) fn view(refund: &SimRefund) -> RefundView {
    RefundView {
        refund_id: refund.refund_id.clone(),
        out_refund_no: refund.out_refund_no.clone(),
        transaction_id: refund.transaction_id.clone(),
        out_trade_no: refund.out_trade_no.clone(),
        channel: "ORIGINAL",
        user_received_account: "支付用户零钱",
        success_time: Some(beijing_rfc3339(refund.created_at)),
        create_time: beijing_rfc3339(refund.created_at),
        status: "SUCCESS",
        funds_account: "AVAILABLE",
        amount: json!({
            "total": refund.total, "refund": refund.refund, "payer_total": refund.total, "payer_refund": refund.refund,
            "settlement_refund": refund.refund, "settlement_total": refund.total, "discount_refund": 0, "currency": "CNY",
        }),
    }
}

/// Applies a refund to the simulator's books; the same `out_refund_no` again answers the same
/// refund. Errors are (HTTP status, v3 code, v2 code, message).
pub(super) fn apply(
    sim: &Sim,
    no: Option<&str>,
    transaction_id: Option<&str>,
    out_refund_no: &str,
    refund: i64,
    total: i64,
    notify_url: Option<String>,
) -> Result<SimRefund, (StatusCode, &'static str, &'static str, &'static str)> {
    let mut orders = sim.orders.lock().expect("orders lock");
    let order = orders
        .values_mut()
        .find(|o| {
            no.is_some_and(|n| n == o.out_trade_no)
                || (transaction_id.is_some() && o.transaction_id.as_deref() == transaction_id)
        })
        .ok_or((StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", "ORDERNOTEXIST", "订单不存在"))?;
    if !order.state.was_paid() {
        return Err((StatusCode::BAD_REQUEST, "INVALID_REQUEST", "INVALID_REQUEST", "订单未支付，不能退款"));
    }
    let paid = order.paid_total.unwrap_or(order.total);
    if total != paid {
        return Err((StatusCode::BAD_REQUEST, "PARAM_ERROR", "PARAM_ERROR", "订单金额与原订单不一致"));
    }
    let mut refunds = sim.refunds.lock().expect("refunds lock");
    if let Some(existing) = refunds.get(out_refund_no) {
        return if existing.out_trade_no == order.out_trade_no && existing.refund == refund {
            Ok(existing.clone())
        } else {
            Err((StatusCode::BAD_REQUEST, "INVALID_REQUEST", "INVALID_REQUEST", "退款单号已用于其他退款"))
        };
    }
    let earlier: Vec<&SimRefund> = refunds.values().filter(|r| r.out_trade_no == order.out_trade_no).collect();
    if earlier.len() >= 50 {
        return Err((StatusCode::BAD_REQUEST, "INVALID_REQUEST", "INVALID_REQUEST", "部分退款次数超过50次"));
    }
    if refund <= 0 || earlier.iter().map(|r| r.refund).sum::<i64>() + refund > paid {
        return Err((StatusCode::BAD_REQUEST, "INVALID_REQUEST", "INVALID_REQUEST", "申请退款金额超过订单可退金额"));
    }
    let created = SimRefund {
        refund_id: sim.next_id("50300"),
        out_refund_no: out_refund_no.to_owned(),
        out_trade_no: order.out_trade_no.clone(),
        transaction_id: order.transaction_id.clone().unwrap_or_default(),
        refund,
        total: paid,
        created_at: OffsetDateTime::now_utc(),
        notify_url,
        api: order.api,
        public_key_mode: order.public_key_mode,
    };
    order.state = TradeState::Refund;
    refunds.insert(out_refund_no.to_owned(), created.clone());
    Ok(created)
}

pub(super) async fn create(State(sim): State<Arc<Sim>>, signed: Signed) -> Response {
    let Signed { path, headers, body } = signed;
    let path = path.as_str();
    let Ok(request) = serde_json::from_slice::<RefundRequest>(&body) else {
        return error(&sim, &headers, StatusCode::BAD_REQUEST, "PARAM_ERROR", "请求体格式错误");
    };
    if request.out_refund_no.is_empty()
        || request.out_refund_no.len() > 64
        || request.amount.currency.as_deref().is_some_and(|c| c != "CNY")
    {
        return error(&sim, &headers, StatusCode::BAD_REQUEST, "PARAM_ERROR", "参数错误");
    }
    let _ = request.reason;
    let outcome = apply(
        &sim,
        request.out_trade_no.as_deref(),
        request.transaction_id.as_deref(),
        &request.out_refund_no,
        request.amount.refund,
        request.amount.total,
        request.notify_url.clone(),
    );
    match outcome {
        Ok(refund) => {
            sim.record("request", path, Some(&refund.out_trade_no), 200, format!("refund {}", refund.out_refund_no));
            if refund.notify_url.is_some() {
                super::notifier::deliver_refund(sim.clone(), refund.clone());
            }
            ok_json(&sim, &headers, &view(&refund))
        }
        Err((status, code, _, message)) => {
            sim.record("request", path, request.out_trade_no.as_deref(), status.as_u16(), code.into());
            error(&sim, &headers, status, code, message)
        }
    }
}

pub(super) async fn query(State(sim): State<Arc<Sim>>, Path(out_refund_no): Path<String>, signed: Signed) -> Response {
    let headers = signed.headers;
    let refund = sim.refunds.lock().expect("refunds lock").get(&out_refund_no).cloned();
    match refund {
        Some(refund) => ok_json(&sim, &headers, &view(&refund)),
        None => error(&sim, &headers, StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", "退款单不存在"),
    }
}

/// v2 `/secapi/pay/refund`.
pub(super) async fn v2_refund(State(sim): State<Arc<Sim>>, body: String) -> Response {
    let endpoint = "/secapi/pay/refund";
    let (fields, sign_type) = match super::v2::authenticate(&sim, endpoint, &body) {
        Ok(ok) => ok,
        Err(message) => return super::v2::fail(message),
    };
    let get = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
    let number = |k: &str| get(k).and_then(|v| v.parse::<i64>().ok());
    let (Some(out_refund_no), Some(total), Some(refund)) =
        (get("out_refund_no"), number("total_fee"), number("refund_fee"))
    else {
        return super::v2::answer(&sim, sign_type, BTreeMap::new(), Some(("PARAM_ERROR", "参数错误")));
    };
    let no = get("out_trade_no");
    match apply(&sim, no.as_deref(), get("transaction_id").as_deref(), &out_refund_no, refund, total, None) {
        Ok(r) => {
            sim.record("request", endpoint, Some(&r.out_trade_no), 200, format!("refund {}", r.out_refund_no));
            let out: BTreeMap<String, String> = [
                ("transaction_id", r.transaction_id.clone()),
                ("out_trade_no", r.out_trade_no.clone()),
                ("out_refund_no", r.out_refund_no.clone()),
                ("refund_id", r.refund_id.clone()),
                ("refund_fee", r.refund.to_string()),
                ("total_fee", r.total.to_string()),
                ("cash_fee", r.total.to_string()),
                ("cash_refund_fee", r.refund.to_string()),
            ]
            .map(|(k, v)| (k.to_owned(), v))
            .into();
            super::v2::answer(&sim, sign_type, out, None)
        }
        Err((_, _, code, message)) => {
            sim.record("request", endpoint, no.as_deref(), 200, code.into());
            super::v2::answer(&sim, sign_type, BTreeMap::new(), Some((code, message)))
        }
    }
}
