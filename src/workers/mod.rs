//! The worker binaries' logic, one file per queue, plus the outbox relay and what every worker
//! runs beside its consumers.

pub mod notify;
pub mod pay;
pub mod relay;
pub mod timeout;

use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::config::{Settings, WorkerSettings};
use crate::ingress::health::{self, Probe};
use crate::mq::consumer::{BrokerHealth, ConsumerSettings};

/// The outbox relay and the health endpoint, running beside a worker's consumers.
pub(crate) struct Sidecars {
    tasks: JoinSet<()>,
    /// Set by the consumers, read by /readyz.
    pub broker_health: BrokerHealth,
}

impl Sidecars {
    pub fn start(
        settings: &Settings,
        worker: &WorkerSettings,
        db: &PgPool,
        cache: &Cache,
        stop: &CancellationToken,
    ) -> anyhow::Result<Sidecars> {
        let broker_health = BrokerHealth::default();
        let mut tasks = JoinSet::new();
        if settings.outbox.relay {
            tasks.spawn(relay::run(db.clone(), settings.broker.clone(), settings.outbox.clone(), stop.clone()));
        }
        if !worker.health_listen.is_empty() {
            let addr = worker.health_listen.parse().map_err(|e| anyhow::anyhow!("health_listen: {e}"))?;
            let up = broker_health.clone();
            let probe = Probe { db: db.clone(), cache: cache.clone(), broker: Arc::new(move || up.is_connected()) };
            let stop = stop.clone();
            tasks.spawn(async move {
                if let Err(e) = health::serve(addr, probe, stop).await {
                    tracing::error!(error = %e, "health endpoint failed");
                }
            });
        }
        Ok(Sidecars { tasks, broker_health })
    }

    /// Waits for the sidecars to stop (after `stop` was cancelled).
    pub async fn finish(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A consumer of `queue` with a worker's prefetch, concurrency and batch size.
pub(crate) fn consumer_settings(queue: &'static str, name: &str, worker: &WorkerSettings) -> ConsumerSettings {
    ConsumerSettings {
        queue,
        name: name.to_owned(),
        prefetch: worker.prefetch,
        concurrency: worker.concurrency,
        batch_max: worker.batch_max,
    }
}
