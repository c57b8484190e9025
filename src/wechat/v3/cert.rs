//! Platform certificates (certificate mode): WeChat's X.509 certificates whose serial numbers
//! name the key in `Wechatpay-Serial` (docs/wechat-pay.md §3.4). Merchants download them with
//! WeChat's tool and configure the PEM files; the simulator issues its own.

use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::sha2::Sha256;
use rsa::{PrivateKey, PublicKey};
use x509_cert::Certificate;
use x509_cert::builder::profile::cabf::Root;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::der::pem::LineEnding;
use x509_cert::der::{DecodePem, Encode, EncodePem};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Validity;

/// A platform certificate's serial (upper-case hex, as in `Wechatpay-Serial`) and key.
pub fn read_certificate(pem: &str) -> Result<(String, PublicKey), String> {
    let cert = Certificate::from_pem(pem.as_bytes()).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let tbs = cert.tbs_certificate();
    // DER keeps a 0x00 sign byte before a serial whose first byte is 0x80 or more; WeChat's
    // `Wechatpay-Serial` does not.
    let bytes = tbs.serial_number().as_bytes();
    let unsigned = match bytes {
        [0, rest @ ..] if !rest.is_empty() => rest,
        all => all,
    };
    let serial: String = unsigned.iter().map(|b| format!("{b:02X}")).collect();
    let spki = tbs.subject_public_key_info().to_der().map_err(|e| format!("certificate key: {e}"))?;
    let key = PublicKey::from_public_key_der(&spki).map_err(|e| format!("not an RSA certificate: {e}"))?;
    Ok((serial, key))
}

/// A self-signed certificate for `key` with the serial `serial_hex` (the simulator's platform
/// certificate). The serial must fit X.509's 20 bytes once DER adds a sign byte.
pub fn issue_certificate(key: &PrivateKey, serial_hex: &str, subject: &str) -> anyhow::Result<String> {
    let serial_bytes: Vec<u8> = (0..serial_hex.len() / 2)
        .map(|i| u8::from_str_radix(&serial_hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()?;
    let serial = SerialNumber::new(&serial_bytes)?;
    let subject: Name = subject.parse()?;
    let validity = Validity::from_now(std::time::Duration::from_secs(5 * 365 * 24 * 3600))?;
    let spki_der = key.to_public_key().to_public_key_der()?;
    let spki = SubjectPublicKeyInfoOwned::try_from(spki_der.as_bytes())?;
    let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(key.clone());
    let builder = CertificateBuilder::new(Root::new(false, subject)?, serial, validity, spki)?;
    let cert = builder.build::<_, rsa::pkcs1v15::Signature>(&signer)?;
    Ok(cert.to_pem(LineEnding::LF)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::v3::sign::tests::test_key;

    #[test]
    fn a_serial_reads_back_as_wechat_writes_it() {
        // 0x8F…: DER stores a 0x00 sign byte in front, which is not part of the serial.
        for serial in ["8F1A2B3C4D5E6F708192A3B4C5D6E7F8091A2B", "5157F09EFDC096DE15EBE81A47057A7232F5FD17"] {
            let pem = issue_certificate(test_key(), serial, "CN=test,O=payfleet,C=CN").unwrap();
            let (read, key) = read_certificate(&pem).unwrap();
            assert_eq!(read, serial);
            assert_eq!(key, test_key().to_public_key());
        }
        assert!(read_certificate("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----").is_err());
    }
}
