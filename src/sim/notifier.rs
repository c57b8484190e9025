//! Sending notifies as WeChat does: v3 JSON with the transaction (or refund) encrypted under the
//! APIv3 key and `Wechatpay-*` headers signed with WeChat's key (fresh timestamp, nonce and
//! signature on every retry); v2 signed XML for payments, and for refunds unsigned XML with the
//! refund sealed in `req_info`; retried on the schedule until the merchant answers success.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::{Api, Sim, SimOrder, SimRefund};
use crate::channel::{RefundState, TradeState};
use crate::wechat::v2::sign::{SignType, sign as v2_sign};
use crate::wechat::v2::{req_info, xml};
use crate::wechat::v3::client::beijing_rfc3339;
use crate::wechat::v3::crypto::encrypt_resource;
use crate::wechat::v3::sign::{SCHEME, nonce, response_message, sign};
use crate::wechat::v3::types::{Notify, Resource};

/// A notify as sent, kept for the replay fault.
#[derive(Clone)]
pub(super) struct Sent {
    url: String,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

/// A forged notify's flaw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Forgery {
    /// Signed with a key that is not WeChat's.
    BadSignature,
    /// Properly signed, ten minutes old.
    StaleTimestamp,
    /// The last genuine notify of the order, sent again as it was.
    ReplayNonce,
    /// v2: signed with the real APIv2 key, but MD5 where the order was created with
    /// HMAC-SHA256 (a sign-type downgrade).
    DowngradeMd5,
}

/// The notify body of an order's current (paid) state; the same across retries.
fn body(sim: &Sim, order: &SimOrder) -> Vec<u8> {
    match order.api {
        Api::V3 => {
            let transaction = serde_json::to_vec(&super::v3::transaction(order)).expect("serialises");
            let resource_nonce: String = nonce()[..12].to_owned();
            let notify = Notify {
                id: uuid::Uuid::new_v4().to_string(),
                create_time: beijing_rfc3339(OffsetDateTime::now_utc()),
                event_type: "TRANSACTION.SUCCESS".into(),
                resource_type: "encrypt-resource".into(),
                summary: Some("支付成功".into()),
                resource: Resource {
                    original_type: "transaction".into(),
                    algorithm: "AEAD_AES_256_GCM".into(),
                    ciphertext: encrypt_resource(
                        sim.keys.api_v3_key.as_bytes(),
                        &resource_nonce,
                        "transaction",
                        &transaction,
                    ),
                    associated_data: Some("transaction".into()),
                    nonce: resource_nonce,
                },
            };
            serde_json::to_vec(&notify).expect("serialises")
        }
        Api::V2 => {
            let mut fields = super::v2::trade_fields(order);
            // A pay notify carries result_code, not trade_state.
            fields.remove("trade_state");
            for (k, v) in [("return_code", "SUCCESS"), ("return_msg", "OK"), ("result_code", "SUCCESS")] {
                fields.insert(k.into(), v.into());
            }
            fields.insert("appid".into(), order.appid.clone());
            fields.insert("mch_id".into(), order.mchid.clone());
            fields.insert("nonce_str".into(), nonce());
            // Signed with the order's sign type, which (as WeChat often does) it does not name.
            let sign_type = order.v2_sign_type.as_deref().and_then(SignType::parse).unwrap_or(SignType::Md5);
            fields.insert("sign".into(), v2_sign(&fields, &sim.keys.api_v2_key, sign_type));
            xml::write(&fields).into_bytes()
        }
    }
}

/// Fresh v3 headers over `body`, signed with the key of the order's mode (or `key`, for
/// forgeries).
fn v3_headers(
    sim: &Sim,
    public_key_mode: bool,
    body: &[u8],
    age_secs: i64,
    key: Option<&rsa::PrivateKey>,
) -> Vec<(String, String)> {
    let timestamp = (OffsetDateTime::now_utc().unix_timestamp() - age_secs).to_string();
    let nonce = nonce();
    let (own_key, serial) = if public_key_mode {
        (&sim.keys.wechat_key, &sim.keys.public_key_id)
    } else {
        (&sim.keys.platform_key, &sim.keys.platform_serial)
    };
    let signature = sign(key.unwrap_or(own_key), &response_message(&timestamp, &nonce, body));
    vec![
        ("Wechatpay-Timestamp".into(), timestamp),
        ("Wechatpay-Nonce".into(), nonce),
        ("Wechatpay-Signature".into(), signature),
        ("Wechatpay-Serial".into(), serial.clone()),
        ("Wechatpay-Signature-Type".into(), SCHEME.into()),
        ("Content-Type".into(), "application/json".into()),
    ]
}

/// Posts once; answers the HTTP status (0 if unreachable) and whether WeChat would call it a
/// success.
async fn post(sim: &Sim, api: Api, url: &str, body: &[u8], headers: &[(String, String)]) -> (u16, bool) {
    let mut request = sim.http.post(url).body(body.to_vec());
    for (k, v) in headers {
        request = request.header(k, v);
    }
    if api == Api::V2 {
        request = request.header("Content-Type", "text/xml");
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let success = match api {
                Api::V3 => status == 200 || status == 204,
                Api::V2 => {
                    status == 200
                        && xml::read(&text).ok().and_then(|f| f.get("return_code").cloned()).as_deref()
                            == Some("SUCCESS")
                }
            };
            (status, success)
        }
        Err(_) => (0, false),
    }
}

/// Delivers the order's notify `copies` times at once (1, or 2 for the duplicate fault) after
/// `delay`, each retried on the schedule until answered with success.
pub(super) fn deliver(sim: Arc<Sim>, order: SimOrder, copies: usize, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let body = body(&sim, &order);
        let sends = (0..copies).map(|_| deliver_one(&sim, &order, &body));
        futures_util::future::join_all(sends).await;
    });
}

async fn deliver_one(sim: &Sim, order: &SimOrder, body: &[u8]) {
    let url = &order.notify_url;
    let answered =
        send_until_answered(sim, order.api, order.public_key_mode, url, &order.out_trade_no, body, "attempt").await;
    if let Some(headers) = answered {
        let sent = Sent { url: url.clone(), body: body.to_vec(), headers };
        sim.sent.lock().expect("sent lock").insert(order.out_trade_no.clone(), sent);
    }
}

/// Posts `body` until the merchant answers success or the schedule is used up, with fresh v3
/// headers on every attempt, each recorded as `{label} {n}`; answers the headers of the attempt
/// that succeeded.
async fn send_until_answered(
    sim: &Sim,
    api: Api,
    public_key_mode: bool,
    url: &str,
    out_trade_no: &str,
    body: &[u8],
    label: &str,
) -> Option<Vec<(String, String)>> {
    for attempt in 0..=sim.schedule.len() {
        let headers = if api == Api::V3 { v3_headers(sim, public_key_mode, body, 0, None) } else { Vec::new() };
        let (status, success) = post(sim, api, url, body, &headers).await;
        sim.record("notify", url, Some(out_trade_no), status, format!("{label} {}", attempt + 1));
        if success {
            return Some(headers);
        }
        match sim.schedule.get(attempt) {
            Some(wait) => tokio::time::sleep(*wait).await,
            None => tracing::warn!(%out_trade_no, label, "notify retries used up; the merchant must query"),
        }
    }
    None
}

/// The notify body of a settled refund, the same across retries. v3: a REFUND.* event whose
/// resource is the refund under the APIv3 key. v2: unsigned XML whose `req_info` seals the
/// refund with the APIv2 key (the seal stands in for the sign; `wechat::v2::req_info`).
fn refund_body(sim: &Sim, refund: &SimRefund) -> Vec<u8> {
    match refund.api {
        Api::V3 => {
            let (event_type, summary) = match refund.outcome {
                RefundState::Abnormal => ("REFUND.ABNORMAL", "退款异常"),
                RefundState::Closed => ("REFUND.CLOSED", "退款关闭"),
                RefundState::Success | RefundState::Processing => ("REFUND.SUCCESS", "退款成功"),
            };
            let plain = serde_json::to_vec(&super::refund::v3_notify_resource(sim, refund)).expect("serialises");
            let resource_nonce: String = nonce()[..12].to_owned();
            let notify = Notify {
                id: uuid::Uuid::new_v4().to_string(),
                create_time: beijing_rfc3339(OffsetDateTime::now_utc()),
                event_type: event_type.into(),
                resource_type: "encrypt-resource".into(),
                summary: Some(summary.into()),
                resource: Resource {
                    original_type: "refund".into(),
                    algorithm: "AEAD_AES_256_GCM".into(),
                    ciphertext: encrypt_resource(sim.keys.api_v3_key.as_bytes(), &resource_nonce, "refund", &plain),
                    associated_data: Some("refund".into()),
                    nonce: resource_nonce,
                },
            };
            serde_json::to_vec(&notify).expect("serialises")
        }
        Api::V2 => {
            // The sealed document is rooted at <root>, not <xml>; `xml::read` takes either.
            let flat = xml::write(&super::refund::v2_notify_fields(refund));
            let inner = flat.strip_prefix("<xml>").and_then(|f| f.strip_suffix("</xml>")).expect("an <xml> body");
            let fields: BTreeMap<String, String> = [
                ("return_code", "SUCCESS".to_owned()),
                ("appid", sim.keys.appid.clone()),
                ("mch_id", sim.keys.mchid.clone()),
                ("nonce_str", nonce()),
                ("req_info", req_info::encrypt(&sim.keys.api_v2_key, &format!("<root>{inner}</root>"))),
            ]
            .map(|(k, v)| (k.to_owned(), v))
            .into();
            xml::write(&fields).into_bytes()
        }
    }
}

/// Sends a refund's notify to its notify_url once it settles (not before: WeChat notifies the
/// outcome, never PROCESSING), retried on the schedule; nothing without a notify_url or under
/// the `never` fault.
pub(super) fn deliver_refund(sim: Arc<Sim>, refund: SimRefund) {
    let Some(url) = refund.notify_url.clone().filter(|_| refund.notify) else { return };
    tokio::spawn(async move {
        let wait = refund.settles_at - OffsetDateTime::now_utc();
        if wait.is_positive() {
            tokio::time::sleep(wait.unsigned_abs()).await;
        }
        let body = refund_body(&sim, &refund);
        send_until_answered(
            &sim,
            refund.api,
            refund.public_key_mode,
            &url,
            &refund.out_trade_no,
            &body,
            "refund attempt",
        )
        .await;
    });
}

/// Sends one forged notify for an order and answers the status the merchant answered.
pub(super) async fn forge(sim: &Sim, order: &SimOrder, forgery: Forgery) -> Result<u16, String> {
    let (url, body, headers) = match forgery {
        Forgery::ReplayNonce => {
            let sent = sim.sent.lock().expect("sent lock").get(&order.out_trade_no).cloned();
            let sent = sent.ok_or("no genuine notify of this order was delivered yet")?;
            (sent.url, sent.body, sent.headers)
        }
        Forgery::DowngradeMd5 => {
            if order.api != Api::V2 {
                return Err("downgrade_md5 forges a v2 notify".into());
            }
            let claimed = SimOrder {
                state: TradeState::Success,
                transaction_id: Some(sim.next_id("4200")),
                success_time: Some(OffsetDateTime::now_utc()),
                ..order.clone()
            };
            let mut fields: BTreeMap<String, String> =
                xml::read(std::str::from_utf8(&body(sim, &claimed)).unwrap_or("")).unwrap_or_default();
            fields.insert("sign".into(), v2_sign(&fields, &sim.keys.api_v2_key, SignType::Md5));
            (order.notify_url.clone(), xml::write(&fields).into_bytes(), Vec::new())
        }
        Forgery::BadSignature | Forgery::StaleTimestamp => {
            // The forger claims the order was paid.
            let claimed = SimOrder {
                state: TradeState::Success,
                transaction_id: Some(sim.next_id("4200")),
                success_time: Some(OffsetDateTime::now_utc()),
                ..order.clone()
            };
            let body = body(sim, &claimed);
            let stranger;
            let (age, key) = match forgery {
                Forgery::StaleTimestamp => (600, None),
                _ => {
                    stranger = rsa::PrivateKey::new(&mut rand::rng(), 2048).map_err(|e| e.to_string())?;
                    (0, Some(&stranger))
                }
            };
            let body = match (order.api, forgery) {
                // v2 has no headers: a forger without the APIv2 key signs with a key of its own.
                (Api::V2, Forgery::BadSignature) => {
                    let mut fields: BTreeMap<String, String> =
                        xml::read(std::str::from_utf8(&body).unwrap_or("")).unwrap_or_default();
                    fields.insert("sign".into(), v2_sign(&fields, "0123456789abcdef0123456789abcdef", SignType::Md5));
                    xml::write(&fields).into_bytes()
                }
                _ => body,
            };
            let headers =
                if order.api == Api::V3 { v3_headers(sim, order.public_key_mode, &body, age, key) } else { Vec::new() };
            (order.notify_url.clone(), body, headers)
        }
    };
    let (status, _) = post(sim, order.api, &url, &body, &headers).await;
    sim.record("notify", &url, Some(&order.out_trade_no), status, format!("forged: {forgery:?}"));
    Ok(status)
}
