//! WeChat Pay, both API generations: `v2` (XML, MD5 / HMAC-SHA256) and `v3` (JSON,
//! SHA256withRSA, AES-256-GCM). `Wechat` is the configured channel: outgoing calls use
//! `wechat.api_version`; notifies of either generation are verified when its keys are set (a
//! merchant moving from v2 to v3 still gets v2 notifies for orders created before). Amounts
//! towards WeChat are integer fen (`Money::to_fen`).

pub mod v2;
pub mod v3;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::channel::{ChannelError, ChannelRefund, Prepaid, PrepayOrder, RefundOrder, Trade};
use crate::config::{ConfigError, WechatApiVersion, WechatSettings};
use v2::sign::SignType;
use v3::crypto::{PlatformKeys, SignedHeaders, VerifyError};

/// A notify as WeChat signed it. The ingress verifies it on arrival; the notify-worker verifies
/// it again before settling, because a message on the queue proves nothing by itself (anyone
/// who may publish there could have written it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "api", rename_all = "lowercase")]
pub enum SignedNotify {
    /// The `Wechatpay-*` headers and the JSON body they sign.
    V3 { headers: SignedHeaders, body: String },
    /// The XML body; its `sign` covers its fields.
    V2 { body: String },
}

impl SignedNotify {
    /// Whether a notify body is XML (v2) rather than JSON (v3).
    pub fn is_xml(body: &[u8]) -> bool {
        body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<')
    }

    /// A notify as received over HTTP: XML is v2, anything else v3. WeChat's bodies are UTF-8.
    pub fn received(headers: SignedHeaders, body: &[u8]) -> Result<SignedNotify, VerifyError> {
        let text = std::str::from_utf8(body).map_err(|_| VerifyError::BadSignature)?.to_owned();
        Ok(if SignedNotify::is_xml(body) {
            SignedNotify::V2 { body: text }
        } else {
            SignedNotify::V3 { headers, body: text }
        })
    }

    /// The body as WeChat sent it, for the record.
    pub fn body(&self) -> &str {
        match self {
            SignedNotify::V3 { body, .. } | SignedNotify::V2 { body } => body,
        }
    }

    pub fn api_version(&self) -> WechatApiVersion {
        match self {
            SignedNotify::V3 { .. } => WechatApiVersion::V3,
            SignedNotify::V2 { .. } => WechatApiVersion::V2,
        }
    }

    /// The payment a v2 notify names, read before it is verified: its sign type is the one to
    /// verify with.
    pub fn v2_out_trade_no(&self) -> Option<String> {
        match self {
            SignedNotify::V2 { body } => v2::xml::read(body).ok()?.remove("out_trade_no").filter(|n| !n.is_empty()),
            SignedNotify::V3 { .. } => None,
        }
    }

    /// What makes a refund notify single-use: the v3 `Wechatpay-Nonce`, or a v2 refund notify's
    /// merchant and `nonce_str` (it names no trade outside its encrypted part).
    pub fn refund_replay_key(&self) -> Option<String> {
        match self {
            SignedNotify::V3 { .. } => self.replay_key(),
            SignedNotify::V2 { body } => {
                let fields = v2::xml::read(body).ok()?;
                Some(format!("v2refund:{}:{}", fields.get("mch_id")?, fields.get("nonce_str")?))
            }
        }
    }

    /// What makes this notify single-use: the v3 `Wechatpay-Nonce`, or a v2 notify's
    /// `out_trade_no` and `nonce_str` (v2 has no timestamp, so the nonce alone must do).
    pub fn replay_key(&self) -> Option<String> {
        match self {
            SignedNotify::V3 { headers, .. } => headers.nonce.clone().map(|n| format!("v3:{n}")),
            SignedNotify::V2 { body } => {
                let fields = v2::xml::read(body).ok()?;
                Some(format!("v2:{}:{}", fields.get("out_trade_no")?, fields.get("nonce_str")?))
            }
        }
    }
}

/// A notify that verified (and, for v3, decrypted).
#[derive(Clone, Debug)]
pub enum Notified {
    /// A payment's trade.
    Trade(VerifiedNotify),
    /// A refund's progress.
    Refund(RefundNotified),
    /// Genuine, but of a kind nothing settles from.
    Other { id: String, event_type: String },
}

/// A verified (v3) or opened (v2) refund notify.
#[derive(Clone, Debug)]
pub struct RefundNotified {
    /// WeChat's notify id (v3); v2 has none: the refund number and status.
    pub id: String,
    /// `REFUND.SUCCESS` / `REFUND.ABNORMAL` / `REFUND.CLOSED` (v3), `v2.refund` for v2.
    pub event_type: String,
    pub mchid: String,
    pub refund: ChannelRefund,
}

/// A verified payment notify.
#[derive(Clone, Debug)]
pub struct VerifiedNotify {
    /// WeChat's notify id (v3), or the transaction id (v2 has none).
    pub id: String,
    /// `TRANSACTION.SUCCESS` (v3), or `v2.pay` for a v2 pay notify.
    pub event_type: String,
    pub trade: Trade,
}

/// The configured WeChat Pay channel.
pub struct Wechat {
    active: WechatApiVersion,
    v2: Option<v2::client::Client>,
    v3: Option<v3::client::Client>,
    pub appid: String,
    pub mchid: String,
}

fn read_file(key: &'static str, path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Bad { key, reason: format!("cannot read {}: {e}", path.display()) })
}

impl Wechat {
    /// Builds the channel, reading keys and certificates; errors name the setting at fault.
    pub fn from_settings(s: &WechatSettings) -> Result<Wechat, ConfigError> {
        let bad = |key: &'static str, reason: String| ConfigError::Bad { key, reason };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(s.http_timeout_ms))
            .build()
            .map_err(|e| bad("wechat.http_timeout_ms", e.to_string()))?;
        let base = s.api_base.trim_end_matches('/').to_owned();

        let v2 = match s.api_v2_key() {
            None => None,
            Some(key) => Some(v2::client::Client {
                http: http.clone(),
                secapi: match &s.v2_client_cert_file {
                    None => http.clone(),
                    Some(file) => {
                        let pem = read_file("wechat.v2_client_cert_file", file)?;
                        let identity = reqwest::Identity::from_pem(pem.as_bytes())
                            .map_err(|e| bad("wechat.v2_client_cert_file", e.to_string()))?;
                        reqwest::Client::builder()
                            .timeout(Duration::from_millis(s.http_timeout_ms))
                            .identity(identity)
                            .build()
                            .map_err(|e| bad("wechat.v2_client_cert_file", e.to_string()))?
                    }
                },
                base: base.clone(),
                appid: s.appid.clone(),
                mchid: s.mchid.clone(),
                notify_url: s.notify_url.clone(),
                refund_notify_url: s.refund_notify_url.clone(),
                key: key?,
                sign_type: v2::sign::SignType::parse(&s.v2_sign_type)
                    .ok_or_else(|| bad("wechat.v2_sign_type", "must be MD5 or HMAC-SHA256".into()))?,
            }),
        };

        let v3 = match s.api_v3_key() {
            None => None,
            Some(key) => {
                let key_file = s.merchant_private_key_file.as_deref().ok_or_else(|| {
                    bad("wechat.merchant_private_key_file", "v3 needs the merchant API private key".into())
                })?;
                let merchant_key =
                    v3::crypto::private_key_from_pem(&read_file("wechat.merchant_private_key_file", key_file)?)
                        .map_err(|e| bad("wechat.merchant_private_key_file", e))?;
                if s.merchant_serial_no.is_empty() {
                    return Err(bad(
                        "wechat.merchant_serial_no",
                        "v3 needs the merchant API certificate's serial".into(),
                    ));
                }
                let mut platform = PlatformKeys::default();
                if let Some(file) = &s.public_key_file {
                    if s.public_key_id.is_empty() {
                        return Err(bad(
                            "wechat.public_key_id",
                            "set with wechat.public_key_file (PUB_KEY_ID_…)".into(),
                        ));
                    }
                    let pem = read_file("wechat.public_key_file", file)?;
                    platform.insert(
                        &s.public_key_id,
                        v3::crypto::public_key_from_pem(&pem).map_err(|e| bad("wechat.public_key_file", e))?,
                    );
                }
                for file in &s.platform_certificate_files {
                    let pem = read_file("wechat.platform_certificate_files", file)?;
                    let (serial, key) = v3::cert::read_certificate(&pem)
                        .map_err(|e| bad("wechat.platform_certificate_files", format!("{}: {e}", file.display())))?;
                    platform.insert(&serial, key);
                }
                if platform.is_empty() {
                    return Err(bad(
                        "wechat.public_key_file",
                        "v3 needs WeChat's key: public_key_id + public_key_file, or platform_certificate_files".into(),
                    ));
                }
                Some(v3::client::Client {
                    http: http.clone(),
                    base: base.clone(),
                    appid: s.appid.clone(),
                    mchid: s.mchid.clone(),
                    notify_url: s.notify_url.clone(),
                    refund_notify_url: s.refund_notify_url.clone(),
                    merchant_serial: s.merchant_serial_no.clone(),
                    merchant_key,
                    api_v3_key: key?,
                    platform,
                    public_key_id: (!s.public_key_id.is_empty() && s.public_key_file.is_some())
                        .then(|| s.public_key_id.clone()),
                })
            }
        };
        match s.api_version {
            WechatApiVersion::V2 if v2.is_none() => {
                return Err(bad("wechat.api_v2_key", "api_version v2 needs PAYFLEET__WECHAT__API_V2_KEY".into()));
            }
            WechatApiVersion::V3 if v3.is_none() => {
                return Err(bad("wechat.api_v3_key", "api_version v3 needs PAYFLEET__WECHAT__API_V3_KEY".into()));
            }
            _ => {}
        }
        Ok(Wechat { active: s.api_version, v2, v3, appid: s.appid.clone(), mchid: s.mchid.clone() })
    }

    /// The channel, or None when no WeChat key is configured at all (WeChat Pay off).
    pub fn from_settings_optional(s: &WechatSettings) -> Result<Option<Wechat>, ConfigError> {
        if s.api_v2_key().is_none() && s.api_v3_key().is_none() {
            return Ok(None);
        }
        Wechat::from_settings(s).map(Some)
    }

    pub fn api_version(&self) -> WechatApiVersion {
        self.active
    }

    /// Verifies a notify. `arrival` is now, on arrival, for v3's five-minute window; None
    /// checks the signature alone (a notify verified on arrival, checked again after waiting in
    /// a queue). A v2 notify verifies only with `v2_sign_type`, its payment's (the configured
    /// one for a payment this fleet does not know).
    pub fn verify_notify(
        &self,
        signed: &SignedNotify,
        arrival: Option<i64>,
        v2_sign_type: Option<SignType>,
    ) -> Result<Notified, VerifyError> {
        match signed {
            SignedNotify::V2 { body } => {
                let client = self.v2.as_ref().ok_or(VerifyError::BadSignature)?;
                let notify = client
                    .verify_notify(body, v2_sign_type.unwrap_or(client.sign_type()))
                    .map_err(|_| VerifyError::BadSignature)?;
                Ok(Notified::Trade(VerifiedNotify { id: notify.id, event_type: "v2.pay".into(), trade: notify.trade }))
            }
            SignedNotify::V3 { headers, body } => {
                let client = self.v3.as_ref().ok_or(VerifyError::BadSignature)?;
                Ok(match client.verify_notify(headers, body.as_bytes(), arrival)? {
                    v3::client::VerifiedNotify::Transaction { id, event_type, trade } => {
                        Notified::Trade(VerifiedNotify { id, event_type, trade })
                    }
                    v3::client::VerifiedNotify::Refund { id, event_type, mchid, refund } => {
                        Notified::Refund(RefundNotified { id, event_type, mchid, refund })
                    }
                    v3::client::VerifiedNotify::Other { id, event_type, .. } => Notified::Other { id, event_type },
                })
            }
        }
    }

    /// Verifies a refund notify: v3 like a pay notify (`arrival` as there), v2 by opening its
    /// encrypted `req_info`. Anything but a refund's progress is refused.
    pub fn verify_refund_notify(
        &self,
        signed: &SignedNotify,
        arrival: Option<i64>,
    ) -> Result<RefundNotified, VerifyError> {
        match signed {
            SignedNotify::V2 { body } => {
                let client = self.v2.as_ref().ok_or(VerifyError::BadSignature)?;
                let opened = client.open_refund_notify(body).map_err(VerifyError::Decrypt)?;
                Ok(RefundNotified {
                    id: opened.id,
                    event_type: "v2.refund".into(),
                    mchid: opened.mchid,
                    refund: opened.refund,
                })
            }
            SignedNotify::V3 { .. } => match self.verify_notify(signed, arrival, None)? {
                Notified::Refund(refund) => Ok(refund),
                Notified::Trade(t) => Err(VerifyError::Decrypt(format!("{} is a payment, not a refund", t.event_type))),
                Notified::Other { event_type, .. } => {
                    Err(VerifyError::Decrypt(format!("{event_type} is not a refund's progress")))
                }
            },
        }
    }

    /// The sign type v2 payments are created with now (None when v2 is not the active API).
    pub fn v2_sign_type(&self) -> Option<SignType> {
        match self.active() {
            Active::V2(c) => Some(c.sign_type()),
            Active::V3(_) => None,
        }
    }
}

/// The client outgoing calls go through.
enum Active<'a> {
    V2(&'a v2::client::Client),
    V3(&'a v3::client::Client),
}

impl Wechat {
    fn active(&self) -> Active<'_> {
        const CHECKED: &str = "from_settings checks the active version is configured";
        match self.active {
            WechatApiVersion::V2 => Active::V2(self.v2.as_ref().expect(CHECKED)),
            WechatApiVersion::V3 => Active::V3(self.v3.as_ref().expect(CHECKED)),
        }
    }
}

/// What the fleet asks of WeChat, through the active API generation. (WeChat is the fleet's one
/// channel; a second one would get its own module beside `wechat`, and the callers a choice.)
impl Wechat {
    /// Creates (or, for the same `out_trade_no` and parameters, finds again) the channel order.
    pub async fn prepay(&self, order: &PrepayOrder) -> Result<Prepaid, ChannelError> {
        match self.active() {
            Active::V2(c) => c.prepay(order).await,
            Active::V3(c) => c.prepay(order).await,
        }
    }

    /// The trade's current state at WeChat.
    pub async fn query(&self, out_trade_no: &str) -> Result<Trade, ChannelError> {
        match self.active() {
            Active::V2(c) => c.query(out_trade_no).await,
            Active::V3(c) => c.query(out_trade_no).await,
        }
    }

    /// Closes an unpaid order so it can no longer be paid.
    pub async fn close(&self, out_trade_no: &str) -> Result<(), ChannelError> {
        match self.active() {
            Active::V2(c) => c.close(out_trade_no).await,
            Active::V3(c) => c.close(out_trade_no).await,
        }
    }

    /// Asks WeChat to give part of a paid trade back; the same `out_refund_no` again is the
    /// same refund, never a second one.
    pub async fn refund(&self, order: &RefundOrder) -> Result<ChannelRefund, ChannelError> {
        match self.active() {
            Active::V2(c) => c.refund(order).await,
            Active::V3(c) => c.refund(order).await,
        }
    }

    /// A refund's current state at WeChat.
    pub async fn query_refund(&self, out_refund_no: &str) -> Result<ChannelRefund, ChannelError> {
        match self.active() {
            Active::V2(c) => c.query_refund(out_refund_no).await,
            Active::V3(c) => c.query_refund(out_refund_no).await,
        }
    }

    /// The parameters the client starts paying with, freshly signed.
    pub fn pay_params(&self, prepaid: &Prepaid) -> Value {
        match self.active() {
            Active::V2(c) => c.pay_params(prepaid),
            Active::V3(c) => c.pay_params(prepaid),
        }
    }
}
