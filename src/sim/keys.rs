//! The simulator's key material, kept in a state directory so the fleet can be pointed at it:
//! the merchant's API key pair and certificate serial (the merchant side, which WeChat would
//! hold only the public half of), WeChat's public key (`PUB_KEY_ID_…`) and a platform
//! certificate, the APIv3 and APIv2 keys and the mini-program AppSecret. `payfleet.env` in the
//! directory holds the PAYFLEET__WECHAT__… settings that use them.

use std::path::{Path, PathBuf};

use rsa::PrivateKey;

use crate::wechat::v3::cert::issue_certificate;
use crate::wechat::v3::crypto::{private_key_from_pem, private_key_to_pem, public_key_to_pem};

/// Everything the simulator signs, verifies and encrypts with.
pub struct SimKeys {
    pub dir: PathBuf,
    pub appid: String,
    pub mchid: String,
    pub merchant_serial: String,
    /// WeChat knows only the public half; the simulator keeps the pair to hand it to the fleet.
    pub merchant_key: PrivateKey,
    pub public_key_id: String,
    /// WeChat Pay public key mode.
    pub wechat_key: PrivateKey,
    pub platform_serial: String,
    /// Certificate mode.
    pub platform_key: PrivateKey,
    pub api_v3_key: String,
    pub api_v2_key: String,
    pub app_secret: String,
}

fn random_text(len: usize, alphabet: &[u8]) -> String {
    (0..len).map(|_| alphabet[rand::random_range(0..alphabet.len())] as char).collect()
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const HEX: &[u8] = b"0123456789ABCDEF";

fn read(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok().map(|s| s.trim_end().to_owned())
}

impl SimKeys {
    /// Loads the keys in `dir`, generating (and writing) whatever is missing.
    pub fn load_or_create(dir: &Path, appid: &str, mchid: &str) -> anyhow::Result<SimKeys> {
        std::fs::create_dir_all(dir)?;
        let key = |name: &str| -> anyhow::Result<PrivateKey> {
            match read(dir, name) {
                Some(pem) => {
                    private_key_from_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(name).display()))
                }
                None => {
                    let key = PrivateKey::new(&mut rand::rng(), 2048)?;
                    std::fs::write(dir.join(name), private_key_to_pem(&key))?;
                    Ok(key)
                }
            }
        };
        let text = |name: &str, make: &dyn Fn() -> String| -> anyhow::Result<String> {
            match read(dir, name) {
                Some(value) => Ok(value),
                None => {
                    let value = make();
                    std::fs::write(dir.join(name), &value)?;
                    Ok(value)
                }
            }
        };
        let keys = SimKeys {
            dir: dir.to_path_buf(),
            appid: appid.to_owned(),
            mchid: mchid.to_owned(),
            merchant_key: key("apiclient_key.pem")?,
            merchant_serial: text("merchant_serial", &|| random_text(40, HEX))?,
            wechat_key: key("wechatpay_pub_key_private.pem")?,
            public_key_id: text("public_key_id", &|| format!("PUB_KEY_ID_{}", random_text(32, b"0123456789")))?,
            platform_key: key("platform_key_private.pem")?,
            // An X.509 serial is at most 20 bytes as a positive DER INTEGER: the first byte must
            // be below 0x80 (no sign padding) and above 0 (no leading zero to strip).
            platform_serial: text("platform_serial", &|| random_text(1, b"1234567") + &random_text(39, HEX))?,
            api_v3_key: text("api_v3_key", &|| random_text(32, ALNUM))?,
            api_v2_key: text("api_v2_key", &|| random_text(32, ALNUM))?,
            app_secret: text("app_secret", &|| random_text(32, b"0123456789abcdef"))?,
        };
        std::fs::write(dir.join("pub_key.pem"), public_key_to_pem(&keys.wechat_key.to_public_key()))?;
        std::fs::write(keys.platform_certificate_path(), keys.platform_certificate()?)?;
        std::fs::write(
            dir.join("payfleet.env"),
            keys.fleet_env().iter().map(|(k, v)| format!("{k}={v}\n")).collect::<String>(),
        )?;
        Ok(keys)
    }

    pub fn platform_certificate_path(&self) -> PathBuf {
        self.dir.join(format!("wechatpay_{}.pem", self.platform_serial))
    }

    /// A self-signed X.509 certificate for the platform key, with the platform serial.
    fn platform_certificate(&self) -> anyhow::Result<String> {
        issue_certificate(&self.platform_key, &self.platform_serial, "CN=Tenpay.com Root CA,O=wechat-sim,C=CN")
    }

    /// The settings that point payfleet at these keys (v3 in public-key mode, v2 key too).
    pub fn fleet_env(&self) -> Vec<(String, String)> {
        let path = |name: &str| self.dir.join(name).display().to_string();
        [
            ("PAYFLEET__WECHAT__APPID", self.appid.clone()),
            ("PAYFLEET__WECHAT__MCHID", self.mchid.clone()),
            ("PAYFLEET__WECHAT__API_V3_KEY_FILE", path("api_v3_key")),
            ("PAYFLEET__WECHAT__API_V2_KEY_FILE", path("api_v2_key")),
            ("PAYFLEET__WECHAT__MERCHANT_SERIAL_NO", self.merchant_serial.clone()),
            ("PAYFLEET__WECHAT__MERCHANT_PRIVATE_KEY_FILE", path("apiclient_key.pem")),
            ("PAYFLEET__WECHAT__PUBLIC_KEY_ID", self.public_key_id.clone()),
            ("PAYFLEET__WECHAT__PUBLIC_KEY_FILE", path("pub_key.pem")),
            ("PAYFLEET__WECHAT__PLATFORM_CERTIFICATE_FILES", self.platform_certificate_path().display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}
