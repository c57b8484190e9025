//! What every worker binary runs around its handlers: the database pool and Redis, the wait for
//! the schema, the sidecars (outbox relay, health endpoint), its consumers, and the stop that
//! ends them together.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::config::{Settings, WorkerSettings};
use crate::ingress::health::{self, Probe};
use crate::mq::consumer::{self, BrokerHealth, ConsumerSettings, Handler};
use crate::mq::topology::{self, Topology};
use crate::store::{self, Pool};

/// A worker binary being wired: add its consumers, then `run` it.
pub(crate) struct Runner {
    /// The worker's name in logs and as the broker connection's name.
    name: &'static str,
    settings: Settings,
    worker: WorkerSettings,
    pub db: Pool,
    pub cache: Cache,
    stop: CancellationToken,
    sidecars: JoinSet<()>,
    /// Set by the consumers, read by /readyz.
    broker_health: BrokerHealth,
    consumers: Vec<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Runner {
    /// Connects (lazily), waits until the database has this binary's schema, and starts the
    /// sidecars. None when `stop` came first.
    pub async fn start(
        name: &'static str,
        settings: &Settings,
        worker: &WorkerSettings,
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<Runner>> {
        let db = store::pool(&settings.database)?;
        let cache = Cache::new(&settings.redis)?;
        if !store::wait_for_schema(&db, stop).await {
            return Ok(None);
        }
        let mut runner = Runner {
            name,
            settings: settings.clone(),
            worker: worker.clone(),
            db,
            cache,
            stop: stop.clone(),
            sidecars: JoinSet::new(),
            broker_health: BrokerHealth::default(),
            consumers: Vec::new(),
        };
        runner.start_sidecars()?;
        Ok(Some(runner))
    }

    /// The outbox relay (unless `outbox.relay` is off) and the health endpoint (if
    /// `health_listen` is set).
    fn start_sidecars(&mut self) -> anyhow::Result<()> {
        if self.settings.outbox.relay {
            let relay = super::relay::run(
                self.db.clone(),
                self.settings.broker.clone(),
                self.settings.outbox.clone(),
                self.stop.clone(),
            );
            self.sidecars.spawn(relay);
        }
        if !self.worker.health_listen.is_empty() {
            let addr = self.worker.health_listen.parse().map_err(|e| anyhow::anyhow!("health_listen: {e}"))?;
            let up = self.broker_health.clone();
            let probe =
                Probe { db: self.db.clone(), cache: self.cache.clone(), broker: Arc::new(move || up.is_connected()) };
            let stop = self.stop.clone();
            self.sidecars.spawn(async move {
                if let Err(e) = health::serve(addr, probe, stop).await {
                    tracing::error!(error = %e, "health endpoint failed");
                }
            });
        }
        Ok(())
    }

    /// Consumes `queue` with `handler`, with the worker's prefetch, concurrency and batch size;
    /// `role` tells this consumer from the worker's others in the broker's list.
    pub fn consume<H: Handler>(&mut self, queue: &'static str, role: Option<&str>, handler: H) {
        // Its retry schedule and dead-letter queue come from the table: a queue missing there
        // would dead-letter every failure at once.
        assert!(topology::spec(queue).is_some(), "{queue} is not in mq::topology::QUEUES");
        let name = match role {
            Some(role) => format!("{}-{role}", self.name),
            None => self.name.to_owned(),
        };
        let consumer = ConsumerSettings {
            queue,
            name,
            prefetch: self.worker.prefetch,
            concurrency: self.worker.concurrency,
            batch_max: self.worker.batch_max,
        };
        let broker = self.settings.broker.clone();
        let topology = Topology::new(&broker);
        let health = self.broker_health.clone();
        let stop = self.stop.clone();
        self.consumers.push(Box::pin(async move {
            consumer::run(&broker, &topology, &consumer, Arc::new(handler), health, stop).await;
        }));
    }

    /// Runs the consumers until `stop`, then stops the sidecars.
    pub async fn run(mut self) {
        futures_util::future::join_all(std::mem::take(&mut self.consumers)).await;
        self.stop.cancel();
        while self.sidecars.join_next().await.is_some() {}
        tracing::info!("{} stopped", self.name.trim_start_matches("payfleet-"));
    }
}
