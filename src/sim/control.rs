//! The control API a test (or the demo) drives the simulator with:
//!
//! - `POST /sim/pay {"out_trade_no", "fault"?, "delay_ms"?}`: the user pays the order; WeChat
//!   notifies. `fault`: `duplicate` (two notifies at once), `delay` (after `delay_ms`), `never`
//!   (paid, but no notify), `wrong_amount` (the user paid one fen more than the order).
//! - `POST /sim/forge {"out_trade_no", "forgery"}`: one forged notify (`bad_signature`,
//!   `stale_timestamp`, `replay_nonce`, `downgrade_md5`); answers the status the merchant
//!   answered with.
//! - `POST /sim/refund {"out_trade_no", "notify_url"?}`: the merchant refunds the whole order in
//!   WeChat's merchant platform (not through the API): it is SUCCESS at once, and with
//!   `notify_url` WeChat sends its REFUND.SUCCESS notify there.
//! - `POST /sim/refund-fault {"out_trade_no", "fault", "delay_ms"?}`: how the trade's refunds
//!   asked for through the API from now on settle (by default SUCCESS after 200 ms, then
//!   notified). `fault`: `never` (SUCCESS, but no notify: the merchant must query), `abnormal`
//!   (ABNORMAL, notified), `closed` (CLOSED, notified), `delay` (SUCCESS and notified after
//!   `delay_ms`, 3000 if not given), `refuse` (refused for good, `INVALID_REQUEST`, no refund
//!   made), or null to clear it. Refunds already made keep their course.
//! - `GET /sim/orders/{out_trade_no}`: the order as WeChat holds it.
//! - `GET /sim/records[?out_trade_no=…]`: what the simulator received and sent.
//! - `GET /sim/health`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::notifier::{self, Forgery};
use super::{Sim, SimOrder, refund};
use crate::channel::TradeState;

#[derive(Deserialize)]
struct PayRequest {
    out_trade_no: String,
    #[serde(default)]
    fault: Option<String>,
    #[serde(default)]
    delay_ms: u64,
}

#[derive(Deserialize)]
struct ForgeRequest {
    out_trade_no: String,
    forgery: Forgery,
}

#[derive(Deserialize)]
struct RefundRequest {
    out_trade_no: String,
    #[serde(default)]
    notify_url: Option<String>,
}

#[derive(Deserialize)]
struct RefundFaultRequest {
    out_trade_no: String,
    #[serde(default)]
    fault: Option<String>,
    #[serde(default)]
    delay_ms: Option<u64>,
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn pay(State(sim): State<Arc<Sim>>, Json(request): Json<PayRequest>) -> Response {
    let fault = request.fault.as_deref().unwrap_or("");
    if !matches!(fault, "" | "duplicate" | "delay" | "never" | "wrong_amount") {
        return refuse(StatusCode::BAD_REQUEST, "fault is one of duplicate, delay, never, wrong_amount");
    }
    let paid: Result<SimOrder, (StatusCode, &str)> = {
        let mut orders = sim.orders.lock().expect("orders lock");
        match orders.get_mut(&request.out_trade_no) {
            None => Err((StatusCode::NOT_FOUND, "no such order")),
            Some(o) if o.state != TradeState::Notpay => {
                Err((StatusCode::CONFLICT, "the order is not waiting for payment"))
            }
            Some(o) => {
                o.state = TradeState::Success;
                o.transaction_id = Some(sim.next_id("4200"));
                o.success_time = Some(OffsetDateTime::now_utc());
                o.openid = o.openid.clone().or_else(|| Some("oSimPayer000000000000000000".into()));
                if fault == "wrong_amount" {
                    o.paid_total = Some(o.total + 1);
                }
                Ok(o.clone())
            }
        }
    };
    let order = match paid {
        Ok(order) => order,
        Err((status, message)) => return refuse(status, message),
    };
    sim.record("control", "/sim/pay", Some(&order.out_trade_no), 200, format!("paid, fault {fault:?}"));
    match fault {
        "never" => {}
        "duplicate" => notifier::deliver(sim.clone(), order.clone(), 2, Duration::ZERO),
        "delay" => notifier::deliver(sim.clone(), order.clone(), 1, Duration::from_millis(request.delay_ms)),
        _ => notifier::deliver(sim.clone(), order.clone(), 1, Duration::ZERO),
    }
    Json(order).into_response()
}

async fn forge(State(sim): State<Arc<Sim>>, Json(request): Json<ForgeRequest>) -> Response {
    let order = sim.orders.lock().expect("orders lock").get(&request.out_trade_no).cloned();
    let Some(order) = order else { return refuse(StatusCode::NOT_FOUND, "no such order") };
    match notifier::forge(&sim, &order, request.forgery).await {
        Ok(status) => Json(json!({ "merchant_status": status })).into_response(),
        Err(message) => refuse(StatusCode::CONFLICT, &message),
    }
}

async fn refund(State(sim): State<Arc<Sim>>, Json(request): Json<RefundRequest>) -> Response {
    let paid =
        sim.orders.lock().expect("orders lock").get(&request.out_trade_no).map(|o| o.paid_total.unwrap_or(o.total));
    let Some(total) = paid else { return refuse(StatusCode::NOT_FOUND, "no such order") };
    let out_refund_no = format!("MP{}", request.out_trade_no);
    let no = Some(request.out_trade_no.as_str());
    let ask = refund::Ask {
        out_trade_no: no,
        transaction_id: None,
        out_refund_no: &out_refund_no,
        refund: total,
        total,
        notify_url: request.notify_url,
        via: refund::Via::MerchantPlatform,
    };
    match refund::apply(&sim, ask) {
        Ok(made) => {
            sim.record("control", "/sim/refund", no, 200, format!("refunded {}", made.out_refund_no));
            Json(refund::view(&made, OffsetDateTime::now_utc())).into_response()
        }
        Err((status, _, _, message)) => refuse(status, message),
    }
}

async fn refund_fault(State(sim): State<Arc<Sim>>, Json(request): Json<RefundFaultRequest>) -> Response {
    let fault = match request.fault.as_deref().map(|name| refund::Fault::parse(name, request.delay_ms)) {
        None => None,
        Some(Some(fault)) => Some(fault),
        Some(None) => {
            return refuse(StatusCode::BAD_REQUEST, "fault is one of never, abnormal, closed, delay, or null");
        }
    };
    let no = request.out_trade_no;
    {
        let mut faults = sim.refund_faults.lock().expect("refund faults lock");
        match fault {
            Some(fault) => faults.insert(no.clone(), fault),
            None => faults.remove(&no),
        };
    }
    sim.record("control", "/sim/refund-fault", Some(&no), 200, format!("refund fault {fault:?}"));
    let delay_ms = match fault {
        Some(refund::Fault::Delay(after)) => Some(after.as_millis() as u64),
        _ => None,
    };
    Json(json!({ "out_trade_no": no, "fault": request.fault, "delay_ms": delay_ms })).into_response()
}

async fn order(State(sim): State<Arc<Sim>>, Path(no): Path<String>) -> Response {
    match sim.orders.lock().expect("orders lock").get(&no) {
        Some(order) => Json(order).into_response(),
        None => refuse(StatusCode::NOT_FOUND, "no such order"),
    }
}

async fn records(State(sim): State<Arc<Sim>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let records = sim.records.lock().expect("records lock");
    let wanted = query.get("out_trade_no");
    let selected: Vec<_> = records.iter().filter(|r| wanted.is_none() || r.out_trade_no.as_ref() == wanted).collect();
    Json(selected).into_response()
}

pub(super) fn router() -> Router<Arc<Sim>> {
    Router::new()
        .route("/sim/pay", post(pay))
        .route("/sim/forge", post(forge))
        .route("/sim/refund", post(refund))
        .route("/sim/refund-fault", post(refund_fault))
        .route("/sim/orders/{no}", get(order))
        .route("/sim/records", get(records))
        .route("/sim/health", get(|| async { Json(json!({ "alive": true })) }))
}
