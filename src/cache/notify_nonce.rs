//! Single-use keys: the nonces of notifies (a notify replayed with its original nonce is
//! refused; `wechat::SignedNotify::replay_key`) and the throttle of status-sync queries to
//! WeChat.

use std::time::Duration;

use super::{Cache, CacheError};

impl Cache {
    /// Claims `nonce` for `ttl`; false if it was claimed before (a replay).
    pub async fn claim_notify_nonce(&self, nonce: &str, ttl: Duration) -> Result<bool, CacheError> {
        let key = self.key(format_args!("wechat_notify_nonce:{nonce}"));
        self.claim(key, ttl).await
    }

    /// Gives a claimed nonce back (its notify could not be queued, so its retry must pass).
    pub async fn release_notify_nonce(&self, nonce: &str) -> Result<(), CacheError> {
        let key = self.key(format_args!("wechat_notify_nonce:{nonce}"));
        let mut conn = self.conn.clone();
        let _: u64 = redis::cmd("DEL").arg(key).query_async(&mut conn).await?;
        Ok(())
    }

    /// Whether a status sync of this payment may query WeChat now (at most once per `every`).
    pub async fn claim_status_sync(&self, pay_no: &str, every: Duration) -> Result<bool, CacheError> {
        let key = self.key(format_args!("wechat_status_sync:{pay_no}"));
        self.claim(key, every).await
    }

    async fn claim(&self, key: String, ttl: Duration) -> Result<bool, CacheError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }
}
