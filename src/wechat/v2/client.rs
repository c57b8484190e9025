//! The API v2 client: XML requests signed with the APIv2 key (MD5 or HMAC-SHA256), answers and
//! notifies verified the same way (docs/wechat-pay.md §2).

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

use super::sign::{SignType, sign, verify};
use super::xml;
use crate::channel::{
    ChannelError, ChannelRefund, Prepaid, PrepayOrder, RefundOrder, RefundState, Trade, TradeState, TradeType,
};
use crate::wechat::v3::sign::nonce;

pub struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) appid: String,
    pub(crate) mchid: String,
    pub(crate) notify_url: String,
    /// Where WeChat sends the notifies of our refunds.
    pub(crate) refund_notify_url: String,
    /// The client of `/secapi/…` calls (refunds): it presents the merchant API certificate
    /// where one is configured (`wechat.v2_client_cert_file`).
    pub(crate) secapi: reqwest::Client,
    pub(crate) key: SecretString,
    /// The sign type of requests, and of notifies that do not name one.
    pub(crate) sign_type: SignType,
}

/// A verified v2 pay notify.
#[derive(Clone, Debug)]
pub struct VerifiedNotify {
    /// v2 notifies have no id of their own: the transaction id names the event.
    pub id: String,
    pub trade: Trade,
}

const BEIJING: UtcOffset = match UtcOffset::from_hms(8, 0, 0) {
    Ok(offset) => offset,
    Err(_) => panic!("a valid offset"),
};

/// `yyyyMMddHHmmss` in Beijing time.
pub fn beijing_compact(t: OffsetDateTime) -> String {
    let t = t.to_offset(BEIJING);
    format!("{:04}{:02}{:02}{:02}{:02}{:02}", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
}

/// Parses `yyyyMMddHHmmss` (Beijing time).
pub fn parse_beijing_compact(s: &str) -> Option<OffsetDateTime> {
    let format = time::macros::format_description!("[year][month][day][hour][minute][second]");
    Some(PrimitiveDateTime::parse(s, &format).ok()?.assume_offset(BEIJING))
}

impl Client {
    fn signed(&self, mut fields: BTreeMap<String, String>) -> BTreeMap<String, String> {
        fields.insert("appid".into(), self.appid.clone());
        fields.insert("mch_id".into(), self.mchid.clone());
        fields.insert("nonce_str".into(), nonce());
        if self.sign_type == SignType::HmacSha256 {
            fields.insert("sign_type".into(), self.sign_type.as_str().into());
        }
        let signature = sign(&fields, self.key.expose_secret(), self.sign_type);
        fields.insert("sign".into(), signature);
        fields
    }

    /// Posts a signed request; answers the verified fields of a business success.
    async fn call(
        &self,
        path: &str,
        fields: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ChannelError> {
        let http = if path.starts_with("/secapi/") { &self.secapi } else { &self.http };
        let body = xml::write(&self.signed(fields));
        let response = http
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "text/xml; charset=utf-8")
            .body(body)
            .send()
            .await
            .map_err(|e| ChannelError::Transient(format!("WeChat Pay unreachable: {e}")))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| ChannelError::Transient(e.to_string()))?;
        if !status.is_success() {
            return Err(ChannelError::Transient(format!("HTTP {status}: {text}")));
        }
        let answer = xml::read(&text).map_err(|e| ChannelError::Transient(format!("unreadable answer: {e}")))?;
        if answer.get("return_code").map(String::as_str) != Some("SUCCESS") {
            let message = answer.get("return_msg").cloned().unwrap_or_default();
            return Err(ChannelError::Refused { code: "FAIL".into(), message });
        }
        let answer_type = answer.get("sign_type").and_then(|t| SignType::parse(t)).unwrap_or(self.sign_type);
        if !verify(&answer, self.key.expose_secret(), answer_type) {
            return Err(ChannelError::Forged("the answer's sign does not verify".into()));
        }
        if answer.get("result_code").map(String::as_str) != Some("SUCCESS") {
            let code = answer.get("err_code").cloned().unwrap_or_default();
            let message = answer.get("err_code_des").cloned().unwrap_or_default();
            return Err(match code.as_str() {
                "ORDERNOTEXIST" | "REFUNDNOTEXIST" => ChannelError::NotFound,
                "ORDERPAID" => ChannelError::AlreadyPaid,
                "ORDERCLOSED" => ChannelError::Closed,
                "SYSTEMERROR" | "BANKERROR" | "FREQUENCY_LIMITED" | "BIZERR_NEED_RETRY" | "NOTENOUGH" => {
                    ChannelError::Transient(format!("{code}: {message}"))
                }
                _ => ChannelError::Refused { code, message },
            });
        }
        Ok(answer)
    }

    /// Verifies a v2 pay notify (XML) with `sign_type`: the one its payment was created with,
    /// which WeChat signs the notify with (usually without naming it). Nothing the notify says
    /// chooses the type, so an MD5 sign is no way around an HMAC-SHA256 order: a notify naming
    /// another `sign_type`, or signed with one, is refused.
    pub fn verify_notify(&self, body: &str, sign_type: SignType) -> Result<VerifiedNotify, String> {
        let fields = xml::read(body).map_err(|e| e.to_string())?;
        if let Some(named) = fields.get("sign_type").filter(|t| !t.is_empty())
            && SignType::parse(named) != Some(sign_type)
        {
            return Err(format!("sign_type {named} is not the payment's {}", sign_type.as_str()));
        }
        if !verify(&fields, self.key.expose_secret(), sign_type) {
            return Err(format!("sign does not verify as {}", sign_type.as_str()));
        }
        if fields.get("return_code").map(String::as_str) != Some("SUCCESS") {
            return Err(format!("return_code {:?}", fields.get("return_code")));
        }
        let trade = to_trade(&fields)?;
        let id = trade.transaction_id.clone().unwrap_or_else(|| format!("v2:{}", trade.out_trade_no));
        Ok(VerifiedNotify { id, trade })
    }

    /// Opens a v2 refund notify: it carries no sign; its `req_info` is encrypted with the
    /// APIv2 key (docs/wechat-pay.md), which only WeChat and we hold.
    pub fn open_refund_notify(&self, body: &str) -> Result<VerifiedRefund, String> {
        let outer = xml::read(body).map_err(|e| e.to_string())?;
        if outer.get("return_code").map(String::as_str) != Some("SUCCESS") {
            return Err(format!("return_code {:?}", outer.get("return_code")));
        }
        let sealed = outer.get("req_info").filter(|v| !v.is_empty()).ok_or("no req_info")?;
        let inner = super::req_info::decrypt(self.key.expose_secret(), sealed)?;
        let fields = xml::read(&inner).map_err(|e| format!("req_info: {e}"))?;
        let get = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
        let status = get("refund_status").ok_or("req_info has no refund_status")?;
        let refund = ChannelRefund {
            out_trade_no: get("out_trade_no").ok_or("req_info has no out_trade_no")?,
            out_refund_no: get("out_refund_no").ok_or("req_info has no out_refund_no")?,
            refund_id: get("refund_id"),
            state: RefundState::parse(&status).ok_or_else(|| format!("unknown refund_status {status}"))?,
            refund_fen: fen(get("refund_fee").as_deref(), "refund_fee")?,
            success_time: get("success_time").and_then(|t| parse_beijing_dashed(&t)),
        };
        Ok(VerifiedRefund {
            id: format!("v2:{}:{}", refund.out_refund_no, status),
            mchid: outer.get("mch_id").cloned().unwrap_or_default(),
            refund,
        })
    }

    /// The sign type of requests (and of the payments created with them).
    pub fn sign_type(&self) -> SignType {
        self.sign_type
    }
}

/// A v2 refund notify, opened.
#[derive(Clone, Debug)]
pub struct VerifiedRefund {
    /// v2 refund notifies have no id: the refund and its status name the event.
    pub id: String,
    pub mchid: String,
    pub refund: ChannelRefund,
}

/// Parses `yyyy-MM-dd HH:mm:ss` (Beijing time), as refunds write their times.
pub fn parse_beijing_dashed(s: &str) -> Option<OffsetDateTime> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    Some(PrimitiveDateTime::parse(s, &format).ok()?.assume_offset(BEIJING))
}

fn fen(value: Option<&str>, name: &str) -> Result<i64, String> {
    value.ok_or_else(|| format!("no {name}"))?.parse::<i64>().map_err(|_| format!("{name} {value:?} is not fen"))
}

/// The fields of a v2 query answer or pay notify as a `Trade`.
pub fn to_trade(f: &BTreeMap<String, String>) -> Result<Trade, String> {
    let get = |k: &str| f.get(k).filter(|v| !v.is_empty()).cloned();
    // A pay notify has no trade_state: its result_code says it.
    let state = match get("trade_state") {
        Some(s) => TradeState::parse(&s).ok_or_else(|| format!("unknown trade_state {s}"))?,
        None if get("result_code").as_deref() == Some("SUCCESS") => TradeState::Success,
        None => TradeState::Payerror,
    };
    Ok(Trade {
        appid: get("appid").unwrap_or_default(),
        mchid: get("mch_id").unwrap_or_default(),
        out_trade_no: get("out_trade_no").ok_or("no out_trade_no")?,
        transaction_id: get("transaction_id"),
        trade_state: state,
        total_fen: get("total_fee").map(|v| v.parse::<i64>().map_err(|_| format!("total_fee {v:?}"))).transpose()?,
        success_time: get("time_end").and_then(|t| parse_beijing_compact(&t)),
        payer_openid: get("openid"),
    })
}

/// The refund named `out_refund_no` in a refund query answer (its fields are numbered `_0`, `_1`…).
pub fn refund_of(answer: &BTreeMap<String, String>, out_refund_no: &str) -> Result<ChannelRefund, String> {
    let get = |k: String| answer.get(&k).filter(|v| !v.is_empty()).cloned();
    let count: usize = get("refund_count".into()).and_then(|c| c.parse().ok()).unwrap_or(0);
    let i = (0..count)
        .find(|i| get(format!("out_refund_no_{i}")).as_deref() == Some(out_refund_no))
        .ok_or_else(|| format!("the answer has no refund {out_refund_no}"))?;
    let status = get(format!("refund_status_{i}")).ok_or("no refund_status")?;
    Ok(ChannelRefund {
        out_trade_no: get("out_trade_no".into()).ok_or("no out_trade_no")?,
        out_refund_no: out_refund_no.to_owned(),
        refund_id: get(format!("refund_id_{i}")),
        state: RefundState::parse(&status).ok_or_else(|| format!("unknown refund_status {status}"))?,
        refund_fen: fen(get(format!("refund_fee_{i}")).as_deref(), "refund_fee")?,
        success_time: get(format!("refund_success_time_{i}")).and_then(|t| parse_beijing_dashed(&t)),
    })
}

fn fields(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

/// The calls the fleet makes at WeChat, in this API generation.
impl Client {
    pub async fn prepay(&self, order: &PrepayOrder) -> Result<Prepaid, ChannelError> {
        let trade_type = match order.trade_type {
            TradeType::Jsapi => "JSAPI",
            TradeType::H5 => "MWEB",
            TradeType::Native => "NATIVE",
            TradeType::App => "APP",
        };
        let request = fields(&[
            ("body", order.description.clone()),
            ("out_trade_no", order.out_trade_no.clone()),
            ("total_fee", order.amount.to_fen().to_string()),
            ("fee_type", "CNY".into()),
            ("spbill_create_ip", order.client_ip.clone()),
            ("time_expire", beijing_compact(order.expires_at)),
            ("notify_url", self.notify_url.clone()),
            ("trade_type", trade_type.into()),
            (
                "openid",
                if order.trade_type == TradeType::Jsapi {
                    order.openid.clone().unwrap_or_default()
                } else {
                    String::new()
                },
            ),
            (
                "product_id",
                if order.trade_type == TradeType::Native { order.out_trade_no.clone() } else { String::new() },
            ),
            (
                "scene_info",
                if order.trade_type == TradeType::H5 {
                    r#"{"h5_info":{"type":"Wap"}}"#.to_owned()
                } else {
                    String::new()
                },
            ),
        ]);
        let answer = self.call("/pay/unifiedorder", request).await?;
        let get = |k: &str| {
            answer
                .get(k)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| ChannelError::Transient(format!("the answer lacks {k}")))
        };
        Ok(match order.trade_type {
            TradeType::Jsapi => Prepaid::Jsapi { prepay_id: get("prepay_id")? },
            TradeType::App => Prepaid::App { prepay_id: get("prepay_id")? },
            TradeType::H5 => Prepaid::H5 { h5_url: get("mweb_url")? },
            TradeType::Native => Prepaid::Native { code_url: get("code_url")? },
        })
    }

    pub async fn query(&self, out_trade_no: &str) -> Result<Trade, ChannelError> {
        let answer = self.call("/pay/orderquery", fields(&[("out_trade_no", out_trade_no.to_owned())])).await?;
        to_trade(&answer).map_err(ChannelError::Transient)
    }

    pub async fn close(&self, out_trade_no: &str) -> Result<(), ChannelError> {
        self.call("/pay/closeorder", fields(&[("out_trade_no", out_trade_no.to_owned())])).await.map(drop)
    }

    /// Asks for a refund (`/secapi/pay/refund`, with the merchant certificate); the same
    /// `out_refund_no` again is the same refund. v2 answers "accepted": the refund is
    /// PROCESSING until its notify or a query says otherwise.
    pub async fn refund(&self, order: &RefundOrder) -> Result<ChannelRefund, ChannelError> {
        let request = fields(&[
            ("out_trade_no", order.out_trade_no.clone()),
            ("out_refund_no", order.out_refund_no.clone()),
            ("total_fee", order.total.to_fen().to_string()),
            ("refund_fee", order.refund.to_fen().to_string()),
            ("refund_fee_type", "CNY".into()),
            ("refund_desc", order.reason.clone()),
            ("notify_url", self.refund_notify_url.clone()),
        ]);
        let answer = self.call("/secapi/pay/refund", request).await?;
        let get = |k: &str| answer.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(ChannelRefund {
            out_trade_no: get("out_trade_no").unwrap_or_else(|| order.out_trade_no.clone()),
            out_refund_no: get("out_refund_no").unwrap_or_else(|| order.out_refund_no.clone()),
            refund_id: get("refund_id"),
            state: RefundState::Processing,
            refund_fen: fen(get("refund_fee").as_deref(), "refund_fee").map_err(ChannelError::Transient)?,
            success_time: None,
        })
    }

    /// `/pay/refundquery` by our refund number.
    pub async fn query_refund(&self, out_refund_no: &str) -> Result<ChannelRefund, ChannelError> {
        let answer = self.call("/pay/refundquery", fields(&[("out_refund_no", out_refund_no.to_owned())])).await?;
        refund_of(&answer, out_refund_no).map_err(ChannelError::Transient)
    }

    pub fn pay_params(&self, prepaid: &Prepaid) -> Value {
        let timestamp = OffsetDateTime::now_utc().unix_timestamp().to_string();
        let nonce = nonce();
        let key = self.key.expose_secret();
        match prepaid {
            // The paySign uses the sign type the order was created with.
            Prepaid::Jsapi { prepay_id } => {
                let params = fields(&[
                    ("appId", self.appid.clone()),
                    ("timeStamp", timestamp),
                    ("nonceStr", nonce),
                    ("package", format!("prepay_id={prepay_id}")),
                    ("signType", self.sign_type.as_str().to_owned()),
                ]);
                let pay_sign = sign(&params, key, self.sign_type);
                let mut out = json!(params);
                out["paySign"] = json!(pay_sign);
                out["is_weixin"] = json!(1);
                out
            }
            Prepaid::App { prepay_id } => {
                let params = fields(&[
                    ("appid", self.appid.clone()),
                    ("partnerid", self.mchid.clone()),
                    ("prepayid", prepay_id.clone()),
                    ("package", "Sign=WXPay".into()),
                    ("noncestr", nonce),
                    ("timestamp", timestamp),
                ]);
                let signature = sign(&params, key, self.sign_type);
                let mut out = json!(params);
                out["sign"] = json!(signature);
                out["is_weixin"] = json!(0);
                out
            }
            Prepaid::H5 { h5_url } => json!({ "h5_url": h5_url, "is_weixin": 0 }),
            Prepaid::Native { code_url } => json!({ "code_url": code_url, "is_weixin": 0 }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beijing_times_round_trip() {
        let t = OffsetDateTime::from_unix_timestamp(1_704_067_200).unwrap(); // 2024-01-01 00:00 UTC
        assert_eq!(beijing_compact(t), "20240101080000");
        assert_eq!(parse_beijing_compact("20240101080000"), Some(t));
        assert_eq!(parse_beijing_compact("2024-01-01"), None);
    }

    #[test]
    fn a_notify_verifies_only_with_its_payments_sign_type() {
        let key = "0123456789abcdef0123456789abcdef";
        let client = Client {
            http: reqwest::Client::new(),
            base: String::new(),
            appid: "wx1".into(),
            mchid: "10000100".into(),
            notify_url: String::new(),
            refund_notify_url: String::new(),
            secapi: reqwest::Client::new(),
            key: SecretString::from(key.to_owned()),
            sign_type: SignType::HmacSha256,
        };
        let f: BTreeMap<String, String> = [
            ("return_code", "SUCCESS"),
            ("result_code", "SUCCESS"),
            ("appid", "wx1"),
            ("mch_id", "10000100"),
            ("out_trade_no", "WX1"),
            ("transaction_id", "4200"),
            ("total_fee", "1000"),
        ]
        .map(|(k, v)| (k.into(), v.into()))
        .into();
        let signed = |f: &BTreeMap<String, String>, sign_type| {
            let mut f = f.clone();
            f.insert("sign".into(), sign(&f, key, sign_type));
            xml::write(&f)
        };
        for sign_type in [SignType::Md5, SignType::HmacSha256] {
            let notify = client.verify_notify(&signed(&f, sign_type), sign_type).unwrap();
            assert_eq!((notify.id.as_str(), notify.trade.total_fen), ("4200", Some(1000)));
        }
        // A payment created with HMAC-SHA256 takes no MD5 notify, and the other way round,
        // however the notify names its type.
        assert!(client.verify_notify(&signed(&f, SignType::Md5), SignType::HmacSha256).is_err());
        assert!(client.verify_notify(&signed(&f, SignType::HmacSha256), SignType::Md5).is_err());
        let mut named = f.clone();
        named.insert("sign_type".into(), "MD5".into());
        assert!(client.verify_notify(&signed(&named, SignType::Md5), SignType::HmacSha256).is_err());
        assert!(client.verify_notify(&signed(&named, SignType::Md5), SignType::Md5).is_ok());
        let mut other_key = f.clone();
        other_key.insert("sign".into(), sign(&f, "another key, another key, anothe", SignType::HmacSha256));
        assert!(client.verify_notify(&xml::write(&other_key), SignType::HmacSha256).is_err());
    }

    #[test]
    fn a_notify_is_a_trade() {
        let f: BTreeMap<String, String> = [
            ("appid", "wx1"),
            ("mch_id", "10000100"),
            ("result_code", "SUCCESS"),
            ("out_trade_no", "WX1"),
            ("transaction_id", "4200"),
            ("total_fee", "1000"),
            ("time_end", "20240101080000"),
        ]
        .map(|(k, v)| (k.into(), v.into()))
        .into();
        let t = to_trade(&f).unwrap();
        assert_eq!((t.trade_state, t.total_fen, t.mchid.as_str()), (TradeState::Success, Some(1000), "10000100"));
        let mut bad = f.clone();
        bad.insert("total_fee".into(), "10.00".into());
        assert!(to_trade(&bad).is_err(), "fen are integers");
    }
}
