//! WeChat creates: the order checked and its payment begun in the database, then the prepay
//! at WeChat (or a still-valid one reused), answered as freshly signed pay params.

use super::{Answer, PayHandler, refused};
use crate::channel::{ChannelError, Prepaid, PrepayOrder};
use crate::channel_sync;
use crate::domain::payment::Refusal;
use crate::domain::{Code, PayMethod};
use crate::mq::messages::{PayReplied, PrepaidReply, WechatCreateRequested};
use crate::store::wechat::{Begun, ChannelVersion, Recorded};
use crate::store::{self, Pool};
use crate::wechat::Wechat;

impl PayHandler {
    /// A WeChat create: the order checked and its payment begun in the database, then the
    /// prepay at WeChat (or the still-valid one reused), answered as freshly signed pay params.
    pub(super) async fn create_wechat(&self, r: &WechatCreateRequested) -> Answer {
        let Some(wechat) = &self.wechat else {
            return refused(Refusal::new(Code::SystemError, "WeChat Pay is not configured on this fleet"));
        };
        if r.amount.is_zero() || r.amount > self.pay.max_amount {
            return refused(Refusal::new(
                Code::Validation,
                format!("amount must be above zero and at most {}", self.pay.max_amount),
            ));
        }
        if let Err(refusal) = self.pay.rule(PayMethod::Wechat).check(PayMethod::Wechat, r.amount) {
            return refused(refusal);
        }
        let version = ChannelVersion { api_version: wechat.api_version(), sign_type: wechat.v2_sign_type() };
        let begun = match store::wechat::begin(&self.db, r, version, self.prepay_valid).await {
            Ok(begun) => begun,
            Err(e) => return Err(e.into()),
        };
        let reply = |pay_no: String, prepaid: &Prepaid| {
            Ok(PayReplied::Prepaid(PrepaidReply {
                order_no: r.order_no.clone(),
                pay_no,
                pay_params: wechat.pay_params(prepaid),
            }))
        };
        let (pay_no, expires_at, details) = match begun {
            Begun::Refused(refusal) => return refused(refusal),
            Begun::Reuse { pay_no, prepaid } => return reply(pay_no, &prepaid),
            Begun::Prepay { pay_no, expires_at, details } => (pay_no, expires_at, details),
        };
        let order = PrepayOrder {
            out_trade_no: pay_no.clone(),
            description: details.description,
            amount: r.amount,
            trade_type: r.trade_type,
            openid: details.openid,
            client_ip: details.client_ip,
            expires_at,
        };
        match wechat.prepay(&order).await {
            Ok(prepaid) => match store::wechat::record_prepaid(&self.db, &pay_no, &prepaid).await {
                Ok(Recorded::Kept) => reply(pay_no, &prepaid),
                Ok(Recorded::Refused(refusal)) => {
                    // The order stopped waiting for this payment while WeChat answered (its pay
                    // time ran out): no pay params leave for it, and the trade is closed.
                    close_unwanted(wechat, &self.db, &pay_no).await;
                    refused(refusal)
                }
                Err(e) => Err(e.into()),
            },
            Err(ChannelError::AlreadyPaid) => {
                // Paid at WeChat already (a notify may be on its way): settle from a query. The
                // payer's money is at WeChat whatever the query does, so the answer says so; a
                // failed query is left to the notify, the status sync and the expiry check, never
                // turned into a dead letter whose reply would say nothing was charged.
                report_or_leave(wechat, &self.db, &pay_no).await;
                refused(Refusal::new(Code::OrderPaid, "already paid at WeChat; the order shows as paid in a moment"))
            }
            Err(ChannelError::Closed) => {
                // Closed at WeChat: recorded from a query, the order is payable another way.
                report_or_leave(wechat, &self.db, &pay_no).await;
                refused(Refusal::new(
                    Code::OrderClosed,
                    "the WeChat order is closed; pay another way or place a new order",
                ))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Queries a trade WeChat answered about and queues the answer; a failure is logged and left to
/// the status sync and the expiry check, which query the same trade again.
async fn report_or_leave(wechat: &Wechat, db: &Pool, pay_no: &str) {
    if let Err(e) = channel_sync::query_and_report(wechat, db, pay_no).await {
        tracing::warn!(error = %e, pay_no, "cannot record the trade WeChat reported now; the expiry check will");
    }
}

/// Closes a trade no order waits for any more. Best effort: nobody holds pay params for it (they
/// were never handed out), and WeChat closes it by itself at the order's pay time.
async fn close_unwanted(wechat: &Wechat, db: &Pool, pay_no: &str) {
    match wechat.close(pay_no).await {
        Ok(()) | Err(ChannelError::Closed) | Err(ChannelError::NotFound) => {
            tracing::info!(pay_no, "closed a WeChat trade its order no longer waits for");
        }
        // Paid after all (it cannot have been through us): the notify-worker records it.
        Err(ChannelError::AlreadyPaid) => {
            if let Err(e) = channel_sync::query_and_report(wechat, db, pay_no).await {
                tracing::error!(error = %e, pay_no, "ALERT: a WeChat trade no order waits for is paid, and its report failed");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, pay_no, "could not close a WeChat trade no order waits for; it expires at WeChat")
        }
    }
}
