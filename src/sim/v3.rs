//! The simulator's API v3: requests must carry a valid merchant `Authorization`; answers are
//! signed with WeChat's public key when the request names it in `Wechatpay-Serial`, else with
//! the platform certificate's key (docs/wechat-pay.md §3.2–§3.8).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use time::OffsetDateTime;

use super::{Api, Conflict, NewOrder, Sim, SimOrder};
use crate::channel::{TradeState, TradeType};
use crate::wechat::v3::client::beijing_rfc3339;
use crate::wechat::v3::sign::{Authorization, SCHEME, nonce, response_message, sign, within_window};
use crate::wechat::v3::types::{Amount, CloseRequest, Payer, PrepayRequest, Transaction};

/// Whether a request names WeChat's public key (public-key mode).
fn names_public_key(sim: &Sim, request: &HeaderMap) -> bool {
    request.get("wechatpay-serial").and_then(|v| v.to_str().ok()) == Some(sim.keys.public_key_id.as_str())
}

/// Answers signed as WeChat signs them.
fn sign_answer(sim: &Sim, request: &HeaderMap, status: StatusCode, body: Vec<u8>) -> Response {
    let wants_public_key = names_public_key(sim, request);
    let (key, serial) = if wants_public_key {
        (&sim.keys.wechat_key, sim.keys.public_key_id.as_str())
    } else {
        (&sim.keys.platform_key, sim.keys.platform_serial.as_str())
    };
    let timestamp = OffsetDateTime::now_utc().unix_timestamp().to_string();
    let nonce = nonce();
    let signature = sign(key, &response_message(&timestamp, &nonce, &body));
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    let mut set = |k: &'static str, v: &str| {
        h.insert(k, v.parse().expect("a header value"));
    };
    set("wechatpay-timestamp", &timestamp);
    set("wechatpay-nonce", &nonce);
    set("wechatpay-signature", &signature);
    set("wechatpay-serial", serial);
    set("wechatpay-signature-type", SCHEME);
    set("request-id", &uuid::Uuid::new_v4().to_string());
    if status != StatusCode::NO_CONTENT {
        set("content-type", "application/json");
    }
    response
}

pub(super) fn error(sim: &Sim, request: &HeaderMap, status: StatusCode, code: &str, message: &str) -> Response {
    sign_answer(
        sim,
        request,
        status,
        serde_json::to_vec(&json!({ "code": code, "message": message })).expect("serialises"),
    )
}

pub(super) fn ok_json(sim: &Sim, request: &HeaderMap, value: &impl serde::Serialize) -> Response {
    sign_answer(sim, request, StatusCode::OK, serde_json::to_vec(value).expect("serialises"))
}

/// Checks the merchant's `Authorization` as WeChat does; the refusal's message if it fails.
fn authenticate(sim: &Sim, method: &Method, uri: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(Authorization::parse) else {
        return Err("Authorization 格式错误或缺失");
    };
    if auth.mchid != sim.keys.mchid {
        return Err("商户号与签名不匹配");
    }
    if auth.serial_no != sim.keys.merchant_serial {
        return Err("商户证书序列号有误");
    }
    if !within_window(OffsetDateTime::now_utc().unix_timestamp(), auth.timestamp) {
        return Err("请求时间戳已过期");
    }
    let body = std::str::from_utf8(body).unwrap_or("");
    if !auth.verifies(&sim.keys.merchant_key.to_public_key(), method.as_str(), uri, body) {
        return Err("签名错误");
    }
    if !sim.fresh_nonce(&auth.nonce_str) {
        return Err("请求重放: nonce 已使用");
    }
    Ok(())
}

/// A v3 request whose merchant `Authorization` verified: its path and query as signed, its
/// headers and body. A request that does not verify is answered 401 SIGN_ERROR (and recorded).
pub(super) struct Signed {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl FromRequest<Arc<Sim>> for Signed {
    type Rejection = Response;

    async fn from_request(request: Request, sim: &Arc<Sim>) -> Result<Signed, Response> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
        let body = axum::body::to_bytes(body, 1 << 20)
            .await
            .map_err(|_| error(sim, &parts.headers, StatusCode::BAD_REQUEST, "PARAM_ERROR", "请求体过大"))?;
        if let Err(message) = authenticate(sim, &parts.method, &path, &parts.headers, &body) {
            sim.record("request", &path, None, 401, format!("SIGN_ERROR: {message}"));
            return Err(error(sim, &parts.headers, StatusCode::UNAUTHORIZED, "SIGN_ERROR", message));
        }
        Ok(Signed { path, headers: parts.headers, body })
    }
}

fn valid_out_trade_no(no: &str) -> bool {
    (6..=32).contains(&no.len()) && no.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-|*".contains(&b))
}

pub(super) fn transaction(order: &SimOrder) -> Transaction {
    let paid = order.state.was_paid();
    Transaction {
        appid: order.appid.clone(),
        mchid: order.mchid.clone(),
        out_trade_no: order.out_trade_no.clone(),
        transaction_id: order.transaction_id.clone(),
        trade_type: Some(order.trade_type.as_str().replace("H5", "MWEB")),
        trade_state: order.state.as_str().to_owned(),
        trade_state_desc: match order.state {
            TradeState::Success => "支付成功",
            TradeState::Notpay => "未支付",
            TradeState::Closed => "已关闭",
            _ => "",
        }
        .to_owned(),
        success_time: order.success_time.map(beijing_rfc3339),
        payer: order.openid.clone().filter(|_| paid).map(|openid| Payer { openid }),
        amount: Some(Amount {
            total: order.paid_total.unwrap_or(order.total),
            currency: Some("CNY".into()),
            payer_total: paid.then(|| order.paid_total.unwrap_or(order.total)),
            payer_currency: paid.then(|| "CNY".into()),
        }),
    }
}

pub(super) async fn prepay(State(sim): State<Arc<Sim>>, Path(kind): Path<String>, signed: Signed) -> Response {
    let Signed { path, headers, body } = signed;
    let path = path.as_str();
    let param_error = |message: &str| error(&sim, &headers, StatusCode::BAD_REQUEST, "PARAM_ERROR", message);
    let Ok(request) = serde_json::from_slice::<PrepayRequest>(&body) else {
        return param_error("请求体格式错误");
    };
    let trade_type = match kind.as_str() {
        "jsapi" => TradeType::Jsapi,
        "h5" => TradeType::H5,
        "native" => TradeType::Native,
        "app" => TradeType::App,
        _ => return error(&sim, &headers, StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", "无此接口"),
    };
    if request.mchid != sim.keys.mchid || request.appid != sim.keys.appid {
        return error(&sim, &headers, StatusCode::BAD_REQUEST, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配");
    }
    if !valid_out_trade_no(&request.out_trade_no) {
        return param_error("out_trade_no 格式错误");
    }
    if request.amount.total <= 0 {
        return param_error("amount.total 必须大于0");
    }
    if request.description.is_empty() || request.description.chars().count() > 127 {
        return param_error("description 长度有误");
    }
    if !(request.notify_url.starts_with("http://") || request.notify_url.starts_with("https://")) {
        return param_error("notify_url 格式错误");
    }
    let openid = request.payer.as_ref().map(|p| p.openid.clone()).filter(|o| !o.is_empty());
    if trade_type == TradeType::Jsapi && openid.is_none() {
        return param_error("JSAPI 下单需要 payer.openid");
    }
    if trade_type == TradeType::H5 && request.scene_info.as_ref().and_then(|s| s.h5_info.as_ref()).is_none() {
        return param_error("H5 下单需要 scene_info.h5_info");
    }

    let no = request.out_trade_no.clone();
    let answer = sim.open_order(NewOrder {
        api: Api::V3,
        v2_sign_type: None,
        public_key_mode: names_public_key(&sim, &headers),
        appid: request.appid.clone(),
        mchid: request.mchid.clone(),
        out_trade_no: no.clone(),
        description: request.description.clone(),
        total: request.amount.total,
        trade_type,
        openid,
        notify_url: request.notify_url.clone(),
    });
    match answer.map_err(|conflict| match conflict {
        Conflict::Paid => ("ORDERPAID", StatusCode::FORBIDDEN, "该订单已支付"),
        Conflict::Closed => ("ORDER_CLOSED", StatusCode::BAD_REQUEST, "订单已关闭"),
        Conflict::Used | Conflict::Missing => ("OUT_TRADE_NO_USED", StatusCode::FORBIDDEN, "商户订单号重复"),
    }) {
        Err((code, status, message)) => {
            sim.record("request", path, Some(&no), status.as_u16(), code.into());
            error(&sim, &headers, status, code, message)
        }
        Ok(prepay_id) => {
            sim.record("request", path, Some(&no), 200, format!("prepay {prepay_id}"));
            match trade_type {
                TradeType::Jsapi | TradeType::App => ok_json(&sim, &headers, &json!({ "prepay_id": prepay_id })),
                TradeType::H5 => ok_json(
                    &sim,
                    &headers,
                    &json!({ "h5_url": format!("https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id={prepay_id}&package=2150917749") }),
                ),
                TradeType::Native => {
                    ok_json(&sim, &headers, &json!({ "code_url": format!("weixin://wxpay/bizpayurl?pr={prepay_id}") }))
                }
            }
        }
    }
}

pub(super) async fn query(State(sim): State<Arc<Sim>>, Path(no): Path<String>, signed: Signed) -> Response {
    let Signed { path, headers, .. } = signed;
    let path = path.as_str();
    if path.split_once('?').map(|(_, query)| query) != Some(format!("mchid={}", sim.keys.mchid).as_str()) {
        return error(&sim, &headers, StatusCode::BAD_REQUEST, "PARAM_ERROR", "mchid 参数有误");
    }
    let order = sim.orders.lock().expect("orders lock").get(&no).cloned();
    sim.record("request", path, Some(&no), if order.is_some() { 200 } else { 404 }, "query".into());
    match order {
        Some(order) => ok_json(&sim, &headers, &transaction(&order)),
        None => error(&sim, &headers, StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在"),
    }
}

pub(super) async fn close(State(sim): State<Arc<Sim>>, Path(no): Path<String>, signed: Signed) -> Response {
    let Signed { path, headers, body } = signed;
    let path = path.as_str();
    match serde_json::from_slice::<CloseRequest>(&body) {
        Ok(r) if r.mchid == sim.keys.mchid => {}
        _ => return error(&sim, &headers, StatusCode::BAD_REQUEST, "PARAM_ERROR", "mchid 有误"),
    }
    let outcome = sim.close_order(&no).map_err(|conflict| match conflict {
        Conflict::Missing => (StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在"),
        _ => (StatusCode::BAD_REQUEST, "ORDERPAID", "订单已支付"),
    });
    match outcome {
        Ok(()) => {
            sim.record("request", path, Some(&no), 204, "closed".into());
            sign_answer(&sim, &headers, StatusCode::NO_CONTENT, Vec::new())
        }
        Err((status, code, message)) => {
            sim.record("request", path, Some(&no), status.as_u16(), code.into());
            error(&sim, &headers, status, code, message)
        }
    }
}
