//! The API v3 client: every request signed with the merchant key (`Authorization`), every
//! success answer verified against WeChat's key named by `Wechatpay-Serial`, and notifies
//! verified and decrypted.

use reqwest::Method;
use rsa::PrivateKey;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::crypto::{PlatformKeys, SignedHeaders, VerifyError, decrypt_resource};
use super::sign::{Authorization, nonce, pay_sign_message, sign};
use super::types::{
    Amount, CloseRequest, ErrorBody, H5Info, Notify, Payer, PrepayRequest, PrepayResponse, Refund, RefundAmount,
    RefundRequest, SceneInfo, Transaction,
};
use crate::channel::{
    ChannelError, ChannelRefund, Prepaid, PrepayOrder, RefundOrder, RefundState, Trade, TradeState, TradeType,
};

/// Everything the v3 client needs, resolved from settings.
pub struct Client {
    pub(crate) http: reqwest::Client,
    /// `https://api.mch.weixin.qq.com`, or wechat-sim.
    pub(crate) base: String,
    pub(crate) appid: String,
    pub(crate) mchid: String,
    pub(crate) notify_url: String,
    /// Where WeChat sends the notifies of our refunds.
    pub(crate) refund_notify_url: String,
    /// The merchant API certificate's serial, named in `Authorization`.
    pub(crate) merchant_serial: String,
    pub(crate) merchant_key: PrivateKey,
    pub(crate) api_v3_key: SecretString,
    pub(crate) platform: PlatformKeys,
    /// In public-key mode, sent as `Wechatpay-Serial` so answers come signed with that key.
    pub(crate) public_key_id: Option<String>,
}

/// A verified v3 notify: a payment's trade, decrypted, or a genuine event of another kind.
#[derive(Clone, Debug)]
pub enum VerifiedNotify {
    /// `TRANSACTION.SUCCESS` with a `transaction` resource.
    Transaction { id: String, event_type: String, trade: Trade },
    /// `REFUND.SUCCESS`, `REFUND.ABNORMAL` or `REFUND.CLOSED` with a `refund` resource.
    Refund { id: String, event_type: String, mchid: String, refund: ChannelRefund },
    /// Signed by WeChat, but of a kind nothing here settles from.
    Other { id: String, event_type: String, original_type: String },
}

/// The refund events a refund notify settles from.
pub const REFUND_EVENTS: [&str; 3] = ["REFUND.SUCCESS", "REFUND.ABNORMAL", "REFUND.CLOSED"];

/// The only event a pay notify settles from: WeChat notifies successful payments only.
pub const TRANSACTION_SUCCESS: &str = "TRANSACTION.SUCCESS";

pub(crate) fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// RFC 3339 in Beijing time, as WeChat writes its times.
pub fn beijing_rfc3339(t: OffsetDateTime) -> String {
    let beijing = time::UtcOffset::from_hms(8, 0, 0).expect("a valid offset");
    t.to_offset(beijing)
        .replace_nanosecond(0)
        .expect("0 ns is valid")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formats")
}

impl Client {
    /// Sends a signed request; answers the raw body of a verified 2xx answer.
    async fn call(&self, method: Method, path: &str, body: Option<String>) -> Result<Vec<u8>, ChannelError> {
        let body_text = body.unwrap_or_default();
        let auth = Authorization::sign(
            &self.merchant_key,
            &self.mchid,
            &self.merchant_serial,
            (method.as_str(), path, &body_text),
            now(),
            &nonce(),
        );
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", auth.header())
            .header("Accept", "application/json")
            .header("User-Agent", concat!("payfleet/", env!("CARGO_PKG_VERSION")));
        if let Some(id) = &self.public_key_id {
            request = request.header("Wechatpay-Serial", id);
        }
        if !body_text.is_empty() {
            request = request.header("Content-Type", "application/json").body(body_text);
        }
        let response =
            request.send().await.map_err(|e| ChannelError::Transient(format!("WeChat Pay unreachable: {e}")))?;
        let status = response.status();
        let headers = signed_headers(response.headers());
        let bytes = response.bytes().await.map_err(|e| ChannelError::Transient(e.to_string()))?.to_vec();
        if status.is_success() {
            self.platform.verify(&headers, &bytes, now()).map_err(|e| ChannelError::Forged(e.to_string()))?;
            return Ok(bytes);
        }
        let error: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
            code: status.as_str().to_owned(),
            message: String::from_utf8_lossy(&bytes).into_owned(),
        });
        Err(map_error(status.as_u16(), error))
    }

    /// Verifies a v3 notify and decrypts a payment's resource. `now` checks the timestamp
    /// window (on arrival); None checks the signature alone (a notify verified on arrival and
    /// checked again after waiting in a queue).
    pub fn verify_notify(
        &self,
        headers: &SignedHeaders,
        body: &[u8],
        now: Option<i64>,
    ) -> Result<VerifiedNotify, VerifyError> {
        match now {
            Some(now) => self.platform.verify(headers, body, now)?,
            None => self.platform.verify_signature(headers, body)?,
        }
        let notify: Notify =
            serde_json::from_slice(body).map_err(|e| VerifyError::Decrypt(format!("not a v3 notify body: {e}")))?;
        let kind = match (notify.event_type.as_str(), notify.resource.original_type.as_str()) {
            (TRANSACTION_SUCCESS, "transaction") => "transaction",
            (event, "refund") if REFUND_EVENTS.contains(&event) => "refund",
            _ => {
                return Ok(VerifiedNotify::Other {
                    id: notify.id,
                    event_type: notify.event_type,
                    original_type: notify.resource.original_type,
                });
            }
        };
        if notify.resource.algorithm != "AEAD_AES_256_GCM" {
            return Err(VerifyError::Decrypt(format!("algorithm {}", notify.resource.algorithm)));
        }
        let plain = decrypt_resource(
            self.api_v3_key.expose_secret().as_bytes(),
            &notify.resource.nonce,
            notify.resource.associated_data.as_deref().unwrap_or(""),
            &notify.resource.ciphertext,
        )?;
        if kind == "refund" {
            #[derive(serde::Deserialize)]
            struct RefundResource {
                #[serde(default)]
                mchid: String,
                #[serde(flatten)]
                refund: Refund,
            }
            let resource: RefundResource = serde_json::from_slice(&plain)
                .map_err(|e| VerifyError::Decrypt(format!("the resource is not a refund: {e}")))?;
            let refund = to_refund(resource.refund).map_err(VerifyError::Decrypt)?;
            return Ok(VerifiedNotify::Refund {
                id: notify.id,
                event_type: notify.event_type,
                mchid: resource.mchid,
                refund,
            });
        }
        let transaction: Transaction = serde_json::from_slice(&plain)
            .map_err(|e| VerifyError::Decrypt(format!("the resource is not a transaction: {e}")))?;
        let trade = to_trade(transaction).map_err(VerifyError::Decrypt)?;
        Ok(VerifiedNotify::Transaction { id: notify.id, event_type: notify.event_type, trade })
    }
}

/// The `Wechatpay-*` headers of an answer or notify.
pub fn signed_headers(headers: &reqwest::header::HeaderMap) -> SignedHeaders {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    SignedHeaders {
        timestamp: get("wechatpay-timestamp"),
        nonce: get("wechatpay-nonce"),
        signature: get("wechatpay-signature"),
        serial: get("wechatpay-serial"),
    }
}

fn map_error(status: u16, e: ErrorBody) -> ChannelError {
    match e.code.as_str() {
        "ORDER_NOT_EXIST" | "ORDERNOTEXIST" | "RESOURCE_NOT_EXISTS" => ChannelError::NotFound,
        "ORDERPAID" | "ORDER_PAID" => ChannelError::AlreadyPaid,
        "ORDER_CLOSED" | "ORDERCLOSED" => ChannelError::Closed,
        "SYSTEM_ERROR" | "SYSTEMERROR" | "BANK_ERROR" | "FREQUENCY_LIMITED" | "NOT_ENOUGH" => {
            ChannelError::Transient(format!("{}: {}", e.code, e.message))
        }
        _ if status >= 500 || status == 429 => ChannelError::Transient(format!("{}: {}", e.code, e.message)),
        _ => ChannelError::Refused { code: e.code, message: e.message },
    }
}

/// A v3 Refund (answer, query or decrypted notify) as the channel layer's `ChannelRefund`.
pub fn to_refund(r: Refund) -> Result<ChannelRefund, String> {
    let state = RefundState::parse(&r.status).ok_or_else(|| format!("unknown refund status {:?}", r.status))?;
    let success_time = match r.success_time.as_deref() {
        Some(s) if !s.is_empty() => Some(
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("success_time {s:?}: {e}"))?,
        ),
        _ => None,
    };
    Ok(ChannelRefund {
        out_trade_no: r.out_trade_no,
        out_refund_no: r.out_refund_no,
        refund_id: r.refund_id.filter(|id| !id.is_empty()),
        state,
        refund_fen: r.amount.refund,
        success_time,
    })
}

/// A v3 Transaction as the channel layer's `Trade`.
pub fn to_trade(t: Transaction) -> Result<Trade, String> {
    let trade_state =
        TradeState::parse(&t.trade_state).ok_or_else(|| format!("unknown trade_state {}", t.trade_state))?;
    let success_time = match t.success_time.as_deref() {
        Some(s) if !s.is_empty() => Some(
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("success_time {s:?}: {e}"))?,
        ),
        _ => None,
    };
    Ok(Trade {
        appid: t.appid,
        mchid: t.mchid,
        out_trade_no: t.out_trade_no,
        transaction_id: t.transaction_id,
        trade_state,
        total_fen: t.amount.map(|a| a.total),
        success_time,
        payer_openid: t.payer.map(|p| p.openid),
    })
}

/// The calls the fleet makes at WeChat, in this API generation.
impl Client {
    pub async fn prepay(&self, order: &PrepayOrder) -> Result<Prepaid, ChannelError> {
        let scene = |h5: bool| SceneInfo {
            payer_client_ip: order.client_ip.clone(),
            h5_info: h5.then(|| H5Info { kind: "Wap".into() }),
        };
        let request = PrepayRequest {
            appid: self.appid.clone(),
            mchid: self.mchid.clone(),
            description: order.description.clone(),
            out_trade_no: order.out_trade_no.clone(),
            time_expire: Some(beijing_rfc3339(order.expires_at)),
            notify_url: self.notify_url.clone(),
            amount: Amount { total: order.amount.to_fen(), currency: Some("CNY".into()), ..Amount::default() },
            payer: match order.trade_type {
                TradeType::Jsapi => Some(Payer { openid: order.openid.clone().unwrap_or_default() }),
                _ => None,
            },
            scene_info: Some(scene(order.trade_type == TradeType::H5)),
        };
        let path = match order.trade_type {
            TradeType::Jsapi => "/v3/pay/transactions/jsapi",
            TradeType::H5 => "/v3/pay/transactions/h5",
            TradeType::Native => "/v3/pay/transactions/native",
            TradeType::App => "/v3/pay/transactions/app",
        };
        let body = serde_json::to_string(&request).expect("a prepay request serialises");
        let answer: PrepayResponse = serde_json::from_slice(&self.call(Method::POST, path, Some(body)).await?)
            .map_err(|e| ChannelError::Transient(format!("unreadable prepay answer: {e}")))?;
        let missing = || ChannelError::Transient("the prepay answer lacks its prepay_id / h5_url / code_url".into());
        Ok(match order.trade_type {
            TradeType::Jsapi => Prepaid::Jsapi { prepay_id: answer.prepay_id.ok_or_else(missing)? },
            TradeType::App => Prepaid::App { prepay_id: answer.prepay_id.ok_or_else(missing)? },
            TradeType::H5 => Prepaid::H5 { h5_url: answer.h5_url.ok_or_else(missing)? },
            TradeType::Native => Prepaid::Native { code_url: answer.code_url.ok_or_else(missing)? },
        })
    }

    pub async fn query(&self, out_trade_no: &str) -> Result<Trade, ChannelError> {
        let path = format!("/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={}", self.mchid);
        let transaction: Transaction = serde_json::from_slice(&self.call(Method::GET, &path, None).await?)
            .map_err(|e| ChannelError::Transient(format!("unreadable query answer: {e}")))?;
        to_trade(transaction).map_err(ChannelError::Transient)
    }

    pub async fn close(&self, out_trade_no: &str) -> Result<(), ChannelError> {
        let path = format!("/v3/pay/transactions/out-trade-no/{out_trade_no}/close");
        let body = serde_json::to_string(&CloseRequest { mchid: self.mchid.clone() }).expect("serialises");
        self.call(Method::POST, &path, Some(body)).await.map(drop)
    }

    /// Asks for a refund; the same `out_refund_no` again answers the refund it made.
    pub async fn refund(&self, order: &RefundOrder) -> Result<ChannelRefund, ChannelError> {
        let request = RefundRequest {
            out_trade_no: order.out_trade_no.clone(),
            out_refund_no: order.out_refund_no.clone(),
            reason: (!order.reason.is_empty()).then(|| order.reason.clone()),
            notify_url: self.refund_notify_url.clone(),
            amount: RefundAmount {
                refund: order.refund.to_fen(),
                total: order.total.to_fen(),
                currency: Some("CNY".into()),
            },
        };
        let body = serde_json::to_string(&request).expect("a refund request serialises");
        self.refund_answer(&self.call(Method::POST, "/v3/refund/domestic/refunds", Some(body)).await?)
    }

    pub async fn query_refund(&self, out_refund_no: &str) -> Result<ChannelRefund, ChannelError> {
        let path = format!("/v3/refund/domestic/refunds/{out_refund_no}");
        self.refund_answer(&self.call(Method::GET, &path, None).await?)
    }

    fn refund_answer(&self, body: &[u8]) -> Result<ChannelRefund, ChannelError> {
        let refund: Refund = serde_json::from_slice(body)
            .map_err(|e| ChannelError::Transient(format!("unreadable refund answer: {e}")))?;
        to_refund(refund).map_err(ChannelError::Transient)
    }

    pub fn pay_params(&self, prepaid: &Prepaid) -> Value {
        let timestamp = now().to_string();
        let nonce = nonce();
        match prepaid {
            Prepaid::Jsapi { prepay_id } => {
                let package = format!("prepay_id={prepay_id}");
                let pay_sign =
                    sign(&self.merchant_key, pay_sign_message(&self.appid, &timestamp, &nonce, &package).as_bytes());
                json!({
                    "appId": self.appid,
                    "timeStamp": timestamp,
                    "nonceStr": nonce,
                    "package": package,
                    "signType": "RSA",
                    "paySign": pay_sign,
                    "is_weixin": 1,
                })
            }
            // APP 调起支付: the same four lines, with the prepay id in place of the package.
            Prepaid::App { prepay_id } => json!({
                "appid": self.appid,
                "partnerid": self.mchid,
                "prepayid": prepay_id,
                "package": "Sign=WXPay",
                "noncestr": nonce,
                "timestamp": timestamp,
                "sign": sign(&self.merchant_key, pay_sign_message(&self.appid, &timestamp, &nonce, prepay_id).as_bytes()),
                "is_weixin": 0,
            }),
            Prepaid::H5 { h5_url } => json!({ "h5_url": h5_url, "is_weixin": 0 }),
            Prepaid::Native { code_url } => json!({ "code_url": code_url, "is_weixin": 0 }),
        }
    }
}
