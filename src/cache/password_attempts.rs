//! Pay-password try counters: every try is counted before it is verified, a right password
//! clears the count, and past `pay.password_max_attempts` tries within `pay.password_lock_secs`
//! balance pay is locked until the counter expires.

use std::time::Duration;

use super::{Cache, CacheError};

impl Cache {
    fn attempts_key(&self, user_id: i64) -> String {
        self.key(format_args!("pay_password_attempts:{user_id}"))
    }

    /// Counts `tries` more tries for each user and answers each user's count within the
    /// window, in the order given. The window starts at the first try and is not extended by
    /// later ones, so a lock ends on time.
    pub async fn count_password_attempts(
        &self,
        tries: &[(i64, u32)],
        window: Duration,
    ) -> Result<Vec<u32>, CacheError> {
        if tries.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (user_id, n) in tries {
            let key = self.attempts_key(*user_id);
            pipe.incr(&key, *n).cmd("EXPIRE").arg(&key).arg(window.as_secs().max(1)).arg("NX").ignore();
        }
        let mut conn = self.conn.clone();
        Ok(pipe.query_async(&mut conn).await?)
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
