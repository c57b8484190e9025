//! The simulator's refunds: v3 `POST /v3/refund/domestic/refunds` and
//! `GET /v3/refund/domestic/refunds/{out_refund_no}`, v2 `POST /secapi/pay/refund` and
//! `POST /pay/refundquery` (docs/wechat-pay.md §2.6, §3.9). As at WeChat, an accepted refund is
//! PROCESSING and settles a moment later, when its notify leaves (notifier.rs); a refund fault,
//! set per trade by the control API, makes it late, abnormal, closed or unannounced. Over
//! loopback there is no mutual TLS; the v2 `sign` is checked as for every v2 call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::{OffsetDateTime, UtcOffset};

use super::v3::{Signed, error, ok_json};
use super::{Sim, SimRefund};
use crate::channel::{RefundState, TradeState};
use crate::wechat::v3::client::beijing_rfc3339;

type Fields = BTreeMap<String, String>;

/// How long an accepted refund stays PROCESSING: long enough for a test to see it, short
/// enough to keep the tests quick (WeChat takes seconds to days).
const SETTLE_AFTER: Duration = Duration::from_millis(200);

/// The `delay` fault's wait when the control call gives no `delay_ms`.
const DELAY_FAULT: Duration = Duration::from_millis(3000);

/// A refund fault: what becomes of a trade's refunds created while it is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    /// Settles SUCCESS as usual, but no notify is ever sent: only a query tells.
    Never,
    /// Settles ABNORMAL: the money left the merchant but did not reach the payer.
    Abnormal,
    /// Settles CLOSED: the refund was given up.
    Closed,
    /// Settles SUCCESS, and notifies, only after this long.
    Delay(Duration),
    /// Refused for good (`INVALID_REQUEST`): no refund is made.
    Refuse,
}

impl Fault {
    /// The fault a control call names; `delay_ms` only matters to `delay`.
    pub(super) fn parse(name: &str, delay_ms: Option<u64>) -> Option<Fault> {
        match name {
            "never" => Some(Fault::Never),
            "abnormal" => Some(Fault::Abnormal),
            "closed" => Some(Fault::Closed),
            "delay" => Some(Fault::Delay(delay_ms.map(Duration::from_millis).unwrap_or(DELAY_FAULT))),
            "refuse" => Some(Fault::Refuse),
            _ => None,
        }
    }
}

/// Where a refund was asked for, which decides how it settles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Via {
    /// The refund APIs: settles after `SETTLE_AFTER`, as the trade's refund fault says.
    Api,
    /// The merchant platform (control `POST /sim/refund`): settles SUCCESS at once, faults
    /// aside, as the tests written before refunds took time expect.
    MerchantPlatform,
}

/// A refund asked for, by either API generation or the merchant platform.
pub(super) struct Ask<'a> {
    pub out_trade_no: Option<&'a str>,
    pub transaction_id: Option<&'a str>,
    pub out_refund_no: &'a str,
    /// Fen.
    pub refund: i64,
    /// Fen: what the merchant says the trade took (it must be what was paid).
    pub total: i64,
    pub notify_url: Option<String>,
    pub via: Via,
}

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

/// Where the money goes back to, as both API generations name it.
const RECEIVED_ACCOUNT: &str = "支付用户零钱";

/// The Refund object as it stands at `now`.
pub(super) fn view(refund: &SimRefund, now: OffsetDateTime) -> RefundView {
    RefundView {
        refund_id: refund.refund_id.clone(),
        out_refund_no: refund.out_refund_no.clone(),
        transaction_id: refund.transaction_id.clone(),
        out_trade_no: refund.out_trade_no.clone(),
        channel: "ORIGINAL",
        user_received_account: RECEIVED_ACCOUNT,
        success_time: refund.success_time_at(now).map(beijing_rfc3339),
        create_time: beijing_rfc3339(refund.created_at),
        status: refund.status_at(now).as_str(),
        funds_account: "AVAILABLE",
        amount: json!({
            "total": refund.total, "refund": refund.refund, "payer_total": refund.total, "payer_refund": refund.refund,
            "settlement_refund": refund.refund, "settlement_total": refund.total, "discount_refund": 0, "currency": "CNY",
        }),
    }
}

/// The plaintext of a settled refund's v3 notify resource (`original_type` "refund"); it names
/// the status `refund_status`, where a query says `status`.
pub(super) fn v3_notify_resource(sim: &Sim, refund: &SimRefund) -> serde_json::Value {
    let mut resource = json!({
        "mchid": sim.keys.mchid, "transaction_id": refund.transaction_id, "out_trade_no": refund.out_trade_no,
        "refund_id": refund.refund_id, "out_refund_no": refund.out_refund_no,
        "refund_status": refund.outcome.as_str(), "user_received_account": RECEIVED_ACCOUNT,
        "amount": { "total": refund.total, "refund": refund.refund, "payer_total": refund.total, "payer_refund": refund.refund },
    });
    if refund.outcome == RefundState::Success {
        resource["success_time"] = beijing_rfc3339(refund.settles_at).into();
    }
    resource
}

/// A refund status in v2's words.
fn v2_status(state: RefundState) -> &'static str {
    match state {
        RefundState::Processing => "PROCESSING",
        RefundState::Success => "SUCCESS",
        RefundState::Abnormal => "CHANGE",
        RefundState::Closed => "REFUNDCLOSE",
    }
}

/// `yyyy-MM-dd HH:mm:ss` in Beijing time: v2 refunds write their times so, unlike its trades.
fn beijing_dashed(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::from_hms(8, 0, 0).expect("a valid offset"));
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The fields of a settled refund's v2 notify, before they are sealed into its `req_info`.
pub(super) fn v2_notify_fields(refund: &SimRefund) -> Fields {
    let mut f: Fields = [
        ("out_refund_no", refund.out_refund_no.clone()),
        ("out_trade_no", refund.out_trade_no.clone()),
        ("transaction_id", refund.transaction_id.clone()),
        ("refund_id", refund.refund_id.clone()),
        ("total_fee", refund.total.to_string()),
        ("refund_fee", refund.refund.to_string()),
        ("settlement_total_fee", refund.total.to_string()),
        ("settlement_refund_fee", refund.refund.to_string()),
        ("refund_status", v2_status(refund.outcome).to_owned()),
        ("refund_recv_accout", RECEIVED_ACCOUNT.to_owned()),
        ("refund_account", "REFUND_SOURCE_UNSETTLED_FUNDS".to_owned()),
        ("refund_request_source", "API".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .into();
    if refund.outcome == RefundState::Success {
        f.insert("success_time".into(), beijing_dashed(refund.settles_at));
    }
    f
}

/// When and how a refund created now settles: the merchant platform's at once; the APIs' after
/// `SETTLE_AFTER`, unless the trade's refund fault says otherwise.
fn terms(sim: &Sim, out_trade_no: &str, via: Via) -> (Duration, RefundState, bool) {
    if via == Via::MerchantPlatform {
        return (Duration::ZERO, RefundState::Success, true);
    }
    match sim.refund_faults.lock().expect("refund faults lock").get(out_trade_no) {
        None => (SETTLE_AFTER, RefundState::Success, true),
        Some(Fault::Never) => (SETTLE_AFTER, RefundState::Success, false),
        Some(Fault::Abnormal) => (SETTLE_AFTER, RefundState::Abnormal, true),
        Some(Fault::Closed) => (SETTLE_AFTER, RefundState::Closed, true),
        Some(Fault::Delay(after)) => (*after, RefundState::Success, true),
        Some(Fault::Refuse) => unreachable!("apply refuses before it asks for terms"),
    }
}

/// Applies a refund to the simulator's books and has its notify sent when it settles; the same
/// `out_refund_no` again answers the same refund (and sends nothing more). Errors are (HTTP
/// status, v3 code, v2 code, message).
pub(super) fn apply(
    sim: &Arc<Sim>,
    ask: Ask<'_>,
) -> Result<SimRefund, (StatusCode, &'static str, &'static str, &'static str)> {
    let Ask { out_trade_no: no, transaction_id, out_refund_no, refund, total, notify_url, via } = ask;
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
    let refused = via == Via::Api
        && sim.refund_faults.lock().expect("refund faults lock").get(&order.out_trade_no) == Some(&Fault::Refuse);
    if refused && !sim.refunds.lock().expect("refunds lock").contains_key(out_refund_no) {
        return Err((StatusCode::BAD_REQUEST, "INVALID_REQUEST", "INVALID_REQUEST", "退款申请被拒绝"));
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
    // Refunds still PROCESSING hold their amount too: WeChat does not let two in flight
    // together refund more than was paid.
    if refund <= 0 || earlier.iter().map(|r| r.refund).sum::<i64>() + refund > paid {
        return Err((StatusCode::BAD_REQUEST, "INVALID_REQUEST", "INVALID_REQUEST", "申请退款金额超过订单可退金额"));
    }
    let (after, outcome, notify) = terms(sim, &order.out_trade_no, via);
    let created_at = OffsetDateTime::now_utc();
    let created = SimRefund {
        refund_id: sim.next_id("50300"),
        out_refund_no: out_refund_no.to_owned(),
        out_trade_no: order.out_trade_no.clone(),
        transaction_id: order.transaction_id.clone().unwrap_or_default(),
        refund,
        total: paid,
        created_at,
        settles_at: created_at + after,
        outcome,
        notify,
        notify_url,
        api: order.api,
        public_key_mode: order.public_key_mode,
    };
    order.state = TradeState::Refund;
    refunds.insert(out_refund_no.to_owned(), created.clone());
    super::notifier::deliver_refund(sim.clone(), created.clone());
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
        Ask {
            out_trade_no: request.out_trade_no.as_deref(),
            transaction_id: request.transaction_id.as_deref(),
            out_refund_no: &request.out_refund_no,
            refund: request.amount.refund,
            total: request.amount.total,
            notify_url: request.notify_url.clone(),
            via: Via::Api,
        },
    );
    match outcome {
        Ok(refund) => {
            // Every request is recorded, a repeated one too: tests count what reached WeChat.
            sim.record("request", path, Some(&refund.out_trade_no), 200, format!("refund {}", refund.out_refund_no));
            ok_json(&sim, &headers, &view(&refund, OffsetDateTime::now_utc()))
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
        Some(refund) => ok_json(&sim, &headers, &view(&refund, OffsetDateTime::now_utc())),
        None => error(&sim, &headers, StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", "退款单不存在"),
    }
}

/// v2 `/secapi/pay/refund`: its answer says only "accepted"; the outcome comes by notify or
/// `/pay/refundquery`.
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
        return super::v2::answer(&sim, sign_type, Fields::new(), Some(("PARAM_ERROR", "参数错误")));
    };
    let no = get("out_trade_no");
    let transaction_id = get("transaction_id");
    let ask = Ask {
        out_trade_no: no.as_deref(),
        transaction_id: transaction_id.as_deref(),
        out_refund_no: &out_refund_no,
        refund,
        total,
        notify_url: get("notify_url"),
        via: Via::Api,
    };
    match apply(&sim, ask) {
        Ok(r) => {
            sim.record("request", endpoint, Some(&r.out_trade_no), 200, format!("refund {}", r.out_refund_no));
            let out: Fields = [
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
            super::v2::answer(&sim, sign_type, Fields::new(), Some((code, message)))
        }
    }
}

/// v2 `/pay/refundquery`: by `refund_id` or `out_refund_no`, that one refund; by
/// `transaction_id` or `out_trade_no`, all of the trade's, oldest first. The same order of
/// precedence as WeChat's when a request names several.
pub(super) async fn v2_query(State(sim): State<Arc<Sim>>, body: String) -> Response {
    let endpoint = "/pay/refundquery";
    let (fields, sign_type) = match super::v2::authenticate(&sim, endpoint, &body) {
        Ok(ok) => ok,
        Err(message) => return super::v2::fail(message),
    };
    let get = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
    let selector: Box<dyn Fn(&SimRefund) -> bool> = if let Some(id) = get("refund_id") {
        Box::new(move |r| r.refund_id == id)
    } else if let Some(no) = get("out_refund_no") {
        Box::new(move |r| r.out_refund_no == no)
    } else if let Some(id) = get("transaction_id") {
        Box::new(move |r| r.transaction_id == id)
    } else if let Some(no) = get("out_trade_no") {
        Box::new(move |r| r.out_trade_no == no)
    } else {
        return super::v2::answer(&sim, sign_type, Fields::new(), Some(("PARAM_ERROR", "缺少查询条件")));
    };
    let mut found: Vec<SimRefund> =
        sim.refunds.lock().expect("refunds lock").values().filter(|r| selector(r)).cloned().collect();
    found.sort_by(|a, b| (a.created_at, &a.refund_id).cmp(&(b.created_at, &b.refund_id)));
    let Some(first) = found.first() else {
        sim.record("request", endpoint, get("out_trade_no").as_deref(), 200, "REFUNDNOTEXIST".into());
        return super::v2::answer(&sim, sign_type, Fields::new(), Some(("REFUNDNOTEXIST", "退款单不存在")));
    };
    sim.record("request", endpoint, Some(&first.out_trade_no), 200, "refundquery".into());
    let now = OffsetDateTime::now_utc();
    let mut out: Fields = [
        ("out_trade_no", first.out_trade_no.clone()),
        ("transaction_id", first.transaction_id.clone()),
        ("total_fee", first.total.to_string()),
        ("cash_fee", first.total.to_string()),
        ("refund_count", found.len().to_string()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .into();
    for (i, r) in found.iter().enumerate() {
        let mut set = |k: &str, v: String| {
            out.insert(format!("{k}_{i}"), v);
        };
        set("out_refund_no", r.out_refund_no.clone());
        set("refund_id", r.refund_id.clone());
        set("refund_channel", "ORIGINAL".into());
        set("refund_fee", r.refund.to_string());
        set("settlement_refund_fee", r.refund.to_string());
        set("refund_status", v2_status(r.status_at(now)).into());
        set("refund_account", "REFUND_SOURCE_UNSETTLED_FUNDS".into());
        set("refund_recv_accout", RECEIVED_ACCOUNT.into());
        if let Some(at) = r.success_time_at(now) {
            set("refund_success_time", beijing_dashed(at));
        }
    }
    super::v2::answer(&sim, sign_type, out, None)
}
