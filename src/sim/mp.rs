//! The simulator's mini-program server API (docs/wechat-pay.md §6): access tokens
//! (`GET /cgi-bin/token`, `POST /cgi-bin/stable_token`) and 发货信息录入
//! (`POST /wxa/sec/order/upload_shipping_info?access_token=…`) with WeChat's error codes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::Sim;

fn errcode(code: i64, message: &str) -> Response {
    Json(json!({ "errcode": code, "errmsg": message })).into_response()
}

/// A new token; it replaces the previous one (as `/cgi-bin/token` does at WeChat).
fn issue(sim: &Sim, force: bool) -> Response {
    let mut token = sim.access_token.lock().expect("token lock");
    let now = OffsetDateTime::now_utc();
    let current = token.as_ref().filter(|(_, expires)| *expires > now + time::Duration::minutes(5));
    let value = match current {
        Some((value, _)) if !force => value.clone(),
        _ => {
            let value: String = (0..4).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
            *token = Some((value.clone(), now + time::Duration::hours(2)));
            value
        }
    };
    Json(json!({ "access_token": value, "expires_in": 7200 })).into_response()
}

/// The errcode and errmsg of bad credentials, if they are.
fn check_credentials(
    sim: &Sim,
    grant_type: Option<&str>,
    appid: Option<&str>,
    secret: Option<&str>,
) -> Result<(), (i64, &'static str)> {
    if grant_type != Some("client_credential") {
        return Err((40002, "invalid grant_type"));
    }
    if appid != Some(sim.keys.appid.as_str()) {
        return Err((40013, "invalid appid"));
    }
    if secret != Some(sim.keys.app_secret.as_str()) {
        return Err((40125, "invalid appsecret"));
    }
    Ok(())
}

pub(super) async fn token(State(sim): State<Arc<Sim>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).map(String::as_str);
    match check_credentials(&sim, get("grant_type"), get("appid"), get("secret")) {
        // Every /cgi-bin/token call replaces the token, whoever holds the old one.
        Ok(()) => issue(&sim, true),
        Err((code, message)) => errcode(code, message),
    }
}

#[derive(Deserialize)]
pub(super) struct StableToken {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    force_refresh: bool,
}

pub(super) async fn stable_token(State(sim): State<Arc<Sim>>, Json(body): Json<StableToken>) -> Response {
    match check_credentials(&sim, body.grant_type.as_deref(), body.appid.as_deref(), body.secret.as_deref()) {
        Ok(()) => issue(&sim, body.force_refresh),
        Err((code, message)) => errcode(code, message),
    }
}

/// Validates an upload as WeChat does and records it; at most one re-shipment per payment.
fn upload(sim: &Sim, body: &Value) -> Result<String, (i64, &'static str)> {
    let key = &body["order_key"];
    let out_trade_no = match key["order_number_type"].as_i64() {
        Some(1) => {
            let mchid = key["mchid"].as_str().filter(|s| !s.is_empty()).ok_or((268485196, "mchid is required"))?;
            if mchid != sim.keys.mchid {
                return Err((10060001, "payment not found"));
            }
            key["out_trade_no"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or((268485197, "out_trade_no is required"))?
                .to_owned()
        }
        Some(2) => {
            let transaction_id = key["transaction_id"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or((268485195, "transaction_id is required"))?;
            let orders = sim.orders.lock().expect("orders lock");
            let order = orders.values().find(|o| o.transaction_id.as_deref() == Some(transaction_id));
            order.map(|o| o.out_trade_no.clone()).ok_or((10060001, "payment not found"))?
        }
        _ => return Err((268485194, "invalid order_number_type")),
    };
    let logistics = body["logistics_type"].as_i64().unwrap_or(0);
    if !(1..=4).contains(&logistics) {
        return Err((10060005, "invalid logistics_type"));
    }
    let mode = body["delivery_mode"].as_i64().unwrap_or(0);
    if !(1..=2).contains(&mode) {
        return Err((268485224, "invalid delivery_mode"));
    }
    let Some(list) = body["shipping_list"].as_array() else {
        return Err((47001, "data format error: shipping_list must be an array"));
    };
    if list.is_empty() || list.len() > 15 {
        return Err((10060024, "shipping_list must hold 1 to 15 items"));
    }
    if mode == 1 && list.len() != 1 {
        return Err((268485228, "unified delivery needs exactly one shipping item"));
    }
    if mode == 2 && logistics != 1 {
        return Err((10060006, "split delivery is for express only"));
    }
    if mode == 2 && !body["is_all_delivered"].is_boolean() {
        return Err((10060007, "split delivery needs is_all_delivered"));
    }
    for item in list {
        let desc = item["item_desc"].as_str().unwrap_or("");
        if desc.is_empty() {
            return Err((10060008, "item_desc is empty"));
        }
        if desc.chars().count() > 120 {
            return Err((10060009, "item_desc is too long"));
        }
        if logistics == 1 {
            if item["tracking_no"].as_str().is_none_or(str::is_empty) {
                return Err((268485226, "tracking_no is required for express"));
            }
            if item["express_company"].as_str().is_none_or(str::is_empty) {
                return Err((268485227, "express_company is required for express"));
            }
        }
    }
    let upload_time = body["upload_time"].as_str().unwrap_or("");
    if OffsetDateTime::parse(upload_time, &time::format_description::well_known::Rfc3339).is_err() {
        return Err((268485216, "upload_time must be RFC 3339"));
    }
    let openid = body["payer"]["openid"].as_str().unwrap_or("");
    let orders = sim.orders.lock().expect("orders lock");
    let order = orders.get(&out_trade_no).ok_or((10060001, "payment not found"))?;
    if !order.state.was_paid() {
        return Err((10060001, "payment not found"));
    }
    if order.openid.as_deref() != Some(openid) {
        return Err((10060031, "payment does not belong to this openid"));
    }
    if order.state == crate::channel::TradeState::Refund {
        return Err((10060004, "payment cannot be shipped (refunded)"));
    }
    let mut shipments = sim.shipments.lock().expect("shipments lock");
    let count = shipments.entry(out_trade_no.clone()).or_insert(0);
    if *count >= 2 {
        return Err((10060003, "the re-shipment chance is already used"));
    }
    *count += 1;
    Ok(out_trade_no)
}

pub(super) async fn upload_shipping_info(
    State(sim): State<Arc<Sim>>,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    let valid = {
        let token = sim.access_token.lock().expect("token lock");
        token.as_ref().is_some_and(|(value, expires)| {
            Some(value) == q.get("access_token") && *expires > OffsetDateTime::now_utc()
        })
    };
    if !valid {
        return errcode(40001, "invalid credential, access_token is invalid or not latest");
    }
    match upload(&sim, &body) {
        Ok(out_trade_no) => {
            sim.record("request", "/wxa/sec/order/upload_shipping_info", Some(&out_trade_no), 200, "shipped".into());
            errcode(0, "ok")
        }
        Err((code, message)) => {
            sim.record("request", "/wxa/sec/order/upload_shipping_info", None, 200, format!("errcode {code}"));
            errcode(code, message)
        }
    }
}
