//! The notify-worker: consumes `wechat.notify` (WeChat's notifies, verified at the ingress, and
//! the answers of our own queries), confirms each with WeChat (the notify's signature verified
//! again, or a query), and settles WeChat payments from what WeChat confirmed, each in one
//! transaction; duplicates and concurrent reports of one trade change the state once.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::runner::Runner;
use crate::channel::ChannelError;
use crate::config::Settings;
use crate::domain::PaymentStatus;
use crate::mq::consumer::{HandleError, Handler, Incoming, Outcome};
use crate::mq::messages::{TradeReported, TradeSource};
use crate::mq::topology::{WECHAT_NOTIFY, WECHAT_REFUND};
use crate::store::wechat::Settlement;
use crate::store::{self, Pool};
use crate::wechat::{Notified, Wechat};

pub struct NotifyHandler {
    db: Pool,
    /// Verifies notifies again and queries trades; None when WeChat Pay is not configured (then
    /// nothing can be confirmed, and nothing settles).
    wechat: Option<Arc<Wechat>>,
    /// Only trades of this appid and mchid settle anything.
    appid: String,
    mchid: String,
}

/// What WeChat stands behind, of a report.
enum Confirmed {
    /// The report to settle from, in WeChat's own words: the trade, id, event and raw text of
    /// the verified notify, or of WeChat's answer to our query; nothing from the message besides.
    Report(Box<TradeReported>),
    /// WeChat does not stand behind it (why).
    Not(String),
}

impl NotifyHandler {
    pub fn new(db: Pool, wechat: Option<Arc<Wechat>>, appid: String, mchid: String) -> NotifyHandler {
        NotifyHandler { db, wechat, appid, mchid }
    }

    /// What WeChat stands behind: a notify's signature verified again (a message on the queue
    /// could have been published by anyone allowed to publish there), or, for a report without
    /// one (our own queries, and notifies queued before notifies carried their signature),
    /// WeChat's answer to a query of our own. A genuine SUCCESS notify for a payment that is
    /// closed or refunded here is checked with a query too: it may be a late retry of a notify
    /// whose trade was paid back since.
    async fn confirm(&self, report: &TradeReported) -> Result<Confirmed, HandleError> {
        let Some(wechat) = &self.wechat else {
            return Err(HandleError::Permanent(
                "WeChat Pay is not configured on this notify-worker: the report cannot be confirmed".into(),
            ));
        };
        let Some(signed) = &report.signed else { return self.query(wechat, &report.trade.out_trade_no).await };
        let sign_type = store::wechat::notify_sign_type(&self.db, signed).await?;
        // No time window: the notify passed it on arrival and may have waited in the queue since.
        let verified = match wechat.verify_notify(signed, None, sign_type) {
            Ok(Notified::Trade(verified)) => verified,
            Ok(
                Notified::Other { event_type, .. } | Notified::Refund(crate::wechat::RefundNotified { event_type, .. }),
            ) => {
                return Ok(Confirmed::Not(format!("a {event_type} notify is no payment")));
            }
            Err(e) => return Ok(Confirmed::Not(format!("the notify does not verify: {e}"))),
        };
        let no = &verified.trade.out_trade_no;
        let status = store::wechat::payment_status(&self.db, no).await?;
        if verified.trade.trade_state.is_paid()
            && matches!(status, Some(PaymentStatus::Closed | PaymentStatus::Refunded))
        {
            return self.query(wechat, no).await;
        }
        let raw = signed.body().to_owned();
        Ok(Confirmed::Report(Box::new(TradeReported {
            source: TradeSource::Notify,
            report_id: verified.id,
            event_type: verified.event_type,
            trade: verified.trade,
            raw,
            signed: Some(signed.clone()),
        })))
    }

    /// WeChat's answer to a query of the trade.
    async fn query(&self, wechat: &Wechat, out_trade_no: &str) -> Result<Confirmed, HandleError> {
        match wechat.query(out_trade_no).await {
            Ok(trade) => Ok(Confirmed::Report(Box::new(TradeReported::queried(trade)))),
            Err(ChannelError::NotFound) => Ok(Confirmed::Not("WeChat has no such trade".into())),
            // WeChat away: hold the report and ask again, rather than spend its retries.
            Err(ChannelError::Transient(e)) => Err(HandleError::Unavailable(format!("WeChat: {e}"))),
            Err(e) => Err(e.into()),
        }
    }

    async fn settle(&self, report: &TradeReported) -> Result<Outcome, HandleError> {
        let claimed = &report.trade.out_trade_no;
        let report = match self.confirm(report).await? {
            Confirmed::Report(confirmed) if confirmed.trade.out_trade_no == *claimed => *confirmed,
            Confirmed::Report(confirmed) => {
                let why = format!("the report claims {claimed}, WeChat's trade is {}", confirmed.trade.out_trade_no);
                return self.unconfirmed(report, &why).await;
            }
            Confirmed::Not(why) => return self.unconfirmed(report, &why).await,
        };
        let trade = &report.trade;
        let settlement = store::wechat::settle(&self.db, &report, &self.appid, &self.mchid).await?;
        let (no, state) = (&trade.out_trade_no, trade.trade_state.as_str());
        match &settlement {
            Settlement::Settled => {
                tracing::info!(out_trade_no = %no, transaction_id = ?trade.transaction_id, source = ?report.source, "WeChat payment settled")
            }
            Settlement::Duplicate => {
                tracing::info!(out_trade_no = %no, source = ?report.source, "already settled; duplicate report")
            }
            Settlement::RecordedFailure => {
                tracing::info!(out_trade_no = %no, trade_state = state, "WeChat trade failed or closed")
            }
            Settlement::Pending => {
                tracing::debug!(out_trade_no = %no, trade_state = state, "WeChat trade still waiting")
            }
            Settlement::Alert(alert) => {
                tracing::error!(out_trade_no = %no, kind = alert.kind.as_str(), detail = %alert.detail, "ALERT: WeChat report not settled")
            }
        }
        Ok(Outcome::default())
    }

    /// Records a report WeChat does not stand behind, with an alert; it is done with (acked):
    /// handling it again would not make it true.
    async fn unconfirmed(&self, report: &TradeReported, why: &str) -> Result<Outcome, HandleError> {
        store::wechat::record_unconfirmed(&self.db, report, why).await?;
        tracing::error!(out_trade_no = %report.trade.out_trade_no, report_id = %report.report_id, why, "ALERT: a WeChat report WeChat does not stand behind; not settled");
        Ok(Outcome::default())
    }
}

impl Handler for NotifyHandler {
    type Message = TradeReported;

    async fn handle(&self, batch: &[Incoming<TradeReported>]) -> Vec<Result<Outcome, HandleError>> {
        // One transaction each: reports are few, and one bad report must not hold up others.
        let mut out = Vec::with_capacity(batch.len());
        for incoming in batch {
            out.push(self.settle(&incoming.message).await);
        }
        out
    }
}

/// Runs the notify-worker (pay reports, refunds through WeChat, and the outbox relay) until `stop`.
pub async fn run(settings: Settings, stop: CancellationToken) -> anyhow::Result<()> {
    let wechat = Wechat::from_settings_optional(&settings.wechat)?.map(Arc::new);
    if wechat.is_none() {
        tracing::warn!("WeChat Pay is not configured: reports cannot be confirmed and go to the dead-letter queue");
    }
    let Some(mut runner) = Runner::start("payfleet-notify-worker", &settings, &settings.notify_worker, &stop).await?
    else {
        return Ok(());
    };
    let handler = NotifyHandler::new(
        runner.db.clone(),
        wechat.clone(),
        settings.wechat.appid.clone(),
        settings.wechat.mchid.clone(),
    );
    runner.consume(WECHAT_NOTIFY, None, handler);
    let refunds = super::refund::RefundHandler::new(runner.db.clone(), wechat, settings.wechat.mchid.clone());
    runner.consume(WECHAT_REFUND, Some("refunds"), refunds);
    runner.run().await;
    Ok(())
}
