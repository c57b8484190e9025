//! Wrong pay-password counters: after `pay.password_max_attempts` wrong tries within
//! `pay.password_lock_secs` the user's balance pay is locked until the counter expires.

use std::time::Duration;

use super::{Cache, CacheError};

impl Cache {
    fn attempts_key(&self, user_id: i64) -> String {
        self.key(format_args!("pay_password_attempts:{user_id}"))
    }

    /// The current wrong-try count of each user, in the order given.
    pub async fn password_attempts(&self, user_ids: &[i64]) -> Result<Vec<u32>, CacheError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = user_ids.iter().map(|id| self.attempts_key(*id)).collect();
        let mut conn = self.conn.clone();
        let counts: Vec<Option<u32>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        Ok(counts.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Counts one wrong try and returns the new count. The window starts at the first wrong try
    /// and is not extended by later ones, so a lock ends on time.
    pub async fn record_wrong_password(&self, user_id: i64, window: Duration) -> Result<u32, CacheError> {
        let key = self.attempts_key(user_id);
        let mut conn = self.conn.clone();
        let (count,): (u32,) = redis::pipe()
            .atomic()
            .incr(&key, 1u32)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(window.as_secs().max(1))
            .arg("NX")
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(count)
    }

    /// Forgets the wrong tries of these users (after a right password, or a new one).
    pub async fn clear_password_attempts(&self, user_ids: &[i64]) -> Result<(), CacheError> {
        if user_ids.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = user_ids.iter().map(|id| self.attempts_key(*id)).collect();
        let mut conn = self.conn.clone();
        let _: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
        Ok(())
    }
}
