//! Pay-password try counters: every try is counted before it is verified, a right password
//! clears the count, and past `pay.password_max_attempts` tries within `pay.password_lock_secs`
//! balance pay is locked until the counter expires. Beside it, every check (right ones too) is
//! counted per user per minute and capped at `pay.password_checks_per_minute`: a bcrypt check
//! costs real CPU, and no account may spend the workers' cores on it.

use std::time::Duration;

use super::{Cache, CacheError};

/// What one user's tries in a batch may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// How many of the tries may be checked this minute (the first ones); the rest are refused
    /// unchecked and not counted as tries.
    pub allowed: u32,
    /// The user's try count within the lock window, the allowed tries included.
    pub attempts: u32,
}

/// Per user: KEYS[2i-1] the try counter, KEYS[2i] the per-minute check counter; ARGV[1] the lock
/// window in seconds, ARGV[2] the check cap, then ARGV[2+i] the tries. One script, so concurrent
/// batches of one user cannot pass the cap or the lock together.
const COUNT_SCRIPT: &str = r"
local out = {}
local cap = tonumber(ARGV[2])
for i = 1, #KEYS / 2 do
  local attempts_key, checks_key, n = KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[2 + i])
  local checks = redis.call('INCRBY', checks_key, n)
  if checks == n then redis.call('EXPIRE', checks_key, 60) end
  local allowed = math.max(0, math.min(n, cap - (checks - n)))
  local attempts
  if allowed > 0 then
    attempts = redis.call('INCRBY', attempts_key, allowed)
    redis.call('EXPIRE', attempts_key, ARGV[1], 'NX')
  else
    attempts = tonumber(redis.call('GET', attempts_key) or '0')
  end
  out[#out + 1] = allowed
  out[#out + 1] = attempts
end
return out
";

impl Cache {
    fn attempts_key(&self, user_id: i64) -> String {
        self.key(format_args!("pay_password_attempts:{user_id}"))
    }

    /// Counts `tries` more tries for each user, within the per-minute check cap, and answers
    /// for each user, in the order given, how many may be checked and the try count within the
    /// lock window. The window starts at the first try and is not extended by later ones, so a
    /// lock ends on time.
    pub async fn count_password_attempts(
        &self,
        tries: &[(i64, u32)],
        window: Duration,
        checks_per_minute: u32,
    ) -> Result<Vec<Counted>, CacheError> {
        if tries.is_empty() {
            return Ok(Vec::new());
        }
        let script = redis::Script::new(COUNT_SCRIPT);
        let mut invocation = script.prepare_invoke();
        for (user_id, _) in tries {
            invocation.key(self.attempts_key(*user_id));
            invocation.key(self.key(format_args!("pay_password_checks:{user_id}")));
        }
        invocation.arg(window.as_secs().max(1)).arg(checks_per_minute);
        for (_, n) in tries {
            invocation.arg(*n);
        }
        let mut conn = self.conn.clone();
        let flat: Vec<u32> = invocation.invoke_async(&mut conn).await?;
        Ok(flat.chunks_exact(2).map(|c| Counted { allowed: c[0], attempts: c[1] }).collect())
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
