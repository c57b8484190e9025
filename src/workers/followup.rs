//! The follow-up worker: consumes `order.followup` and serves each paid order once: an ichiban
//! order draws its prizes from the box without replacement, an infinite order by weight (an
//! order the box cannot serve is refunded in full instead). Each order in its own transaction,
//! so one that fails does not hold up the others; a redelivered event finds the order served
//! and changes nothing.

use tokio_util::sync::CancellationToken;

use super::runner::Runner;
use crate::config::Settings;
use crate::mq::consumer::{HandleError, Handler, Incoming, Outcome};
use crate::mq::messages::{Followup, OrderPaid};
use crate::mq::topology::ORDER_FOLLOWUP;
use crate::store::followups::{self, Followed};
use crate::store::{self, Pool};

pub struct FollowupHandler {
    db: Pool,
}

impl FollowupHandler {
    pub fn new(db: Pool) -> FollowupHandler {
        FollowupHandler { db }
    }

    async fn follow(&self, followup: &Followup) -> Result<Outcome, HandleError> {
        match followup {
            Followup::Paid(paid) => self.serve(paid).await,
            Followup::Refunded(refunded) => {
                // Drawn prizes stay drawn: a refund gives money back, not tickets to the box.
                tracing::info!(order_no = %refunded.order_no, refund_no = %refunded.refund_no, amount = %refunded.amount, full = refunded.full, "order refunded; its draws stand");
                Ok(Outcome::default())
            }
        }
    }

    async fn serve(&self, paid: &OrderPaid) -> Result<Outcome, HandleError> {
        let order_no = &paid.order_no;
        match followups::draw(&self.db, paid).await {
            Ok(Followed::Drawn(n)) => tracing::info!(order_no, kind = paid.kind.as_str(), draws = n, "prizes drawn"),
            Ok(Followed::Already) => tracing::info!(order_no, "served before; duplicate event"),
            Ok(Followed::Skipped) => tracing::info!(order_no, "refunded in full before it was served; nothing drawn"),
            Ok(Followed::Refunded { refund_no, why }) => {
                tracing::warn!(order_no, refund_no, why, "order cannot be served; refunded in full")
            }
            // An event naming an order that is not there or not paid will not become true.
            Err(e @ store::Error::Invariant(_)) => return Err(HandleError::Permanent(e.to_string())),
            Err(e) => return Err(e.into()),
        }
        Ok(Outcome::default())
    }
}

impl Handler for FollowupHandler {
    type Message = Followup;

    async fn handle(&self, batch: &[Incoming<Followup>]) -> Vec<Result<Outcome, HandleError>> {
        let mut out = Vec::with_capacity(batch.len());
        for incoming in batch {
            out.push(self.follow(&incoming.message).await);
        }
        out
    }
}

/// Runs the follow-up worker (and the outbox relay) until `stop`.
pub async fn run(settings: Settings, stop: CancellationToken) -> anyhow::Result<()> {
    let Some(mut runner) =
        Runner::start("payfleet-followup-worker", &settings, &settings.followup_worker, &stop).await?
    else {
        return Ok(());
    };
    runner.consume(ORDER_FOLLOWUP, None, FollowupHandler::new(runner.db.clone()));
    runner.run().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{GoodsKind, Money, PayMethod, PayType};
    use crate::mq::messages::OrderRefunded;

    #[test]
    fn each_kind_on_the_queue_reads_as_itself() {
        let paid = OrderPaid {
            order_no: "ORD1".into(),
            user_id: 1,
            goods_id: 2,
            kind: GoodsKind::Ichiban,
            num: 3,
            amount: Money::parse("30.00").unwrap(),
            pay_no: "BAL1".into(),
            pay_type: PayType::Single(PayMethod::Balance),
            paid_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let refunded = OrderRefunded {
            order_no: "ORD1".into(),
            user_id: 1,
            refund_no: "R1".into(),
            amount: Money::parse("30.00").unwrap(),
            refunded: Money::parse("30.00").unwrap(),
            full: true,
            reason: "r".into(),
        };
        let read = |v: String| serde_json::from_str::<Followup>(&v).unwrap();
        assert_eq!(read(serde_json::to_string(&paid).unwrap()), Followup::Paid(paid));
        assert_eq!(read(serde_json::to_string(&refunded).unwrap()), Followup::Refunded(refunded));
    }
}
