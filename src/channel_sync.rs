//! Keeping our payments in step with the channel's trades when a notify may not come: ask the
//! channel, and queue what it says on `wechat.notify` through the outbox, where the
//! notify-worker confirms and settles it like any report. Used by the pay-worker (a prepay
//! WeChat says is paid or closed), the expiry checks, and the ingress's status and cancel
//! endpoints.

use std::time::Duration;

use crate::cache::Cache;
use crate::channel::{ChannelError, Trade};
use crate::domain::PaymentStatus;
use crate::store::{self, Pool};
use crate::wechat::Wechat;

/// Why a trade could not be reported.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The channel did not answer the query.
    #[error("WeChat: {0}")]
    Channel(#[from] ChannelError),
    /// The answer could not be queued.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Queues a trade the caller read at the channel for the notify-worker.
pub async fn report(db: &Pool, trade: &Trade) -> Result<(), SyncError> {
    Ok(store::wechat::report_trade(db, trade).await?)
}

/// Queries the channel for a payment's trade and queues the answer.
pub async fn query_and_report(wechat: &Wechat, db: &Pool, pay_no: &str) -> Result<Trade, SyncError> {
    let trade = wechat.query(pay_no).await?;
    report(db, &trade).await?;
    Ok(trade)
}

/// What the channel says of a trade its order is about to stop waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// It can no longer be paid: closed now, closed before, never made at the channel, or paid
    /// and refunded (reported).
    Closed,
    /// Paid, and reported: the order must not close, the notify-worker settles it.
    Paid,
}

/// Makes sure a waiting trade can no longer be paid before its order closes (the expiry check,
/// a cancel): queried once more, so a lost notify still settles the order, and closed at the
/// channel otherwise.
pub async fn close_trade(wechat: &Wechat, db: &Pool, pay_no: &str) -> Result<Closing, SyncError> {
    match wechat.query(pay_no).await {
        Ok(trade) if trade.trade_state.is_paid() => {
            report(db, &trade).await?;
            return Ok(Closing::Paid);
        }
        // Paid and paid back: nothing to close; recorded (an alert), and the order closes.
        Ok(trade) if trade.trade_state.was_paid() => {
            report(db, &trade).await?;
            return Ok(Closing::Closed);
        }
        Ok(trade) if trade.trade_state.is_closed() => return Ok(Closing::Closed),
        // Waiting (NOTPAY, a failed attempt), or never made: closed now.
        Ok(_) | Err(ChannelError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    match wechat.close(pay_no).await {
        Ok(()) | Err(ChannelError::Closed) | Err(ChannelError::NotFound) => Ok(Closing::Closed),
        Err(ChannelError::AlreadyPaid) => {
            query_and_report(wechat, db, pay_no).await?;
            Ok(Closing::Paid)
        }
        Err(e) => Err(e.into()),
    }
}

/// Status sync, for the status endpoint: an order's WeChat payment waiting longer than
/// `query_after` is queried at WeChat (at most every ten seconds per payment); a trade that was
/// paid or closed goes to the notify-worker like a notify, so an order whose notify was lost
/// still settles. Best effort: any failure is logged and the status answered as it is.
pub async fn sync_status(db: &Pool, cache: &Cache, wechat: &Wechat, query_after: Duration, order_no: &str) {
    let payment = match store::wechat::find(db, order_no).await {
        Ok(Some(p)) if p.status == PaymentStatus::Paying && p.age >= query_after => p,
        Ok(_) => return,
        Err(e) => return tracing::warn!(error = %e, order_no, "status sync cannot read the payment"),
    };
    match cache.claim_status_sync(&payment.pay_no, Duration::from_secs(10)).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => return tracing::warn!(error = %e, "status sync throttle unavailable"),
    }
    let trade = match wechat.query(&payment.pay_no).await {
        Ok(trade) if trade.trade_state.was_paid() || trade.trade_state.is_closed() => trade,
        Ok(_) => return,
        Err(e) => return tracing::warn!(error = %e, pay_no = %payment.pay_no, "status sync query failed"),
    };
    tracing::warn!(pay_no = %payment.pay_no, trade_state = trade.trade_state.as_str(), "status sync found a settled trade without its notify");
    if let Err(e) = report(db, &trade).await {
        tracing::warn!(error = %e, "status sync cannot queue the trade");
    }
}
