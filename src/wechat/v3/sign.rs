//! API v3 signatures: the merchant's `Authorization` header on requests, WeChat's
//! `Wechatpay-*` headers on responses and notifies, and the mini-program `paySign`.
//!
//! Implements "签名生成" and "签名验证" of WeChat Pay API v3
//! (https://pay.weixin.qq.com/wiki/doc/apiv3/wechatpay/wechatpay4_0.shtml,
//! https://pay.wechatpay.cn/docs/merchant/development/interface-rules/build-verify-sign-src.html;
//! docs/wechat-pay.md §3.2, §3.3, §3.7): SHA256withRSA (RSASSA-PKCS1-v1_5) over
//! newline-terminated lines, base64-encoded.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rsa::sha2::Sha256;
use rsa::{PrivateKey, PublicKey};

/// The scheme name in `Authorization` and `Wechatpay-Signature-Type`.
pub const SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// WeChat sends signatures starting with this to check that merchants verify; they must fail.
pub const SIGNATURE_PROBE_PREFIX: &str = "WECHATPAY/SIGNTEST/";

/// How far a signed timestamp may be from now (docs/wechat-pay.md §3.3: five minutes).
pub const MAX_SKEW_SECS: i64 = 300;

/// Whether a signed timestamp is within the five-minute window around `now`. The difference is
/// checked: a timestamp near `i64::MIN` or `i64::MAX` is outside, never wrapped into it.
pub fn within_window(now: i64, timestamp: i64) -> bool {
    now.checked_sub(timestamp).is_some_and(|skew| skew.unsigned_abs() < MAX_SKEW_SECS as u64)
}

/// The request message: `METHOD\nURL\nTIMESTAMP\nNONCE\nBODY\n` (URL = path and query as sent).
pub fn request_message(method: &str, url: &str, timestamp: i64, nonce: &str, body: &str) -> String {
    format!("{method}\n{url}\n{timestamp}\n{nonce}\n{body}\n")
}

/// The response / notify message: `TIMESTAMP\nNONCE\nBODY\n` over the raw body bytes.
pub fn response_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(nonce.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(body);
    message.push(b'\n');
    message
}

/// The mini-program `paySign` message: `appId\ntimeStamp\nnonceStr\npackage\n`.
pub fn pay_sign_message(app_id: &str, timestamp: &str, nonce: &str, package: &str) -> String {
    format!("{app_id}\n{timestamp}\n{nonce}\n{package}\n")
}

/// base64(SHA256withRSA(key, message)).
pub fn sign(key: &PrivateKey, message: &[u8]) -> String {
    let signature = key.pkcs1v15_sign::<Sha256>(message).expect("PKCS#1 v1.5 signing with a valid key");
    BASE64.encode(signature)
}

/// Whether `signature` (base64) is SHA256withRSA of `message` under `key`.
pub fn verify(key: &PublicKey, message: &[u8], signature: &str) -> bool {
    match BASE64.decode(signature.trim()) {
        Ok(bytes) => key.pkcs1v15_verify::<Sha256>(message, &bytes).is_ok(),
        Err(_) => false,
    }
}

/// The parts of an `Authorization: WECHATPAY2-SHA256-RSA2048 k="v",…` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub mchid: String,
    pub nonce_str: String,
    pub signature: String,
    pub timestamp: i64,
    pub serial_no: String,
}

impl Authorization {
    /// Signs a request as the merchant.
    pub fn sign(
        key: &PrivateKey,
        mchid: &str,
        serial_no: &str,
        request: (&str, &str, &str),
        timestamp: i64,
        nonce: &str,
    ) -> Authorization {
        let (method, url, body) = request;
        let message = request_message(method, url, timestamp, nonce, body);
        Authorization {
            mchid: mchid.to_owned(),
            nonce_str: nonce.to_owned(),
            signature: sign(key, message.as_bytes()),
            timestamp,
            serial_no: serial_no.to_owned(),
        }
    }

    /// The header value.
    pub fn header(&self) -> String {
        format!(
            "{SCHEME} mchid=\"{}\",nonce_str=\"{}\",timestamp=\"{}\",serial_no=\"{}\",signature=\"{}\"",
            self.mchid, self.nonce_str, self.timestamp, self.serial_no, self.signature
        )
    }

    /// Parses a header value; the `k="v"` pairs may come in any order.
    pub fn parse(header: &str) -> Option<Authorization> {
        let rest = header.strip_prefix(SCHEME)?.trim_start();
        let mut pairs = HashMap::new();
        for part in rest.split(',') {
            let (k, v) = part.trim().split_once('=')?;
            pairs.insert(k.trim(), v.trim().strip_prefix('"')?.strip_suffix('"')?);
        }
        Some(Authorization {
            mchid: (*pairs.get("mchid")?).to_owned(),
            nonce_str: (*pairs.get("nonce_str")?).to_owned(),
            signature: (*pairs.get("signature")?).to_owned(),
            timestamp: pairs.get("timestamp")?.parse().ok()?,
            serial_no: (*pairs.get("serial_no")?).to_owned(),
        })
    }

    /// Whether this header signs `method url body` under the merchant's public key.
    pub fn verifies(&self, key: &PublicKey, method: &str, url: &str, body: &str) -> bool {
        let message = request_message(method, url, self.timestamp, &self.nonce_str, body);
        verify(key, message.as_bytes(), &self.signature)
    }
}

/// A random nonce of 32 upper-case hex characters, as the SDKs use.
pub fn nonce() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// One 2048-bit key for the whole test binary (generating one takes a while).
    pub(crate) fn test_key() -> &'static PrivateKey {
        static KEY: OnceLock<PrivateKey> = OnceLock::new();
        KEY.get_or_init(|| PrivateKey::new(&mut rand::rng(), 2048).expect("an RSA key"))
    }

    /// The example of WeChat's "签名生成" page: GET /v3/certificates at 1554208460 with nonce
    /// 593BEC0C930BF1AFEB40B4A08C8FB242 and no body.
    #[test]
    fn request_message_matches_the_documentation_example() {
        assert_eq!(
            request_message("GET", "/v3/certificates", 1554208460, "593BEC0C930BF1AFEB40B4A08C8FB242", ""),
            "GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n"
        );
        assert_eq!(
            response_message("1554209980", "c5ac7061fccab6bf3e254dcf98995b8c", b"{}"),
            b"1554209980\nc5ac7061fccab6bf3e254dcf98995b8c\n{}\n"
        );
        assert_eq!(
            pay_sign_message(
                "wx8888888888888888",
                "1414561699",
                "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
                "prepay_id=wx201410272009395522657a690389285100"
            ),
            "wx8888888888888888\n1414561699\n5K8264ILTKCH16CQ2502SI8ZNMTM67VS\nprepay_id=wx201410272009395522657a690389285100\n"
        );
    }

    #[test]
    fn authorization_headers_parse_in_any_order() {
        let a = Authorization::sign(
            test_key(),
            "1900000001",
            "5157F09EFDC096DE15EBE81A47057A72",
            ("POST", "/v3/pay/transactions/jsapi", "{}"),
            1554208460,
            "N",
        );
        assert_eq!(Authorization::parse(&a.header()).unwrap(), a);
        let shuffled = format!(
            "{SCHEME} signature=\"{}\",serial_no=\"{}\",mchid=\"{}\",timestamp=\"{}\",nonce_str=\"{}\"",
            a.signature, a.serial_no, a.mchid, a.timestamp, a.nonce_str
        );
        assert_eq!(Authorization::parse(&shuffled).unwrap(), a);
        assert!(a.verifies(&test_key().to_public_key(), "POST", "/v3/pay/transactions/jsapi", "{}"));
        assert!(!a.verifies(&test_key().to_public_key(), "POST", "/v3/pay/transactions/h5", "{}"));
        assert!(Authorization::parse("Basic abc").is_none());
        assert!(Authorization::parse(&format!("{SCHEME} mchid=\"1\"")).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Seed property 1 for v3: sign then verify round-trips; any single-byte change to the
        /// message or the signature fails.
        #[test]
        fn sign_then_verify_and_tampering_fails(body in proptest::collection::vec(any::<u8>(), 0..200),
                                                at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let key = test_key();
            let message = response_message("1554209980", "nonce", &body);
            let signature = sign(key, &message);
            prop_assert!(verify(&key.to_public_key(), &message, &signature));

            let mut changed = message.clone();
            let i = at.index(changed.len());
            changed[i] ^= flip;
            prop_assert!(!verify(&key.to_public_key(), &changed, &signature));

            let mut raw = BASE64.decode(&signature).unwrap();
            let j = at.index(raw.len());
            raw[j] ^= flip;
            prop_assert!(!verify(&key.to_public_key(), &message, &BASE64.encode(raw)));
        }
    }
}
