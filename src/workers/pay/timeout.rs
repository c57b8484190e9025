//! Expiry checks (`pay.timeout`, run by the pay-worker): when an order's pay time runs out and
//! it is still unpaid, its WeChat payment is queried once more — a lost notify still settles
//! the order — and otherwise closed at WeChat, then the order is closed here.

use std::sync::Arc;

use crate::channel::ChannelError;
use crate::channel_sync::{self, Closing, SyncError};
use crate::domain::OrderStatus;
use crate::mq::consumer::{HandleError, Handler, Incoming, Outcome};
use crate::mq::messages::PayTimeoutDue;
use crate::store::wechat::Expiry;
use crate::store::{self, Pool};
use crate::wechat::Wechat;

/// Closes orders whose pay time ran out, unless WeChat took the money.
pub(super) struct TimeoutHandler {
    db: Pool,
    wechat: Option<Arc<Wechat>>,
}

impl TimeoutHandler {
    pub(super) fn new(db: Pool, wechat: Option<Arc<Wechat>>) -> TimeoutHandler {
        TimeoutHandler { db, wechat }
    }

    async fn check(&self, order_no: &str) -> Result<Outcome, HandleError> {
        let Some(view) = store::wechat::timeout_view(&self.db, order_no).await? else {
            tracing::warn!(order_no, "expiry check for an unknown order");
            return Ok(Outcome::default());
        };
        if !matches!(view.status, OrderStatus::Unpaid | OrderStatus::Paying) {
            return Ok(Outcome::default());
        }
        if !view.due {
            return Err(HandleError::Retryable("the order's pay time has not run out yet".into()));
        }
        let checked = view.paying_pay_no.as_deref();
        if let (Some(pay_no), Some(wechat)) = (checked, &self.wechat) {
            match channel_sync::close_trade(wechat, &self.db, pay_no).await {
                Ok(Closing::Closed) => {}
                Ok(Closing::Paid) => {
                    // Paid after all (its notify never arrived): settled from the report.
                    tracing::warn!(order_no, pay_no, "paid at WeChat without a notify; settling from the query");
                    return Ok(Outcome::default());
                }
                Err(SyncError::Channel(e)) => return Err(retry_later(&e)),
                Err(e) => return Err(e.into()),
            }
        }
        match store::wechat::expire(&self.db, order_no, checked).await? {
            Expiry::Closed => tracing::info!(order_no, "pay time ran out: order closed"),
            Expiry::Unchanged => {}
            // A WeChat payment began after the view was read: check that one at WeChat first.
            Expiry::Unchecked => return Err(HandleError::Retryable("a WeChat payment began meanwhile".into())),
        }
        Ok(Outcome::default())
    }
}

/// Whatever WeChat answered, an expiry check must not give up: it retries on WeChat's long
/// schedule (hours), so an outage or a configuration an operator fixes is waited out.
fn retry_later(e: &ChannelError) -> HandleError {
    tracing::warn!(error = %e, "expiry check cannot reach a verdict at WeChat; retrying later");
    HandleError::Retryable(format!("WeChat: {e}"))
}

impl Handler for TimeoutHandler {
    type Message = PayTimeoutDue;

    async fn handle(&self, batch: &[Incoming<PayTimeoutDue>]) -> Vec<Result<Outcome, HandleError>> {
        futures_util::future::join_all(batch.iter().map(|incoming| self.check(&incoming.message.order_no))).await
    }
}
