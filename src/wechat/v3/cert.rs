//! Platform certificates (certificate mode): WeChat's X.509 certificates whose serial numbers
//! name the key in `Wechatpay-Serial` (WECHAT.md §3.4). Merchants download them with WeChat's
//! tool and configure the PEM files; the simulator issues its own.

use rsa::PublicKey;
use rsa::pkcs8::DecodePublicKey;
use x509_cert::Certificate;
use x509_cert::der::{DecodePem, Encode};

/// A platform certificate's serial (upper-case hex, as in `Wechatpay-Serial`) and key.
pub fn read_certificate(pem: &str) -> Result<(String, PublicKey), String> {
    let cert = Certificate::from_pem(pem.as_bytes()).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let tbs = cert.tbs_certificate();
    let serial: String = tbs.serial_number().as_bytes().iter().map(|b| format!("{b:02X}")).collect();
    let spki = tbs.subject_public_key_info().to_der().map_err(|e| format!("certificate key: {e}"))?;
    let key = PublicKey::from_public_key_der(&spki).map_err(|e| format!("not an RSA certificate: {e}"))?;
    Ok((serial, key))
}
