//! The simulator's API v2: XML requests whose `sign` must verify under the APIv2 key; answers
//! signed the same way, with WeChat's two-level `return_code` / `result_code`
//! (docs/wechat-pay.md §2.1–§2.3).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::{Api, Conflict, NewOrder, Sim, SimOrder};
use crate::channel::TradeType;
use crate::wechat::v2::client::beijing_compact;
use crate::wechat::v2::sign::{SignType, sign, verify};
use crate::wechat::v2::xml;
use crate::wechat::v3::sign::nonce;

type Fields = BTreeMap<String, String>;

fn xml_response(fields: &Fields) -> Response {
    ([("content-type", "text/xml; charset=utf-8")], xml::write(fields)).into_response()
}

/// A communication-level failure (`return_code` FAIL): not signed.
pub(super) fn fail(message: &str) -> Response {
    let fields: Fields = [("return_code", "FAIL"), ("return_msg", message)].map(|(k, v)| (k.into(), v.into())).into();
    xml_response(&fields)
}

/// A signed answer: common fields, then `result_code` SUCCESS or FAIL with `err_code`.
pub(super) fn answer(sim: &Sim, sign_type: SignType, mut fields: Fields, error: Option<(&str, &str)>) -> Response {
    fields.insert("return_code".into(), "SUCCESS".into());
    fields.insert("return_msg".into(), "OK".into());
    fields.insert("appid".into(), sim.keys.appid.clone());
    fields.insert("mch_id".into(), sim.keys.mchid.clone());
    fields.insert("nonce_str".into(), nonce());
    match error {
        None => {
            fields.insert("result_code".into(), "SUCCESS".into());
        }
        Some((code, description)) => {
            fields.insert("result_code".into(), "FAIL".into());
            fields.insert("err_code".into(), code.into());
            fields.insert("err_code_des".into(), description.into());
        }
    }
    let signature = sign(&fields, &sim.keys.api_v2_key, sign_type);
    fields.insert("sign".into(), signature);
    xml_response(&fields)
}

/// Reads and verifies a request; answers its fields and sign type, or the `return_msg` of the
/// refusal.
pub(super) fn authenticate(sim: &Sim, endpoint: &str, body: &str) -> Result<(Fields, SignType), &'static str> {
    let Ok(fields) = xml::read(body) else {
        sim.record("request", endpoint, None, 200, "XML_FORMAT_ERROR".into());
        return Err("XML格式错误");
    };
    let sign_type = match fields.get("sign_type").map(String::as_str) {
        None | Some("") => SignType::Md5,
        Some(t) => SignType::parse(t).ok_or("sign_type 参数格式错误")?,
    };
    if fields.get("mch_id") != Some(&sim.keys.mchid) || fields.get("appid") != Some(&sim.keys.appid) {
        return Err("appid和mch_id不匹配");
    }
    if !verify(&fields, &sim.keys.api_v2_key, sign_type) {
        sim.record("request", endpoint, fields.get("out_trade_no").map(String::as_str), 200, "SIGNERROR".into());
        return Err("签名错误");
    }
    Ok((fields, sign_type))
}

pub(super) async fn unifiedorder(State(sim): State<Arc<Sim>>, body: String) -> Response {
    let endpoint = "/pay/unifiedorder";
    let (f, sign_type) = match authenticate(&sim, endpoint, &body) {
        Ok(ok) => ok,
        Err(message) => return fail(message),
    };
    let get = |k: &str| f.get(k).filter(|v| !v.is_empty()).cloned();
    let (Some(description), Some(no), Some(total), Some(_ip), Some(notify_url), Some(kind)) = (
        get("body"),
        get("out_trade_no"),
        get("total_fee"),
        get("spbill_create_ip"),
        get("notify_url"),
        get("trade_type"),
    ) else {
        return answer(&sim, sign_type, Fields::new(), Some(("LACK_PARAMS", "缺少参数")));
    };
    let Ok(total) = total.parse::<i64>() else {
        return answer(&sim, sign_type, Fields::new(), Some(("PARAM_ERROR", "total_fee 必须为整数(分)")));
    };
    let trade_type = match kind.as_str() {
        "JSAPI" => TradeType::Jsapi,
        "MWEB" => TradeType::H5,
        "NATIVE" => TradeType::Native,
        "APP" => TradeType::App,
        _ => return answer(&sim, sign_type, Fields::new(), Some(("PARAM_ERROR", "trade_type 有误"))),
    };
    let openid = get("openid");
    if total <= 0 || (trade_type == TradeType::Jsapi && openid.is_none()) {
        return answer(&sim, sign_type, Fields::new(), Some(("PARAM_ERROR", "参数错误")));
    }
    let outcome = sim
        .open_order(NewOrder {
            api: Api::V2,
            v2_sign_type: Some(sign_type.as_str().to_owned()),
            public_key_mode: false,
            appid: sim.keys.appid.clone(),
            mchid: sim.keys.mchid.clone(),
            out_trade_no: no.clone(),
            description,
            total,
            trade_type,
            openid,
            notify_url,
        })
        .map_err(|conflict| match conflict {
            Conflict::Paid => ("ORDERPAID", "该订单已支付"),
            Conflict::Closed => ("ORDERCLOSED", "订单已关闭"),
            Conflict::Used | Conflict::Missing => ("OUT_TRADE_NO_USED", "商户订单号重复"),
        });
    match outcome {
        Err((code, description)) => {
            sim.record("request", endpoint, Some(&no), 200, code.into());
            answer(&sim, sign_type, Fields::new(), Some((code, description)))
        }
        Ok(prepay_id) => {
            sim.record("request", endpoint, Some(&no), 200, format!("prepay {prepay_id}"));
            let mut out: Fields =
                [("prepay_id", prepay_id.clone()), ("trade_type", kind)].map(|(k, v)| (k.into(), v)).into();
            match trade_type {
                TradeType::Native => {
                    out.insert("code_url".into(), format!("weixin://wxpay/bizpayurl?pr={prepay_id}"));
                }
                TradeType::H5 => {
                    out.insert(
                        "mweb_url".into(),
                        format!("https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id={prepay_id}"),
                    );
                }
                _ => {}
            }
            answer(&sim, sign_type, out, None)
        }
    }
}

/// The trade as v2 reports it (query answers and notifies).
pub(super) fn trade_fields(order: &SimOrder) -> Fields {
    let mut f = Fields::new();
    let mut set = |k: &str, v: String| {
        if !v.is_empty() {
            f.insert(k.into(), v);
        }
    };
    let paid_total = order.paid_total.unwrap_or(order.total);
    set("out_trade_no", order.out_trade_no.clone());
    set("trade_state", order.state.as_str().to_owned());
    set("total_fee", paid_total.to_string());
    set("fee_type", "CNY".into());
    set("trade_type", order.trade_type.as_str().replace("H5", "MWEB"));
    if order.state.was_paid() {
        set("transaction_id", order.transaction_id.clone().unwrap_or_default());
        set("cash_fee", paid_total.to_string());
        set("openid", order.openid.clone().unwrap_or_default());
        set("bank_type", "OTHERS".into());
        set("is_subscribe", "N".into());
        set("time_end", order.success_time.map(beijing_compact).unwrap_or_default());
    }
    f
}

pub(super) async fn orderquery(State(sim): State<Arc<Sim>>, body: String) -> Response {
    let endpoint = "/pay/orderquery";
    let (f, sign_type) = match authenticate(&sim, endpoint, &body) {
        Ok(ok) => ok,
        Err(message) => return fail(message),
    };
    let no = f.get("out_trade_no").cloned().unwrap_or_default();
    let order = sim.orders.lock().expect("orders lock").get(&no).cloned();
    sim.record("request", endpoint, Some(&no), 200, if order.is_some() { "query" } else { "ORDERNOTEXIST" }.into());
    match order {
        Some(order) => answer(&sim, sign_type, trade_fields(&order), None),
        None => answer(&sim, sign_type, Fields::new(), Some(("ORDERNOTEXIST", "此交易订单号不存在"))),
    }
}

pub(super) async fn closeorder(State(sim): State<Arc<Sim>>, body: String) -> Response {
    let endpoint = "/pay/closeorder";
    let (f, sign_type) = match authenticate(&sim, endpoint, &body) {
        Ok(ok) => ok,
        Err(message) => return fail(message),
    };
    let no = f.get("out_trade_no").cloned().unwrap_or_default();
    let outcome = sim.close_order(&no).map_err(|conflict| match conflict {
        Conflict::Missing => ("ORDERNOTEXIST", "此交易订单号不存在"),
        _ => ("ORDERPAID", "订单已支付，不能发起关单"),
    });
    sim.record("request", endpoint, Some(&no), 200, outcome.err().map(|(c, _)| c).unwrap_or("closed").into());
    answer(&sim, sign_type, Fields::new(), outcome.err())
}
