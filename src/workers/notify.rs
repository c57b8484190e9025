//! The notify-worker: consumes `wechat.notify` (verified WeChat notifies, and the answers of our
//! own queries) and settles WeChat payments from them, each in one transaction; duplicates and
//! concurrent reports of one trade change the state once.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::pay::db_error;
use crate::cache::Cache;
use crate::config::Settings;
use crate::mq::consumer::{self, HandleError, Handler, Incoming, Outcome};
use crate::mq::messages::TradeReported;
use crate::mq::topology::{Topology, WECHAT_NOTIFY};
use crate::store;
use crate::store::wechat::Settlement;

pub struct NotifyHandler {
    db: PgPool,
    /// Only trades of this appid and mchid settle anything.
    appid: String,
    mchid: String,
}

impl NotifyHandler {
    pub fn new(db: PgPool, appid: String, mchid: String) -> NotifyHandler {
        NotifyHandler { db, appid, mchid }
    }

    async fn settle(&self, report: &TradeReported) -> Result<Outcome, HandleError> {
        let trade = &report.trade;
        let settlement =
            store::wechat::settle(&self.db, report, &self.appid, &self.mchid).await.map_err(|e| db_error(&e))?;
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
            Settlement::Alert(detail) => {
                tracing::error!(out_trade_no = %no, %detail, "ALERT: WeChat report not settled")
            }
        }
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

/// Runs the notify-worker (and the outbox relay) until `stop`.
pub async fn run(settings: Settings, stop: CancellationToken) -> anyhow::Result<()> {
    let db = store::pool(&settings.database)?;
    let cache = Cache::new(&settings.redis)?;
    let topology = Topology::new(&settings.broker);
    if !store::wait_for_schema(&db, &stop).await {
        return Ok(());
    }
    let sidecars = super::Sidecars::start(&settings, &settings.notify_worker, &db, &cache, &stop)?;
    let handler = Arc::new(NotifyHandler::new(db, settings.wechat.appid.clone(), settings.wechat.mchid.clone()));
    let consumer_settings = super::consumer_settings(WECHAT_NOTIFY, "payfleet-notify-worker", &settings.notify_worker);
    consumer::run(
        &settings.broker,
        &topology,
        &consumer_settings,
        handler,
        sidecars.broker_health.clone(),
        stop.clone(),
    )
    .await;
    stop.cancel();
    sidecars.finish().await;
    tracing::info!("notify-worker stopped");
    Ok(())
}
