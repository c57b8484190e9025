//! Redis, the fleet's short-lived state: pay-password attempt counters, SMS codes, notify
//! nonces, remembered refusals and request rate limits. Only this module talks to Redis; every
//! key carries `redis.key_prefix`.

mod notify_nonce;
mod password_attempts;
mod rate_limit;
mod refusals;
mod sms_code;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;

pub use password_attempts::Counted;
pub use rate_limit::Limit;
pub use sms_code::{PAY_PASSWORD_PURPOSE, SmsCheck};

use crate::config::RedisSettings;

/// What went wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis is unreachable or timed out; the caller should wait and try again.
    #[error("redis unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
    /// Redis answered with an error.
    #[error("redis error: {0}")]
    Command(#[source] redis::RedisError),
}

impl From<redis::RedisError> for CacheError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
            CacheError::Unavailable(e)
        } else {
            CacheError::Command(e)
        }
    }
}

/// A handle to Redis; cheap to clone, reconnects by itself.
#[derive(Clone)]
pub struct Cache {
    conn: ConnectionManager,
    /// Namespaces every key (see `redis.key_prefix`).
    prefix: String,
}

impl Cache {
    /// Builds the handle without connecting: a binary starts even while Redis is down and
    /// reports not-ready until it answers.
    pub fn new(settings: &RedisSettings) -> Result<Cache, CacheError> {
        let client = redis::Client::open(settings.url.expose_secret()).map_err(CacheError::Command)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(CacheError::Command)?;
        Ok(Cache { conn, prefix: settings.key_prefix.clone() })
    }

    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    fn key(&self, parts: std::fmt::Arguments<'_>) -> String {
        format!("{}{}", self.prefix, parts)
    }

    /// Deletes every key under this prefix (test and bench clean-up).
    pub async fn delete_namespace(&self) -> Result<u64, CacheError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}*", self.prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}
