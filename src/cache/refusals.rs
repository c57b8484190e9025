//! The last refusal of a user's pay request for an order, kept for the status endpoint: a
//! request answered 202 PROCESSING never saw its refusal, and the status must tell why the
//! order is still unpaid.

use std::time::Duration;

use super::{Cache, CacheError};
use crate::domain::payment::Refusal;

impl Cache {
    fn refusal_key(&self, order_no: &str, user_id: i64) -> String {
        self.key(format_args!("pay_refusal:{user_id}:{order_no}"))
    }

    /// Stores (order, user, refusal) triples, replacing earlier ones, for `ttl`.
    pub async fn remember_refusals(&self, refusals: &[(&str, i64, &Refusal)], ttl: Duration) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        for (order_no, user_id, refusal) in refusals {
            let json = serde_json::to_string(refusal).expect("a refusal serialises");
            pipe.set_ex(self.refusal_key(order_no, *user_id), json, ttl.as_secs().max(1)).ignore();
        }
        let mut conn = self.conn.clone();
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    /// The last refusal this user got for this order, if one is remembered.
    pub async fn last_refusal(&self, order_no: &str, user_id: i64) -> Result<Option<Refusal>, CacheError> {
        let mut conn = self.conn.clone();
        let json: Option<String> =
            redis::cmd("GET").arg(self.refusal_key(order_no, user_id)).query_async(&mut conn).await?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }
}
