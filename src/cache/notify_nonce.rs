//! Single-use keys: the replay keys of queued notifies (`wechat::SignedNotify::replay_key`; a
//! notify seen before is never queued again) and the throttle of status-sync queries to WeChat.

use std::time::Duration;

use super::{Cache, CacheError};

impl Cache {
    /// Whether a notify with this replay key was queued before.
    pub async fn notify_seen(&self, replay_key: &str) -> Result<bool, CacheError> {
        let key = self.key(format_args!("wechat_notify_nonce:{replay_key}"));
        let mut conn = self.conn.clone();
        Ok(redis::cmd("EXISTS").arg(key).query_async::<u32>(&mut conn).await? == 1)
    }

    /// Keeps a queued notify's replay key for `ttl`. Kept only once the notify is queued, so a
    /// notify that failed to queue (or whose ingress died first) is taken when WeChat resends it.
    pub async fn remember_notify(&self, replay_key: &str, ttl: Duration) -> Result<(), CacheError> {
        let key = self.key(format_args!("wechat_notify_nonce:{replay_key}"));
        let mut conn = self.conn.clone();
        let _: () =
            redis::cmd("SET").arg(key).arg(1).arg("EX").arg(ttl.as_secs().max(1)).query_async(&mut conn).await?;
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
