//! API v2 signatures: MD5 and HMAC-SHA256 over the sorted `k=v&…&key=KEY` string.
//!
//! Implements "安全规范 / 签名算法" of WeChat Pay API v2
//! (https://pay.weixin.qq.com/doc/v2/merchant/4011985891; docs/wechat-pay.md §2.1): every field
//! except `sign` whose value is non-empty, sorted by name (byte order), joined as `k=v` with `&`,
//! then `&key=<APIv2 key>`; MD5 or HMAC-SHA256 (keyed with the APIv2 key) in upper-case hex.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The two v2 signature types (`sign_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignType {
    Md5,
    HmacSha256,
}

impl SignType {
    /// The `sign_type` / `signType` value on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SignType::Md5 => "MD5",
            SignType::HmacSha256 => "HMAC-SHA256",
        }
    }

    pub fn parse(s: &str) -> Option<SignType> {
        match s {
            "MD5" => Some(SignType::Md5),
            "HMAC-SHA256" => Some(SignType::HmacSha256),
            _ => None,
        }
    }
}

/// The string that is hashed: `k1=v1&k2=v2…&key=KEY`.
pub fn sign_string(fields: &BTreeMap<String, String>, key: &str) -> String {
    let mut out = String::new();
    // BTreeMap<String, _> iterates in byte order of the names, as the spec sorts them.
    for (k, v) in fields.iter().filter(|(k, v)| k.as_str() != "sign" && !v.is_empty()) {
        out.push_str(k);
        out.push('=');
        out.push_str(v);
        out.push('&');
    }
    out.push_str("key=");
    out.push_str(key);
    out
}

/// The `sign` of these fields.
pub fn sign(fields: &BTreeMap<String, String>, key: &str, sign_type: SignType) -> String {
    let message = sign_string(fields, key);
    let digest: Vec<u8> = match sign_type {
        SignType::Md5 => Md5::digest(message.as_bytes()).to_vec(),
        SignType::HmacSha256 => {
            let mut mac = <Hmac<Sha256>>::new_from_slice(key.as_bytes()).expect("HMAC takes a key of any length");
            mac.update(message.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    };
    digest.iter().map(|b| format!("{b:02X}")).collect()
}

/// Whether `fields["sign"]` is their signature under `key`, compared in constant time. The
/// sign type is the one given (a v2 notify often omits `sign_type` even for HMAC orders, so the
/// caller passes the type the order was created with).
pub fn verify(fields: &BTreeMap<String, String>, key: &str, sign_type: SignType) -> bool {
    let Some(given) = fields.get("sign") else { return false };
    let expected = sign(fields, key, sign_type);
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// The official example of the v2 signature page (docs/wechat-pay.md §2.1).
    #[test]
    fn known_answer_from_wechat_documentation() {
        let f = fields(&[
            ("appid", "wxd930ea5d5a258f4f"),
            ("mch_id", "10000100"),
            ("device_info", "1000"),
            ("body", "test"),
            ("nonce_str", "ibuaiVcKdpRxkhJA"),
        ]);
        let key = "192006250b4c09247ec02edce69f6a2d";
        assert_eq!(
            sign_string(&f, key),
            "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100&nonce_str=ibuaiVcKdpRxkhJA&key=192006250b4c09247ec02edce69f6a2d"
        );
        assert_eq!(sign(&f, key, SignType::Md5), "9A0A8659F005D6984697E2CA0A9CF3B7");
        assert_eq!(
            sign(&f, key, SignType::HmacSha256),
            "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
        );
    }

    #[test]
    fn empty_values_and_the_sign_itself_do_not_take_part() {
        let mut f = fields(&[("b", "2"), ("a", "1"), ("empty", ""), ("sign", "XYZ")]);
        assert_eq!(sign_string(&f, "K"), "a=1&b=2&key=K");
        f.insert("sign".into(), sign(&f, "K", SignType::Md5));
        assert!(verify(&f, "K", SignType::Md5));
        assert!(!verify(&f, "K", SignType::HmacSha256));
        f.remove("sign");
        assert!(!verify(&f, "K", SignType::Md5), "no sign, no pass");
    }

    fn field_map() -> impl Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map("[a-z_]{1,12}", "[ -~\u{4e00}-\u{4e10}]{1,20}", 1..10)
            .prop_filter("sign is not a payload field", |m| !m.contains_key("sign"))
    }

    proptest! {
        /// Seed property 1: sign then verify round-trips, for both sign types.
        #[test]
        fn sign_then_verify(mut f in field_map(), key in "[0-9a-zA-Z]{32}", hmac in any::<bool>()) {
            let t = if hmac { SignType::HmacSha256 } else { SignType::Md5 };
            f.insert("sign".into(), sign(&f, &key, t));
            prop_assert!(verify(&f, &key, t));
        }

        /// Any single-byte change to a value, or to the signature, fails verification.
        #[test]
        fn a_changed_byte_fails(mut f in field_map(), key in "[0-9a-zA-Z]{32}", hmac in any::<bool>(),
                                pick in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let t = if hmac { SignType::HmacSha256 } else { SignType::Md5 };
            f.insert("sign".into(), sign(&f, &key, t));
            let names: Vec<String> = f.keys().cloned().collect();
            let name = pick.get(&names).clone();
            let mut bytes = f[&name].clone().into_bytes();
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            // A change that makes the text invalid UTF-8, or empties a value, is a change too.
            let changed = String::from_utf8_lossy(&bytes).into_owned();
            prop_assume!(changed != f[&name]);
            f.insert(name, changed);
            prop_assert!(!verify(&f, &key, t));
        }
    }
}
