//! Settings for every binary, one struct per section of `config/default.toml`.
//!
//! `load()` layers config/default.toml (or the copy compiled into the binary when the file is
//! not there), an optional config/<PAYFLEET_ENV>.toml, then `PAYFLEET__SECTION__KEY` environment
//! variables. Secrets come only from the environment or from `*_file` settings; a config file
//! that holds one is refused, so a secret cannot end up committed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::Money;

/// The defaults, compiled in so a binary started outside the repository still has them.
const DEFAULTS: &str = include_str!("../config/default.toml");

/// Keys whose values are secrets: allowed from the environment or a file, never from a config
/// file.
const SECRET_KEYS: &[&str] = &[
    "auth.jwt_secret",
    "auth.operator_jwt_secret",
    "pay.password_pepper",
    "pay.seal_keys",
    "wechat.api_v3_key",
    "wechat.api_v2_key",
];

/// Why the settings could not be loaded; every message names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The layers did not parse or did not fit the settings' types.
    #[error("configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    /// A value parsed but makes no sense.
    #[error("configuration key `{key}`: {reason}")]
    Bad { key: &'static str, reason: String },
    /// A secret is missing or sits in a config file.
    #[error("configuration key `{key}`: {reason}")]
    Secret { key: String, reason: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub ingress: IngressSettings,
    pub database: DatabaseSettings,
    pub broker: BrokerSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub pay: PaySettings,
    pub rate_limit: RateLimitSettings,
    pub pay_worker: WorkerSettings,
    pub notify_worker: WorkerSettings,
    pub followup_worker: WorkerSettings,
    pub outbox: OutboxSettings,
    pub wechat: WechatSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    /// The development secrets file some secrets came from (`DEV_SECRETS_FILE`), if any: said
    /// at start, so nobody mistakes a development fleet for a configured one.
    #[serde(skip)]
    pub dev_secrets_from: Option<PathBuf>,
}

/// Where `payctl demo` keeps the development secrets it made up, so that `payctl` and the
/// binaries run beside the demo use the same ones. Read only when `PAYFLEET_ENV` is unset or
/// `development`, and only for secrets the environment does not give.
pub const DEV_SECRETS_FILE: &str = "target/payfleet-dev.env";

/// The secrets a fleet needs that development can make up: the JWT secrets (users', operators'),
/// the pepper and the seal keys.
pub const DEV_SECRET_VARS: [&str; 4] = [
    "PAYFLEET__AUTH__JWT_SECRET",
    "PAYFLEET__AUTH__OPERATOR_JWT_SECRET",
    "PAYFLEET__PAY__PASSWORD_PEPPER",
    "PAYFLEET__PAY__SEAL_KEYS",
];

/// Whether the profile is a development one (no `PAYFLEET_ENV`, or `development`).
pub fn is_development(profile: Option<&str>) -> bool {
    matches!(profile, None | Some("development"))
}

/// Whether these variables give a secret: `PAYFLEET__…` itself or its `…_FILE`, not empty.
pub fn gives_secret(env: &std::collections::HashMap<String, String>, var: &str) -> bool {
    let set = |k: &str| env.get(k).is_some_and(|v| !v.is_empty());
    set(var) || set(&format!("{var}_FILE"))
}

/// The `KEY=value` lines of the development secrets file, if it exists.
pub fn read_dev_secrets(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .map(|text| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| DEV_SECRET_VARS.contains(k))
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSettings {
    /// Address the HTTP API binds; port 0 picks a free port (printed at start).
    pub listen: SocketAddr,
    /// How long a pay request waits for the worker before answering 202 PROCESSING.
    pub reply_timeout_ms: u64,
    /// Request bodies larger than this are refused before they are parsed.
    pub max_body_bytes: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    /// A request waiting longer than this for a connection fails instead of piling up.
    pub acquire_timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    pub url: SecretString,
    /// Prefixed to every queue name, so several fleets or tests share one vhost.
    pub namespace: String,
    /// Every binary declares the queues at start. Off, they only check the queues exist (an
    /// operator declares them with `payctl topology`), so their broker users need no
    /// configure permission.
    pub declare_topology: bool,
    /// Quorum queues dead-letter a message delivered more often than this.
    pub delivery_limit: u32,
    /// A publish not confirmed within this is treated as failed.
    pub publish_timeout_ms: u64,
    /// Delay tiers for transient failures of `pay.requests` (a list, or "1000,5000" from the
    /// environment).
    #[serde(deserialize_with = "comma_list")]
    pub retry_delays_ms: Vec<u64>,
    /// Delay tiers of the outgoing notices (OrderNotify, shipping): WeChat's own schedule.
    #[serde(deserialize_with = "comma_list")]
    pub notice_retry_delays_ms: Vec<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: SecretString,
    /// Prefixed to every key, so several fleets or tests share one Redis.
    pub key_prefix: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    jwt_secret: Option<SecretString>,
    jwt_secret_file: Option<PathBuf>,
    /// Lifetime of tokens `payctl token` issues.
    pub token_ttl_secs: u64,
    /// The operators' own key: their tokens are signed with it alone, so whoever issues user
    /// tokens cannot issue an operator's. Unset: `/admin/v1/…` is off.
    #[serde(default)]
    operator_jwt_secret: Option<SecretString>,
    #[serde(default)]
    operator_jwt_secret_file: Option<PathBuf>,
    /// Lifetime of operator tokens.
    pub operator_token_ttl_secs: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaySettings {
    password_pepper: Option<SecretString>,
    password_pepper_file: Option<PathBuf>,
    seal_keys: Option<SecretString>,
    seal_keys_file: Option<PathBuf>,
    /// bcrypt work factor for pay passwords (4..=31).
    pub bcrypt_cost: u32,
    /// Wrong pay passwords allowed before the account's balance pay locks.
    pub password_max_attempts: u32,
    /// How long a lock (and the count of wrong tries) lasts.
    pub password_lock_secs: u64,
    /// Pay-password checks (right ones too) one user may cause per minute: each is ~75 ms of
    /// CPU at bcrypt cost 10.
    pub password_checks_per_minute: u32,
    /// The largest single payment accepted.
    pub max_amount: Money,
    /// Integral points per yuan.
    pub integral_rate: u32,
    /// Fewest points one integral payment may spend.
    pub integral_min: Money,
    /// Most points one order may be paid with.
    pub integral_max_per_order: Money,
    /// How long an unpaid order stays payable.
    pub order_ttl_secs: u64,
    pub sms_code_ttl_secs: u64,
    /// Wrong SMS codes allowed before the code is burnt.
    pub sms_code_max_attempts: u32,
    /// Seed 000's PaymentConfig, one table per method.
    pub balance: MethodSettings,
    pub integral: MethodSettings,
    pub money2: MethodSettings,
    pub wechat: MethodSettings,
}

/// What one payment method accepts (`pay.balance`, `pay.integral`, `pay.money2`, `pay.wechat`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSettings {
    /// Off: the method answers METHOD_DISABLED.
    pub enabled: bool,
    /// Yuan, inclusive.
    pub min_amount: Money,
    /// Yuan, inclusive.
    pub max_amount: Money,
    /// Balance only: the most one user may pay with balance per calendar day in Asia/Shanghai,
    /// counted in the database (DAILY_LIMIT past it); unset: no limit.
    #[serde(default)]
    pub max_daily_amount: Option<Money>,
    /// Balance only: whether a balance payment needs the pay password (unset: it does).
    #[serde(default)]
    pub require_password: Option<bool>,
}

/// Requests per window the ingress serves one user and one client address, per kind of
/// request; counted in Redis, so every ingress copy shares them. 0 turns a limit off.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub window_secs: u64,
    /// Take the client address from `X-Forwarded-For` (its last entry, the one the proxy in
    /// front appended): only behind exactly one such proxy, or a client could name any address.
    pub trust_forwarded_for: bool,
    /// Balance, integral and money2 pay.
    pub pay: RateLimit,
    /// WeChat create and retry.
    pub create: RateLimit,
    /// Creating orders.
    pub orders: RateLimit,
    /// Reading a payment's status.
    pub status: RateLimit,
    /// Setting the pay password with an SMS code.
    pub sms_code: RateLimit,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_user: u32,
    pub per_ip: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub prefetch: u16,
    pub concurrency: usize,
    pub batch_max: usize,
    /// Address for /healthz and /readyz; empty for none.
    pub health_listen: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    pub relay: bool,
    pub poll_ms: u64,
    pub batch: i64,
}

/// Which WeChat Pay API generation outgoing calls use.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WechatApiVersion {
    V2,
    V3,
}

impl WechatApiVersion {
    /// As in `wechat.api_version` and `payments.api_version`.
    pub fn as_str(self) -> &'static str {
        match self {
            WechatApiVersion::V2 => "v2",
            WechatApiVersion::V3 => "v3",
        }
    }

    pub fn parse(s: &str) -> Option<WechatApiVersion> {
        [WechatApiVersion::V2, WechatApiVersion::V3].into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatSettings {
    /// The generation outgoing calls use; notifies of both are accepted when both are configured.
    pub api_version: WechatApiVersion,
    pub appid: String,
    pub mchid: String,
    /// WeChat Pay's API host (`https://api.mch.weixin.qq.com`), or wechat-sim.
    pub api_base: String,
    /// The mini-program server API host (`https://api.weixin.qq.com`), or wechat-sim.
    pub mp_api_base: String,
    /// Where WeChat sends pay notifies: this fleet's ingress, reachable from WeChat.
    pub notify_url: String,
    /// Where WeChat sends the notifies of our refunds (`…/api/v1/payment/wechat/refund-notify`).
    pub refund_notify_url: String,
    /// v2: `MD5` or `HMAC-SHA256`.
    pub v2_sign_type: String,
    api_v2_key: Option<SecretString>,
    api_v2_key_file: Option<PathBuf>,
    /// v2: the merchant API certificate and its private key in one PEM file (from
    /// `apiclient_cert.p12`), presented on `/secapi/…` calls (refunds).
    pub v2_client_cert_file: Option<PathBuf>,
    api_v3_key: Option<SecretString>,
    api_v3_key_file: Option<PathBuf>,
    /// v3: the merchant API certificate's serial number.
    pub merchant_serial_no: String,
    /// v3: the merchant API private key (`apiclient_key.pem`).
    pub merchant_private_key_file: Option<PathBuf>,
    /// v3 public-key mode: the WeChat Pay public key's id (`PUB_KEY_ID_…`) and PEM file.
    pub public_key_id: String,
    pub public_key_file: Option<PathBuf>,
    /// v3 certificate mode: WeChat Pay platform certificate PEM files.
    #[serde(deserialize_with = "comma_list")]
    pub platform_certificate_files: Vec<PathBuf>,
    pub http_timeout_ms: u64,
    /// A WeChat payment still PAYING after this is queried at WeChat when its status is read.
    pub query_after_secs: u64,
    /// A prepay is reused for a second create within this (WeChat keeps it two hours).
    pub prepay_valid_secs: u64,
}

/// How a binary stops (`shutdown`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long a stop may take, from the first SIGTERM or Ctrl-C, before the binary exits
    /// without finishing (under the 30 s a container orchestrator usually grants).
    pub deadline_secs: u64,
}

impl ShutdownSettings {
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_secs)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub filter: String,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Loads the layers from `PAYFLEET_CONFIG_DIR` (default `./config`) and the process
    /// environment.
    pub fn load() -> Result<Settings, ConfigError> {
        Settings::load_with(&[])
    }

    /// `load()` with some variables set on top of the process environment (the demo and the
    /// benchmark give their fleet secrets and namespaces this way). In development, a secret
    /// neither gives is taken from `DEV_SECRETS_FILE` if it has it.
    pub fn load_with(overrides: &[(String, String)]) -> Result<Settings, ConfigError> {
        let dir = std::env::var_os("PAYFLEET_CONFIG_DIR").map_or_else(|| PathBuf::from("config"), PathBuf::from);
        let profile = std::env::var("PAYFLEET_ENV").ok().filter(|p| !p.is_empty());
        let mut env: std::collections::HashMap<String, String> = std::env::vars().collect();
        env.extend(overrides.iter().cloned());
        let mut from_dev_file = false;
        if is_development(profile.as_deref()) {
            for (key, value) in read_dev_secrets(Path::new(DEV_SECRETS_FILE)) {
                if !gives_secret(&env, &key) {
                    env.insert(key, value);
                    from_dev_file = true;
                }
            }
        }
        let mut settings = Settings::load_from(&dir, profile.as_deref(), Some(env))?;
        settings.dev_secrets_from = from_dev_file.then(|| PathBuf::from(DEV_SECRETS_FILE));
        Ok(settings)
    }

    /// `load()` with explicit inputs; `env` replaces the process environment (for tests).
    pub fn load_from(
        dir: &Path,
        profile: Option<&str>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Settings, ConfigError> {
        let default_file = dir.join("default.toml");
        let mut files = config::Config::builder();
        files = if default_file.exists() {
            files.add_source(config::File::from(default_file))
        } else {
            files.add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        };
        if let Some(profile) = profile {
            files = files.add_source(config::File::from(dir.join(format!("{profile}.toml"))).required(false));
        }
        let files = files.build()?;
        for key in SECRET_KEYS {
            if files.get_string(key).is_ok() {
                return Err(ConfigError::Secret {
                    key: (*key).to_owned(),
                    reason: format!("a secret must not be in a config file; set {} or `{key}_file`", env_name(key)),
                });
            }
        }
        let environment =
            // An empty variable counts as unset, so a setting can be switched off from the
            // environment (e.g. PAYFLEET__WECHAT__PUBLIC_KEY_FILE=).
            config::Environment::with_prefix("PAYFLEET").prefix_separator("__").separator("__").ignore_empty(true).source(env);
        let settings: Settings =
            config::Config::builder().add_source(files).add_source(environment).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: &str| Err(ConfigError::Bad { key, reason: reason.to_owned() });
        if !(4..=31).contains(&self.pay.bcrypt_cost) {
            return bad("pay.bcrypt_cost", "must be between 4 and 31");
        }
        if self.pay.integral_rate == 0 {
            return bad("pay.integral_rate", "must be at least 1");
        }
        if self.pay.integral_min > self.pay.integral_max_per_order {
            return bad("pay.integral_min", "must not exceed pay.integral_max_per_order");
        }
        if self.pay.max_amount.is_zero() {
            return bad("pay.max_amount", "must be above zero");
        }
        for (key, method) in [
            ("pay.balance", &self.pay.balance),
            ("pay.integral", &self.pay.integral),
            ("pay.money2", &self.pay.money2),
            ("pay.wechat", &self.pay.wechat),
        ] {
            if method.min_amount.is_zero() || method.min_amount > method.max_amount {
                return bad(key, "min_amount must be above zero and at most max_amount");
            }
            if method.max_daily_amount.is_some() && key != "pay.balance" {
                return bad(key, "max_daily_amount is a balance rule only");
            }
            if method.require_password.is_some() && key != "pay.balance" {
                return bad(key, "require_password is a balance rule only");
            }
            if method.max_daily_amount.is_some_and(|daily| daily < method.min_amount) {
                return bad(key, "max_daily_amount must be at least min_amount");
            }
        }
        if self.pay.password_max_attempts == 0 {
            return bad("pay.password_max_attempts", "must be at least 1");
        }
        if self.pay.password_checks_per_minute == 0 {
            return bad("pay.password_checks_per_minute", "must be at least 1");
        }
        if self.shutdown.deadline_secs == 0 {
            return bad("shutdown.deadline_secs", "must be at least 1");
        }
        if self.rate_limit.window_secs == 0 {
            return bad("rate_limit.window_secs", "must be at least 1");
        }
        for (key, worker) in [
            ("pay_worker", &self.pay_worker),
            ("notify_worker", &self.notify_worker),
            ("followup_worker", &self.followup_worker),
        ] {
            if worker.prefetch == 0 || worker.concurrency == 0 || worker.batch_max == 0 {
                return bad(key, "prefetch, concurrency and batch_max must be at least 1");
            }
            if !worker.health_listen.is_empty() && worker.health_listen.parse::<SocketAddr>().is_err() {
                return bad(key, "health_listen must be empty or an address like 127.0.0.1:9090");
            }
        }
        if self.broker.retry_delays_ms.is_empty() || self.broker.retry_delays_ms.contains(&0) {
            return bad("broker.retry_delays_ms", "needs at least one delay, none of them zero");
        }
        if self.broker.notice_retry_delays_ms.is_empty() || self.broker.notice_retry_delays_ms.contains(&0) {
            return bad("broker.notice_retry_delays_ms", "needs at least one delay, none of them zero");
        }
        if !matches!(self.wechat.v2_sign_type.as_str(), "MD5" | "HMAC-SHA256") {
            return bad("wechat.v2_sign_type", "must be MD5 or HMAC-SHA256");
        }
        if !(1..=1000).contains(&self.broker.delivery_limit) {
            return bad("broker.delivery_limit", "must be between 1 and 1000");
        }
        if self.outbox.batch <= 0 {
            return bad("outbox.batch", "must be at least 1");
        }
        if self.ingress.reply_timeout_ms == 0 {
            return bad("ingress.reply_timeout_ms", "must be above zero");
        }
        if !self.broker.namespace.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return bad("broker.namespace", "may hold only letters, digits, '.', '_' and '-'");
        }
        Ok(())
    }
}

impl IngressSettings {
    pub fn reply_timeout(&self) -> Duration {
        Duration::from_millis(self.reply_timeout_ms)
    }
}

impl BrokerSettings {
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}

impl AuthSettings {
    /// The HS256 key for user tokens; at least 32 bytes.
    pub fn jwt_secret(&self) -> Result<SecretString, ConfigError> {
        resolve_secret("auth.jwt_secret", self.jwt_secret.as_ref(), self.jwt_secret_file.as_deref(), 32)
    }

    /// The HS256 key for operator tokens, at least 32 bytes; None when it is not set.
    pub fn operator_jwt_secret(&self) -> Result<Option<SecretString>, ConfigError> {
        if self.operator_jwt_secret.is_none() && self.operator_jwt_secret_file.is_none() {
            return Ok(None);
        }
        let key = "auth.operator_jwt_secret";
        resolve_secret(key, self.operator_jwt_secret.as_ref(), self.operator_jwt_secret_file.as_deref(), 32).map(Some)
    }

    /// Token keys for users and, when configured, operators.
    pub fn token_keys(&self) -> Result<crate::auth::TokenKeys, ConfigError> {
        let keys =
            crate::auth::TokenKeys::new(&self.jwt_secret()?, std::time::Duration::from_secs(self.token_ttl_secs));
        Ok(match self.operator_jwt_secret()? {
            Some(secret) => keys.with_operators(&secret, std::time::Duration::from_secs(self.operator_token_ttl_secs)),
            None => keys,
        })
    }
}

impl PaySettings {
    /// Whether balance payments (and balance parts) need the pay password
    /// (`pay.balance.require_password`, true unless set false).
    pub fn balance_needs_password(&self) -> bool {
        self.balance.require_password.unwrap_or(true)
    }

    /// The rule of one method.
    pub fn rule(&self, method: crate::domain::PayMethod) -> crate::domain::payment::MethodRule {
        let s = self.method(method);
        crate::domain::payment::MethodRule {
            enabled: s.enabled,
            min_amount: s.min_amount,
            max_amount: s.max_amount,
            max_daily_amount: s.max_daily_amount,
        }
    }

    /// The settings of one method.
    pub fn method(&self, method: crate::domain::PayMethod) -> &MethodSettings {
        use crate::domain::PayMethod;
        match method {
            PayMethod::Balance => &self.balance,
            PayMethod::Integral => &self.integral,
            PayMethod::Money2 => &self.money2,
            PayMethod::Wechat => &self.wechat,
        }
    }

    pub fn integral_rules(&self) -> crate::domain::payment::IntegralRules {
        crate::domain::payment::IntegralRules {
            rate: self.integral_rate,
            min: self.integral_min,
            max_per_order: self.integral_max_per_order,
        }
    }

    /// The server-side pepper mixed into every pay password hash; at least 16 bytes.
    pub fn password_pepper(&self) -> Result<SecretString, ConfigError> {
        resolve_secret("pay.password_pepper", self.password_pepper.as_ref(), self.password_pepper_file.as_deref(), 16)
    }

    pub fn password_lock(&self) -> Duration {
        Duration::from_secs(self.password_lock_secs)
    }

    /// The keys pay passwords are sealed with for their trip through the broker: `id:base64`
    /// pairs, comma-separated; the first seals, every one opens (so a key can be rotated while
    /// messages sealed with the one before still wait in a queue).
    pub fn seal_keys(&self) -> Result<SealKeys, ConfigError> {
        let text = resolve_secret("pay.seal_keys", self.seal_keys.as_ref(), self.seal_keys_file.as_deref(), 1)?;
        SealKeys::parse(text.expose_secret())
            .map_err(|reason| ConfigError::Secret { key: "pay.seal_keys".into(), reason })
    }
}

/// AES-256 keys for sealing pay passwords, by key id; the first is the one that seals.
#[derive(Clone)]
pub struct SealKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl SealKeys {
    /// `id:base64key[,id:base64key…]`: ids of 1 to 16 letters, digits, '_' or '-', keys of 32
    /// bytes.
    pub fn parse(text: &str) -> Result<SealKeys, String> {
        use base64::Engine;
        let mut keys = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, key) = entry.split_once(':').ok_or("each key is `id:base64`")?;
            if id.is_empty()
                || id.len() > 16
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(format!("key id {id:?} must be 1 to 16 letters, digits, '_' or '-'"));
            }
            let bytes =
                base64::engine::general_purpose::STANDARD.decode(key).map_err(|_| format!("key {id} is not base64"))?;
            let key: [u8; 32] = bytes.try_into().map_err(|_| format!("key {id} must be 32 bytes"))?;
            if keys.iter().any(|(other, _)| other == id) {
                return Err(format!("key id {id} appears twice"));
            }
            keys.push((id.to_owned(), key));
        }
        if keys.is_empty() {
            return Err("at least one key".into());
        }
        Ok(SealKeys { keys })
    }

    /// A fresh list of one random key (`id:base64`), for development and tests.
    pub fn generate(id: &str) -> String {
        use base64::Engine;
        let key: [u8; 32] = rand::random();
        format!("{id}:{}", base64::engine::general_purpose::STANDARD.encode(key))
    }

    /// The key that seals, and its id.
    pub fn current(&self) -> (&str, &[u8; 32]) {
        let (id, key) = &self.keys[0];
        (id, key)
    }

    pub fn get(&self, id: &str) -> Option<&[u8; 32]> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, key)| key)
    }
}

impl std::fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SealKeys").field("ids", &ids).finish_non_exhaustive()
    }
}

impl WechatSettings {
    /// The APIv2 key (32 bytes), if v2 is configured.
    pub fn api_v2_key(&self) -> Option<Result<SecretString, ConfigError>> {
        (self.api_v2_key.is_some() || self.api_v2_key_file.is_some())
            .then(|| resolve_secret("wechat.api_v2_key", self.api_v2_key.as_ref(), self.api_v2_key_file.as_deref(), 32))
    }

    /// The APIv3 key (32 bytes), if v3 is configured.
    pub fn api_v3_key(&self) -> Option<Result<SecretString, ConfigError>> {
        (self.api_v3_key.is_some() || self.api_v3_key_file.is_some())
            .then(|| resolve_secret("wechat.api_v3_key", self.api_v3_key.as_ref(), self.api_v3_key_file.as_deref(), 32))
    }
}

/// A list from a config file, or a comma-separated string from the environment. (The config
/// crate's own list parsing would also turn every numeric-looking value, secrets included, into
/// numbers.)
fn comma_list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        List(Vec<T>),
        Text(String),
    }
    match Either::<T>::deserialize(deserializer)? {
        Either::List(list) => Ok(list),
        Either::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| part.parse::<T>())
            .collect::<Result<_, _>>()
            .map_err(|e| serde::de::Error::custom(format!("expected a comma-separated list: {e}"))),
    }
}

/// `PAYFLEET__AUTH__JWT_SECRET` for `auth.jwt_secret`.
fn env_name(key: &str) -> String {
    format!("PAYFLEET__{}", key.replace('.', "__").to_uppercase())
}

fn resolve_secret(
    key: &str,
    value: Option<&SecretString>,
    file: Option<&Path>,
    min_len: usize,
) -> Result<SecretString, ConfigError> {
    let err = |reason: String| ConfigError::Secret { key: key.to_owned(), reason };
    let secret = match (value, file) {
        (Some(_), Some(_)) => return Err(err(format!("set either {} or `{key}_file`, not both", env_name(key)))),
        (Some(v), None) => v.clone(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| err(format!("cannot read `{key}_file` {}: {e}", path.display())))?;
            SecretString::from(text.trim_end_matches(['\n', '\r']).to_owned())
        }
        (None, None) => return Err(err(format!("not set; set {} or `{key}_file`", env_name(key)))),
    };
    if secret.expose_secret().len() < min_len {
        return Err(err(format!("must be at least {min_len} bytes long")));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    fn repo_config() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    #[test]
    fn the_payment_rules_are_seed_000s_and_checked_when_loaded() {
        let s = Settings::load_from(&repo_config(), None, env(&[])).unwrap();
        use crate::domain::PayMethod;
        for method in [PayMethod::Balance, PayMethod::Integral, PayMethod::Money2, PayMethod::Wechat] {
            let rule = s.pay.rule(method);
            assert!(rule.enabled, "{method:?}");
            assert_eq!((rule.min_amount.to_string(), rule.max_amount.to_string()), ("0.01".into(), "50000.00".into()));
        }
        assert_eq!(s.pay.balance.max_daily_amount.map(|m| m.to_string()), Some("10000.00".into()));
        assert_eq!(s.pay.wechat.max_daily_amount, None);
        assert!(s.pay.balance_needs_password());
        let off = env(&[("PAYFLEET__PAY__BALANCE__REQUIRE_PASSWORD", "false")]);
        assert!(!Settings::load_from(&repo_config(), None, off).unwrap().pay.balance_needs_password());
        let s = Settings::load_from(&repo_config(), None, env(&[("PAYFLEET__PAY__MONEY2__ENABLED", "false")])).unwrap();
        assert!(!s.pay.rule(PayMethod::Money2).enabled);
        for (key, value) in [
            ("PAYFLEET__PAY__WECHAT__MIN_AMOUNT", "0"),
            ("PAYFLEET__PAY__BALANCE__MIN_AMOUNT", "60000.00"),
            ("PAYFLEET__PAY__MONEY2__MAX_DAILY_AMOUNT", "10.00"),
            ("PAYFLEET__PAY__BALANCE__MAX_DAILY_AMOUNT", "0.00"),
            ("PAYFLEET__PAY__INTEGRAL__REQUIRE_PASSWORD", "false"),
        ] {
            let err = Settings::load_from(&repo_config(), None, env(&[(key, value)])).unwrap_err().to_string();
            let section = key.trim_start_matches("PAYFLEET__").to_lowercase().replace("__", ".");
            let section = section.rsplit_once('.').unwrap().0;
            assert!(err.contains(section), "{key}={value}: {err}");
        }
    }

    #[test]
    fn defaults_load_and_env_overrides_them() {
        let s = Settings::load_from(&repo_config(), None, env(&[])).unwrap();
        assert_eq!(s.ingress.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.pay.bcrypt_cost, 10);
        let s = Settings::load_from(
            &repo_config(),
            None,
            env(&[
                ("PAYFLEET__PAY__BCRYPT_COST", "4"),
                ("PAYFLEET__BROKER__RETRY_DELAYS_MS", "10,20"),
                ("PAYFLEET__PAY__MAX_AMOUNT", "99.99"),
            ]),
        )
        .unwrap();
        assert_eq!(s.pay.bcrypt_cost, 4);
        assert_eq!(s.broker.retry_delays_ms, vec![10, 20]);
        assert_eq!(s.pay.max_amount.to_string(), "99.99");
    }

    #[test]
    fn the_compiled_in_defaults_are_used_without_a_config_dir() {
        let s = Settings::load_from(Path::new("/nonexistent"), Some("prod"), env(&[])).unwrap();
        assert_eq!(s.ingress.reply_timeout_ms, 3000);
    }

    #[test]
    fn a_missing_secret_names_its_key_and_variable() {
        let s = Settings::load_from(&repo_config(), None, env(&[])).unwrap();
        let msg = s.auth.jwt_secret().unwrap_err().to_string();
        assert!(msg.contains("auth.jwt_secret") && msg.contains("PAYFLEET__AUTH__JWT_SECRET"), "{msg}");
        let s = Settings::load_from(&repo_config(), None, env(&[("PAYFLEET__PAY__PASSWORD_PEPPER", "short")])).unwrap();
        assert!(s.pay.password_pepper().unwrap_err().to_string().contains("at least 16 bytes"));
    }

    #[test]
    fn a_secret_can_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("payfleet-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("jwt");
        std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
        let s = Settings::load_from(
            &repo_config(),
            None,
            env(&[("PAYFLEET__AUTH__JWT_SECRET_FILE", file.to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(s.auth.jwt_secret().unwrap().expose_secret(), "0123456789abcdef0123456789abcdef");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_secret_in_a_config_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("payfleet-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("default.toml"), DEFAULTS).unwrap();
        std::fs::write(dir.join("prod.toml"), "[pay]\npassword_pepper = \"0123456789abcdef\"\n").unwrap();
        let err = Settings::load_from(&dir, Some("prod"), env(&[])).unwrap_err().to_string();
        assert!(err.contains("pay.password_pepper") && err.contains("must not be in a config file"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn wrong_values_name_their_key() {
        let err = Settings::load_from(&repo_config(), None, env(&[("PAYFLEET__PAY__BCRYPT_COST", "99")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pay.bcrypt_cost"), "{err}");
        let err = Settings::load_from(&repo_config(), None, env(&[("PAYFLEET__INGRESS__LISTEN", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ingress.listen"), "{err}");
        let err = Settings::load_from(&repo_config(), None, env(&[("PAYFLEET__PAY__MAX_AMOUNT", "1.001")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pay.max_amount"), "{err}");
    }
}
