//! SMS verification codes for setting a pay password: single use, expiring, and burnt after
//! `pay.sms_code_max_attempts` wrong guesses so six digits cannot be brute-forced.

use std::time::Duration;

use super::{Cache, CacheError};

/// The purpose of the codes that prove a pay-password change.
pub const PAY_PASSWORD_PURPOSE: &str = "pay_password";

/// The answer to "is this the code we sent?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsCheck {
    /// It matched and is now used up.
    Accepted,
    /// It did not match; the code stays valid for the tries left.
    Wrong,
    /// No code is outstanding (never sent, expired, used, or burnt by wrong guesses).
    Missing,
}

/// Compares and consumes in one step so two concurrent requests cannot both use one code.
const CHECK_SCRIPT: &str = r"
local code = redis.call('GET', KEYS[1])
if not code then return -1 end
if code == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
local n = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if n >= tonumber(ARGV[2]) then redis.call('DEL', KEYS[1], KEYS[2]) end
return 0
";

impl Cache {
    fn sms_keys(&self, purpose: &str, user_id: i64) -> (String, String) {
        (
            self.key(format_args!("sms_code:{purpose}:{user_id}")),
            self.key(format_args!("sms_code_attempts:{purpose}:{user_id}")),
        )
    }

    /// Stores a freshly issued code, replacing any earlier one.
    pub async fn store_sms_code(
        &self,
        purpose: &str,
        user_id: i64,
        code: &str,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let (code_key, attempts_key) = self.sms_keys(purpose, user_id);
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .set_ex(&code_key, code, ttl.as_secs().max(1))
            .ignore()
            .del(&attempts_key)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn check_sms_code(
        &self,
        purpose: &str,
        user_id: i64,
        code: &str,
        max_attempts: u32,
        ttl: Duration,
    ) -> Result<SmsCheck, CacheError> {
        let (code_key, attempts_key) = self.sms_keys(purpose, user_id);
        let mut conn = self.conn.clone();
        let answer: i64 = redis::Script::new(CHECK_SCRIPT)
            .key(code_key)
            .key(attempts_key)
            .arg(code)
            .arg(max_attempts)
            .arg(ttl.as_secs().max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(match answer {
            1 => SmsCheck::Accepted,
            0 => SmsCheck::Wrong,
            _ => SmsCheck::Missing,
        })
    }
}
