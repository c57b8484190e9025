//! The notify-worker's refund consumer (`wechat.refund`): asks WeChat for each refund part the
//! outbox hands it, then queries it on the queue's delay tiers until it settles; settles parts
//! from WeChat's refund notifies, verified again here. WeChat's refund is idempotent by our
//! part number, so a request repeated after a crash or a lost answer is the same refund, and a
//! part WeChat accepted is only ever queried after that, never asked for again.

use std::sync::Arc;

use crate::channel::{ChannelError, ChannelRefund, RefundOrder, RefundState};
use crate::mq::consumer::{HandleError, Handler, Incoming, Outcome};
use crate::mq::messages::RefundWork;
use crate::store::Pool;
use crate::store::refunds::{self, RefundSettled};
use crate::wechat::Wechat;

pub struct RefundHandler {
    db: Pool,
    wechat: Option<Arc<Wechat>>,
    /// Only refunds of this merchant settle anything.
    mchid: String,
}

impl RefundHandler {
    pub fn new(db: Pool, wechat: Option<Arc<Wechat>>, mchid: String) -> RefundHandler {
        RefundHandler { db, wechat, mchid }
    }

    fn wechat(&self) -> Result<&Wechat, HandleError> {
        self.wechat.as_deref().ok_or_else(|| {
            HandleError::Permanent(
                "WeChat Pay is not configured on this notify-worker: no refund can go through".into(),
            )
        })
    }

    async fn work(&self, work: &RefundWork) -> Result<Outcome, HandleError> {
        match work {
            RefundWork::Requested { part_no } => self.ask(part_no).await,
            RefundWork::Reported { report_id, signed } => {
                let wechat = self.wechat()?;
                // No time window: the notify passed it on arrival and may have waited since.
                let notified = wechat.verify_refund_notify(signed, None).map_err(|e| {
                    tracing::error!(report_id, error = %e, "ALERT: a refund notify on the queue does not verify; not settled");
                    HandleError::Permanent(format!("the refund notify does not verify: {e}"))
                })?;
                if !notified.mchid.is_empty() && notified.mchid != self.mchid {
                    return Err(HandleError::Permanent(format!(
                        "the refund notify names mchid {}, we are {}",
                        notified.mchid, self.mchid
                    )));
                }
                self.settle(&notified.refund, signed.body(), None).await?;
                Ok(Outcome::default())
            }
        }
    }

    /// Asks WeChat for the part (or, once WeChat accepted it, queries it); a part still
    /// processing comes back on the next delay tier to be queried again.
    async fn ask(&self, part_no: &str) -> Result<Outcome, HandleError> {
        let Some(part) = refunds::wechat_part(&self.db, part_no).await? else {
            return Err(HandleError::Permanent(format!("no WeChat refund part {part_no}")));
        };
        if part.status != "PROCESSING" {
            tracing::debug!(part_no, status = part.status, "refund part settled already");
            return Ok(Outcome::default());
        }
        let wechat = self.wechat()?;
        let order = RefundOrder {
            out_trade_no: part.pay_no.clone(),
            out_refund_no: part.part_no.clone(),
            refund: part.amount,
            total: part.total,
            reason: part.reason.clone(),
        };
        let answer = match part.asked_at {
            Some(_) => match wechat.query_refund(part_no).await {
                // Accepted once, yet unknown now: ask again; the same number is the same refund.
                Err(ChannelError::NotFound) => wechat.refund(&order).await,
                other => other,
            },
            None => wechat.refund(&order).await,
        };
        let settled = match answer {
            Ok(refund) => {
                let raw = serde_json::to_string(&refund).expect("a refund serialises");
                self.settle(&refund, &raw, None).await?
            }
            // WeChat away, or an answer that did not verify (it may have made the refund):
            // ask again later; the same number cannot make a second refund.
            Err(e @ (ChannelError::Transient(_) | ChannelError::Forged(_))) => {
                return Err(HandleError::Retryable(format!("WeChat, refund {part_no}: {e}")));
            }
            // A part WeChat accepted is never given up by itself: WeChat may be paying it out.
            // Asked again, and dead-lettered with the reason once the tiers are used up.
            Err(e) if part.asked_at.is_some() => {
                return Err(HandleError::Retryable(format!("WeChat, query of accepted refund {part_no}: {e}")));
            }
            // Refused: given up only once WeChat says it holds no refund of this number (an
            // earlier ask whose answer was lost may have made it).
            Err(e) => match wechat.query_refund(part_no).await {
                Ok(refund) => {
                    let raw = serde_json::to_string(&refund).expect("a refund serialises");
                    self.settle(&refund, &raw, None).await?
                }
                Err(ChannelError::NotFound) => {
                    let given_up = ChannelRefund {
                        out_trade_no: part.pay_no.clone(),
                        out_refund_no: part.part_no.clone(),
                        refund_id: None,
                        state: RefundState::Closed,
                        refund_fen: part.amount.to_fen(),
                        success_time: None,
                    };
                    let why = format!("WeChat refused it ({e}) and holds no refund of that number");
                    self.settle(&given_up, &format!("refused: {e}"), Some(&why)).await?
                }
                Err(q) => {
                    return Err(HandleError::Retryable(format!(
                        "WeChat refused refund {part_no} ({e}), and its query failed: {q}"
                    )));
                }
            },
        };
        match settled {
            RefundSettled::Waiting => {
                Err(HandleError::Retryable(format!("WeChat is processing refund {part_no}; querying it later")))
            }
            _ => Ok(Outcome::default()),
        }
    }

    async fn settle(&self, refund: &ChannelRefund, raw: &str, why: Option<&str>) -> Result<RefundSettled, HandleError> {
        let settled = refunds::settle_wechat(&self.db, refund, raw, why).await?;
        let (part_no, state) = (&refund.out_refund_no, refund.state.as_str());
        match &settled {
            RefundSettled::Moved(RefundState::Success) => {
                tracing::info!(part_no = %part_no, out_trade_no = %refund.out_trade_no, "WeChat refund settled")
            }
            RefundSettled::Moved(moved) => {
                tracing::error!(part_no = %part_no, state = moved.as_str(), "ALERT: WeChat refund did not go through")
            }
            RefundSettled::Waiting => tracing::debug!(part_no = %part_no, "WeChat refund still processing"),
            RefundSettled::Unchanged(status) => {
                tracing::info!(part_no = %part_no, reported = state, status, "refund part settled before; report changes nothing")
            }
            RefundSettled::Alert(alert) => {
                tracing::error!(part_no = %part_no, detail = %alert.detail, "ALERT: WeChat refund report not settled")
            }
        }
        Ok(settled)
    }
}

impl Handler for RefundHandler {
    type Message = RefundWork;

    async fn handle(&self, batch: &[Incoming<RefundWork>]) -> Vec<Result<Outcome, HandleError>> {
        let mut out = Vec::with_capacity(batch.len());
        for incoming in batch {
            out.push(self.work(&incoming.message).await);
        }
        out
    }
}
