//! The `req_info` of v2 refund notifies: the refund's fields sealed with the APIv2 key, since
//! such a notify carries no `sign`. The simulator seals it; the fleet opens it
//! (`Client::open_refund_notify`).
//!
//! Implements the decryption steps of API v2 "退款结果通知" (refund result notify;
//! docs/wechat-pay.md §2.6): the AES-256 key is the lower-case hex MD5 of the APIv2 key, taken
//! as its 32 ASCII bytes; AES-256-ECB with PKCS#7 padding; the ciphertext in standard base64.

use aes_gcm::aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes_gcm::aes::{Aes256, Block};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::{Digest, Md5};

const BLOCK: usize = 16;

fn cipher(api_key: &str) -> Aes256 {
    let hex: String = Md5::digest(api_key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    Aes256::new_from_slice(hex.as_bytes()).expect("an MD5 in hex is 32 bytes, an AES-256 key")
}

/// Seals `plain` (the inner `<root>…</root>` document) as a `req_info`.
pub fn encrypt(api_key: &str, plain: &str) -> String {
    let aes = cipher(api_key);
    let mut bytes = plain.as_bytes().to_vec();
    // PKCS#7 always pads, a whole block when the text already fills one, so the last byte
    // always says how much to strip.
    let pad = BLOCK - bytes.len() % BLOCK;
    bytes.resize(bytes.len() + pad, pad as u8);
    for chunk in bytes.chunks_exact_mut(BLOCK) {
        let mut block = Block::try_from(&*chunk).expect("a chunk of 16 bytes");
        aes.encrypt_block(&mut block);
        chunk.copy_from_slice(&block);
    }
    BASE64.encode(bytes)
}

/// Opens a `req_info`; refuses anything that was not sealed with this key as `encrypt` seals.
pub fn decrypt(api_key: &str, req_info: &str) -> Result<String, String> {
    let mut bytes = BASE64.decode(req_info.trim()).map_err(|e| format!("req_info is not base64: {e}"))?;
    if bytes.is_empty() || bytes.len() % BLOCK != 0 {
        return Err(format!("req_info is {} bytes, not a whole number of AES blocks", bytes.len()));
    }
    let aes = cipher(api_key);
    for chunk in bytes.chunks_exact_mut(BLOCK) {
        let mut block = Block::try_from(&*chunk).expect("a chunk of 16 bytes");
        aes.decrypt_block(&mut block);
        chunk.copy_from_slice(&block);
    }
    // ECB has no integrity check: the padding is the only sign of a wrong key or a changed
    // byte, so it is checked in full, not just its last byte.
    let pad = usize::from(*bytes.last().expect("at least one block"));
    let body_len = bytes.len().checked_sub(pad).filter(|_| (1..=BLOCK).contains(&pad));
    let Some(body_len) = body_len.filter(|&n| bytes[n..].iter().all(|&b| usize::from(b) == pad)) else {
        return Err("req_info has bad padding (a wrong APIv2 key, or altered)".into());
    };
    bytes.truncate(body_len);
    String::from_utf8(bytes).map_err(|_| "req_info does not open to UTF-8 text".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

    #[test]
    fn opens_what_it_seals() {
        let inner = "<root><out_refund_no><![CDATA[RF1]]></out_refund_no><refund_fee>300</refund_fee></root>";
        let sealed = encrypt(KEY, inner);
        assert_eq!(decrypt(KEY, &sealed).unwrap(), inner);
        // Deterministic (ECB, no IV): the same text seals the same way.
        assert_eq!(encrypt(KEY, inner), sealed);
    }

    /// The same sealing done apart from this code, by `openssl enc -aes-256-ecb -base64` keyed
    /// with the ASCII bytes of MD5(KEY) in lower-case hex.
    #[test]
    fn known_answer_from_openssl() {
        let inner = "<root><out_refund_no><![CDATA[RF1]]></out_refund_no><refund_status>SUCCESS</refund_status></root>";
        let sealed = "WBzGpzQuNpcFxIlFjUUD9FS4tLqEQ5H8bdh90ek2njM+Ev4fh/hsfGme53V7Vcau1OUhMOns+VWNV2yVm8R4/7UcHPHeC6d3\
                      G0QUoQiKTT8nyxks5bOHDzmimgCtgvJhSQ0zU3hlCkgrJ3W05mxTEQ==";
        assert_eq!(encrypt(KEY, inner), sealed);
        assert_eq!(decrypt(KEY, sealed).unwrap(), inner);
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let sealed = encrypt(KEY, "<root><refund_status>SUCCESS</refund_status></root>");
        assert!(decrypt("0123456789abcdef0123456789abcdef", &sealed).is_err());
    }

    #[test]
    fn a_tampered_length_or_encoding_is_refused() {
        let sealed = encrypt(KEY, "<root><a>1</a></root>");
        let mut bytes = BASE64.decode(&sealed).unwrap();
        bytes.pop();
        assert!(decrypt(KEY, &BASE64.encode(&bytes)).unwrap_err().contains("not a whole number"));
        assert!(decrypt(KEY, "").unwrap_err().contains("not a whole number"));
        assert!(decrypt(KEY, "not base64!").unwrap_err().contains("not base64"));
    }

    #[test]
    fn bad_padding_and_non_utf8_are_refused() {
        let aes = cipher(KEY);
        let seal = |mut block: Block| {
            aes.encrypt_block(&mut block);
            BASE64.encode(block)
        };
        // Ends in 0x00: no PKCS#7 pad is zero long.
        assert!(decrypt(KEY, &seal(Block::default())).unwrap_err().contains("padding"));
        // A valid pad of 2 after bytes that are not UTF-8.
        let mut block = Block::from([0xff; 16]);
        block[14] = 2;
        block[15] = 2;
        assert!(decrypt(KEY, &seal(block)).unwrap_err().contains("UTF-8"));
    }

    proptest! {
        /// Every length from 0 to 40 bytes (past two blocks), in one- to four-byte characters.
        #[test]
        fn round_trips_text_of_any_length(chars in "[a-z<>/中😀é]{0,40}", key in "[0-9a-zA-Z]{32}") {
            let mut text = String::new();
            for c in chars.chars() {
                if text.len() + c.len_utf8() > 40 {
                    break;
                }
                text.push(c);
            }
            let sealed = encrypt(&key, &text);
            let len = BASE64.decode(&sealed).unwrap().len();
            prop_assert_eq!(len, (text.len() / BLOCK + 1) * BLOCK);
            prop_assert_eq!(decrypt(&key, &sealed).unwrap(), text);
        }
    }
}
