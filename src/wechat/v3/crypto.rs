//! API v3 cryptography besides signatures: the AEAD_AES_256_GCM `resource` of notifies (and of
//! downloaded platform certificates), RSA key files, and the set of WeChat's verification keys.
//!
//! Implements "证书和回调报文解密" (https://pay.weixin.qq.com/wiki/doc/apiv3/wechatpay/wechatpay4_2.shtml;
//! docs/wechat-pay.md §3.5): key = the 32-byte APIv3 key, nonce = the 12 given characters,
//! AAD = `associated_data`, ciphertext = base64(ct ‖ 16-byte tag).

use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{PrivateKey, PublicKey};

use super::sign::{SIGNATURE_PROBE_PREFIX, response_message, verify, within_window};

/// What is wrong with something WeChat (or someone pretending to be) sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("timestamp {0} is more than five minutes from now")]
    Stale(String),
    #[error("signature probe (WECHATPAY/SIGNTEST/)")]
    Probe,
    #[error("no WeChat key with serial {0}")]
    UnknownSerial(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("resource does not decrypt: {0}")]
    Decrypt(String),
}

/// Decrypts a `resource` (AEAD_AES_256_GCM) with the APIv3 key.
pub fn decrypt_resource(
    api_v3_key: &[u8],
    nonce: &str,
    associated_data: &str,
    ciphertext: &str,
) -> Result<Vec<u8>, VerifyError> {
    let cipher = Aes256Gcm::new_from_slice(api_v3_key)
        .map_err(|_| VerifyError::Decrypt("the APIv3 key is not 32 bytes".into()))?;
    let nonce =
        Nonce::try_from(nonce.as_bytes()).map_err(|_| VerifyError::Decrypt("the nonce is not 12 bytes".into()))?;
    let bytes =
        BASE64.decode(ciphertext).map_err(|e| VerifyError::Decrypt(format!("ciphertext is not base64: {e}")))?;
    cipher
        .decrypt(&nonce, Payload { msg: &bytes, aad: associated_data.as_bytes() })
        .map_err(|_| VerifyError::Decrypt("authentication failed (wrong APIv3 key, AAD or tampered)".into()))
}

/// Encrypts a `resource` as WeChat does (the simulator's side of `decrypt_resource`).
pub fn encrypt_resource(api_v3_key: &[u8], nonce: &str, associated_data: &str, plaintext: &[u8]) -> String {
    let cipher = Aes256Gcm::new_from_slice(api_v3_key).expect("a 32-byte APIv3 key");
    let nonce = Nonce::try_from(nonce.as_bytes()).expect("a 12-byte nonce");
    BASE64.encode(
        cipher
            .encrypt(&nonce, Payload { msg: plaintext, aad: associated_data.as_bytes() })
            .expect("AES-GCM encryption"),
    )
}

/// Reads a PKCS#8 PEM private key (`apiclient_key.pem`).
pub fn private_key_from_pem(pem: &str) -> Result<PrivateKey, String> {
    PrivateKey::from_pkcs8_pem(pem).map_err(|e| format!("not a PKCS#8 RSA private key: {e}"))
}

/// Reads a SubjectPublicKeyInfo PEM public key (`pub_key.pem`).
pub fn public_key_from_pem(pem: &str) -> Result<PublicKey, String> {
    PublicKey::from_public_key_pem(pem).map_err(|e| format!("not an RSA public key: {e}"))
}

pub fn private_key_to_pem(key: &PrivateKey) -> String {
    key.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8 encoding").to_string()
}

pub fn public_key_to_pem(key: &PublicKey) -> String {
    key.to_public_key_pem(LineEnding::LF).expect("SPKI encoding")
}

/// The `Wechatpay-*` headers of a response or notify.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedHeaders {
    pub timestamp: Option<String>,
    pub nonce: Option<String>,
    pub signature: Option<String>,
    pub serial: Option<String>,
}

/// WeChat's verification keys, by serial: platform certificates (serial in hex) and/or the
/// WeChat Pay public key (`PUB_KEY_ID_…`). Both may be present while a merchant switches modes.
#[derive(Clone, Default)]
pub struct PlatformKeys {
    keys: HashMap<String, PublicKey>,
}

impl PlatformKeys {
    pub fn insert(&mut self, serial: &str, key: PublicKey) {
        self.keys.insert(serial.to_ascii_uppercase(), key);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies a signed response or notify body: the timestamp within five minutes of `now`,
    /// not a signature probe, the key named by the serial, the signature over the raw body.
    pub fn verify(&self, headers: &SignedHeaders, body: &[u8], now: i64) -> Result<(), VerifyError> {
        let timestamp = headers.timestamp.as_deref().ok_or(VerifyError::MissingHeader("Wechatpay-Timestamp"))?;
        let ts: i64 = timestamp.parse().map_err(|_| VerifyError::Stale(timestamp.to_owned()))?;
        if !within_window(now, ts) {
            return Err(VerifyError::Stale(timestamp.to_owned()));
        }
        self.verify_signature(headers, body)
    }

    /// The signature alone, whatever the timestamp's age: for a notify that was verified with
    /// its window when it arrived and is checked again later, after waiting in a queue.
    pub fn verify_signature(&self, headers: &SignedHeaders, body: &[u8]) -> Result<(), VerifyError> {
        let timestamp = headers.timestamp.as_deref().ok_or(VerifyError::MissingHeader("Wechatpay-Timestamp"))?;
        let nonce = headers.nonce.as_deref().ok_or(VerifyError::MissingHeader("Wechatpay-Nonce"))?;
        let signature = headers.signature.as_deref().ok_or(VerifyError::MissingHeader("Wechatpay-Signature"))?;
        let serial = headers.serial.as_deref().ok_or(VerifyError::MissingHeader("Wechatpay-Serial"))?;
        if signature.starts_with(SIGNATURE_PROBE_PREFIX) {
            return Err(VerifyError::Probe);
        }
        let key =
            self.keys.get(&serial.to_ascii_uppercase()).ok_or_else(|| VerifyError::UnknownSerial(serial.to_owned()))?;
        if verify(key, &response_message(timestamp, nonce, body), signature) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::v3::sign::{sign, tests::test_key};
    use proptest::prelude::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_resource_decrypts_only_with_its_key_and_aad() {
        let ct = encrypt_resource(KEY, "fdasflkja484", "transaction", b"{\"out_trade_no\":\"1\"}");
        assert_eq!(decrypt_resource(KEY, "fdasflkja484", "transaction", &ct).unwrap(), b"{\"out_trade_no\":\"1\"}");
        assert!(decrypt_resource(b"0123456789abcdef0123456789abcdeX", "fdasflkja484", "transaction", &ct).is_err());
        assert!(decrypt_resource(KEY, "fdasflkja484", "refund", &ct).is_err());
        assert!(decrypt_resource(KEY, "fdasflkja485", "transaction", &ct).is_err());
        assert!(decrypt_resource(KEY, "short", "transaction", &ct).is_err());
    }

    #[test]
    fn keys_survive_pem() {
        let key = test_key();
        let back = private_key_from_pem(&private_key_to_pem(key)).unwrap();
        assert_eq!(back.to_public_key(), key.to_public_key());
        assert_eq!(public_key_from_pem(&public_key_to_pem(&key.to_public_key())).unwrap(), key.to_public_key());
        assert!(private_key_from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----").is_err());
    }

    fn signed(body: &[u8], ts: i64) -> SignedHeaders {
        let timestamp = ts.to_string();
        SignedHeaders {
            signature: Some(sign(test_key(), &response_message(&timestamp, "N0nce", body))),
            timestamp: Some(timestamp),
            nonce: Some("N0nce".into()),
            serial: Some("PUB_KEY_ID_0114232134912410000000000000".into()),
        }
    }

    #[test]
    fn platform_keys_check_window_probe_serial_and_signature() {
        let mut keys = PlatformKeys::default();
        keys.insert("PUB_KEY_ID_0114232134912410000000000000", test_key().to_public_key());
        let now = 1_700_000_000;
        let h = signed(b"{}", now);
        assert_eq!(keys.verify(&h, b"{}", now + 299), Ok(()));
        assert_eq!(keys.verify(&h, b"{}", now + 300), Err(VerifyError::Stale(now.to_string())));
        assert_eq!(keys.verify(&h, b"{}", now - 300), Err(VerifyError::Stale(now.to_string())));
        assert_eq!(keys.verify(&h, b"{ }", now), Err(VerifyError::BadSignature));
        let probe = SignedHeaders { signature: Some("WECHATPAY/SIGNTEST/abc".into()), ..h.clone() };
        assert_eq!(keys.verify(&probe, b"{}", now), Err(VerifyError::Probe));
        let other = SignedHeaders { serial: Some("5157F09EFDC096DE15EBE81A47057A72".into()), ..h.clone() };
        assert!(matches!(keys.verify(&other, b"{}", now), Err(VerifyError::UnknownSerial(_))));
        let bare = SignedHeaders { nonce: None, ..h };
        assert_eq!(keys.verify(&bare, b"{}", now), Err(VerifyError::MissingHeader("Wechatpay-Nonce")));
    }

    #[test]
    fn a_timestamp_at_the_ends_of_i64_is_stale_not_wrapped_into_the_window() {
        let mut keys = PlatformKeys::default();
        keys.insert("PUB_KEY_ID_0114232134912410000000000000", test_key().to_public_key());
        for (ts, now) in [(i64::MIN, 1_700_000_000), (i64::MIN + 1, 1), (i64::MAX, -1), (i64::MAX, i64::MIN)] {
            let h = signed(b"{}", ts);
            assert_eq!(keys.verify(&h, b"{}", now), Err(VerifyError::Stale(ts.to_string())), "ts {ts}, now {now}");
        }
        assert!(within_window(i64::MAX, i64::MAX) && within_window(i64::MIN, i64::MIN + 299));
    }

    proptest! {
        #[test]
        fn encrypt_then_decrypt(plain in proptest::collection::vec(any::<u8>(), 0..300), aad in "[a-z]{0,12}",
                                at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let ct = encrypt_resource(KEY, "0123456789ab", &aad, &plain);
            prop_assert_eq!(decrypt_resource(KEY, "0123456789ab", &aad, &ct).unwrap(), plain);
            let mut raw = BASE64.decode(&ct).unwrap();
            let i = at.index(raw.len());
            raw[i] ^= flip;
            prop_assert!(decrypt_resource(KEY, "0123456789ab", &aad, &BASE64.encode(raw)).is_err());
        }
    }
}
