//! Request rate limits, shared by every ingress copy: a counter per (limit, subject, window) in
//! Redis, counted before the request is served. Fixed windows: a burst at a window's edge may
//! reach twice the limit over a window's length, which is enough to stop abuse and cheap (one
//! round trip for all the limits of a request).

use std::time::Duration;

use super::{Cache, CacheError};

/// One limit a request counts against: at most `limit` hits per window for `subject`.
#[derive(Debug, Clone)]
pub struct Limit {
    /// What is limited and for whom, e.g. `pay:user:42` or `pay:ip:203.0.113.7`.
    pub subject: String,
    pub limit: u32,
}

/// Counts one hit against each limit in order, atomically (a burst of concurrent requests
/// cannot all pass on the same count), and stops at the first one over: a request refused by
/// its user's limit is not counted against its address, so one user cannot spend the budget of
/// everyone behind the same address.
const HIT_SCRIPT: &str = r"
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
  if n > tonumber(ARGV[i + 1]) then return 1 end
end
return 0
";

impl Cache {
    /// Counts one hit against each limit, in order, up to the first that is over; `Some(wait)`
    /// when one is: the time until the current window ends.
    pub async fn hit_limits(&self, limits: &[Limit], window: Duration) -> Result<Option<Duration>, CacheError> {
        if limits.is_empty() {
            return Ok(None);
        }
        let window_ms = window.as_millis().max(1) as u64;
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64 / 1_000_000;
        let index = now_ms / window_ms;
        let script = redis::Script::new(HIT_SCRIPT);
        let mut invocation = script.prepare_invoke();
        for limit in limits {
            invocation.key(self.key(format_args!("rate:{}:{index}", limit.subject)));
        }
        invocation.arg(window_ms);
        for limit in limits {
            invocation.arg(limit.limit);
        }
        let mut conn = self.conn.clone();
        let over: i64 = invocation.invoke_async(&mut conn).await?;
        Ok((over == 1).then(|| Duration::from_millis(window_ms - now_ms % window_ms)))
    }
}
