//! Test harness: every test gets its own database, queue namespace and Redis prefix on the real
//! services, removed when the test ends (also when it fails), so tests run in parallel.

pub mod cutter;
pub mod sim;
pub mod trades;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use payfleet::config::Settings;
use payfleet::ctl::Admin;
use payfleet::ctl::client::ApiClient;
use payfleet::ctl::fleet::{Fleet, Logs};
use payfleet::domain::lottery::PrizeSpec;
use payfleet::domain::{GoodsKind, Money};
use payfleet::mq::envelope;
use payfleet::mq::messages::{PayReplied, PayRequested};
use payfleet::mq::topology::Topology;
use payfleet::store::users::Balances;
use tokio_util::sync::CancellationToken;

/// One test's private slice of PostgreSQL, RabbitMQ and Redis.
pub struct TestEnv {
    pub id: String,
    pub settings: Settings,
    /// The PAYFLEET__… variables that make `settings`, for child processes.
    pub env: HashMap<String, String>,
    pub admin: Admin,
}

pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

pub fn m(s: &str) -> Money {
    Money::parse(s).unwrap()
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        TestEnv::with(&[]).await
    }

    /// A fresh environment with these settings on top of the test defaults.
    pub async fn with(overrides: &[(&str, &str)]) -> TestEnv {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let secret = |n: usize| (0..n).map(|_| format!("{:02x}", rand::random::<u8>())).collect::<String>();
        let mut env: HashMap<String, String> = [
            ("PAYFLEET__DATABASE__URL", format!("postgres://postgres@127.0.0.1:5432/payfleet_t_{id}")),
            ("PAYFLEET__DATABASE__MAX_CONNECTIONS", "4".into()),
            ("PAYFLEET__BROKER__NAMESPACE", format!("t{id}.")),
            ("PAYFLEET__BROKER__RETRY_DELAYS_MS", "200,400".into()),
            ("PAYFLEET__REDIS__KEY_PREFIX", format!("t{id}:")),
            ("PAYFLEET__AUTH__JWT_SECRET", secret(32)),
            ("PAYFLEET__AUTH__OPERATOR_JWT_SECRET", secret(32)),
            ("PAYFLEET__PAY__PASSWORD_PEPPER", secret(16)),
            ("PAYFLEET__PAY__SEAL_KEYS", payfleet::config::SealKeys::generate("t1")),
            ("PAYFLEET__PAY__BCRYPT_COST", "4".into()),
            ("PAYFLEET__INGRESS__LISTEN", "127.0.0.1:0".into()),
            ("PAYFLEET__LOG__FILTER", "info,lapin=warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // Tests pay far faster than a person: limits high enough never to stop them, still
        // counted (tests of the limits set their own).
        env.insert("PAYFLEET__PAY__PASSWORD_CHECKS_PER_MINUTE".into(), "100000".into());
        for kind in ["PAY", "CREATE", "ORDERS", "STATUS", "SMS_CODE"] {
            for per in ["PER_USER", "PER_IP"] {
                env.insert(format!("PAYFLEET__RATE_LIMIT__{kind}__{per}"), "100000".into());
            }
        }
        for (k, v) in overrides {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let settings = Settings::load_from(&config_dir(), None, Some(env.clone())).expect("test settings load");
        payfleet::ctl::migrate(&settings).await.expect("migrating the test database");
        payfleet::ctl::declare_topology(&settings).await.expect("declaring the test topology");
        let admin = Admin::connect(&settings).unwrap();
        TestEnv { id, settings, env, admin }
    }

    /// Settings with some keys changed (e.g. to point one component through a cutter).
    pub fn settings_with(&self, overrides: &[(&str, String)]) -> Settings {
        let mut env = self.env.clone();
        for (k, v) in overrides {
            env.insert((*k).to_owned(), v.clone());
        }
        Settings::load_from(&config_dir(), None, Some(env)).unwrap()
    }

    /// A user with these balances and pay password 123456; returns (id, token).
    pub async fn user(&self, money: &str, integral: &str, money2: &str) -> (i64, String) {
        let opening = Balances { money: m(money), integral: m(integral), money2: m(money2) };
        self.admin.create_user("test", &opening, Some("123456")).await.unwrap()
    }

    /// Ichiban goods at `price` whose box holds more than any test draws.
    pub async fn goods(&self, price: &str) -> i64 {
        self.lottery(GoodsKind::Ichiban, price, &["test prize:1000000"]).await
    }

    /// Goods of `kind` with these prizes ("name:count").
    pub async fn lottery(&self, kind: GoodsKind, price: &str, prizes: &[&str]) -> i64 {
        let prizes: Vec<PrizeSpec> = prizes.iter().map(|p| PrizeSpec::parse(p).unwrap()).collect();
        payfleet::store::goods::create_goods(&self.admin.db, kind, "test goods", m(price), &prizes).await.unwrap()
    }

    /// `count` unpaid orders of `goods` for `user`, straight into the database.
    pub async fn orders(&self, user: i64, goods: i64, count: i64) -> Vec<String> {
        let prefix = format!("T{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        payfleet::store::orders::create_bulk(&self.admin.db, &prefix, user, goods, count, Duration::from_secs(900))
            .await
            .unwrap()
    }

    pub async fn balances(&self, user: i64) -> Balances {
        payfleet::store::users::balances(&self.admin.db, user).await.unwrap().unwrap()
    }

    pub async fn audit_is_clean(&self) {
        let audit = payfleet::store::ledger::audit(&self.admin.db).await.unwrap();
        assert!(audit.is_clean(), "ledger audit: {audit:?}");
    }

    /// Runs the ingress and the pay-worker inside this test process.
    pub async fn start_in_process(&self) -> InProcess {
        self.start_in_process_with(self.settings.clone(), self.settings.clone()).await
    }

    /// As `start_in_process`, with separate settings for the ingress and the worker.
    pub async fn start_in_process_with(&self, ingress: Settings, worker: Settings) -> InProcess {
        let stop = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let ingress_task = tokio::spawn(payfleet::ingress::run(ingress, listener, stop.clone()));
        let worker_stop = stop.child_token();
        let worker_task = tokio::spawn(payfleet::workers::pay::run(worker, worker_stop.clone()));
        let api = ApiClient::new(&url);
        api.wait_ready(Duration::from_secs(20)).await.unwrap();
        InProcess { api, stop, worker_stop, ingress_task, worker_task: Some(worker_task) }
    }

    /// Starts the real binaries, logging to target/test-logs/<test>.log.
    pub fn fleet(&self, test: &str) -> Fleet {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_payfleet-ingress")).parent().unwrap().to_path_buf();
        let log =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs").join(format!("{test}-{}.log", self.id));
        Fleet::new(bin_dir, self.env.clone(), Logs::file(&log).unwrap())
    }

    /// Publishes a pay request to this test's `pay.requests` as a retry tier sends it again
    /// (attempt 1), and answers the pay-worker's reply.
    pub async fn redeliver(&self, request: &PayRequested) -> PayReplied {
        use futures_util::StreamExt;
        use payfleet::mq::topology::{PAY_REQUESTS, REPLY_TO};
        let conn = payfleet::mq::connect(&self.settings.broker, "test-redelivery").await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        let options = lapin::options::BasicConsumeOptions { no_ack: true, ..Default::default() };
        let mut replies = channel.basic_consume(REPLY_TO.into(), "".into(), options, Default::default()).await.unwrap();
        let publisher = payfleet::mq::publisher::Publisher::on(channel.clone(), Duration::from_secs(5)).await.unwrap();
        let properties = envelope::properties("again", "pay_requested", "00-0-0-01")
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id("again".into());
        let properties =
            envelope::with_header(&properties, envelope::ATTEMPT_HEADER, lapin::types::AMQPValue::LongUInt(1));
        let queue = Topology::new(&self.settings.broker).queue(PAY_REQUESTS);
        publisher.publish(&queue, &serde_json::to_vec(request).unwrap(), properties).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.next()).await.unwrap().unwrap().unwrap();
        payfleet::mq::close(&conn, &channel).await;
        serde_json::from_slice(&reply.data).unwrap()
    }

    /// Publishes `body` to this test's work queue `base` as the outbox relay would (a fresh
    /// message id each time: a second copy of an event, as a crashed relay would send it).
    pub async fn publish(&self, base: &str, kind: &str, body: &[u8]) {
        let conn = payfleet::mq::connect(&self.settings.broker, "test-publish").await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        let publisher = payfleet::mq::publisher::Publisher::on(channel.clone(), Duration::from_secs(5)).await.unwrap();
        let id = uuid::Uuid::now_v7().to_string();
        let properties = envelope::properties(&id, kind, "00-0-0-01");
        let queue = Topology::new(&self.settings.broker).queue(base);
        publisher.publish(&queue, body, properties).await.unwrap();
        payfleet::mq::close(&conn, &channel).await;
    }

    /// How many messages wait in one of this test's queues.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let conn = payfleet::mq::connect(&self.settings.broker, "test-probe").await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        let q = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                Default::default(),
            )
            .await
            .unwrap();
        let _ = conn.close(200, "bye".into()).await;
        q.message_count()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let settings = self.settings.clone();
        let cache = self.admin.cache.clone();
        // Drop cannot await; clean up on a thread with its own runtime, and wait for it.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let _ = payfleet::store::drop_database(&settings.database).await;
                let _ = cache.delete_namespace().await;
                if let Ok(conn) = payfleet::mq::connect(&settings.broker, "test-cleanup").await {
                    if let Ok(channel) = conn.create_channel().await {
                        let _ = Topology::new(&settings.broker).delete(&channel).await;
                    }
                    let _ = conn.close(200, "bye".into()).await;
                }
            });
        })
        .join();
    }
}

/// The ingress and pay-worker running as tasks of the test.
pub struct InProcess {
    pub api: ApiClient,
    stop: CancellationToken,
    worker_stop: CancellationToken,
    ingress_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    worker_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    /// Stops the worker gracefully (it finishes the batches in hand).
    pub async fn stop_worker(&mut self) {
        self.worker_stop.cancel();
        if let Some(task) = self.worker_task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Starts a (new) pay-worker task, e.g. after `stop_worker`.
    pub fn start_worker(&mut self, settings: Settings) {
        assert!(self.worker_task.is_none(), "a worker is already running");
        self.worker_stop = self.stop.child_token();
        self.worker_task = Some(tokio::spawn(payfleet::workers::pay::run(settings, self.worker_stop.clone())));
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.worker_task.take() {
            task.await.unwrap().unwrap();
        }
        (&mut self.ingress_task).await.unwrap().unwrap();
    }
}

/// A test that ends without `stop` (it failed, say) must not leave its ingress and worker
/// running: the worker would declare the test's queues again while `TestEnv` deletes them, and
/// RabbitMQ 3.10 was seen to stop answering handshakes at all after such a race.
impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
        self.ingress_task.abort();
        if let Some(task) = &self.worker_task {
            task.abort();
        }
    }
}

impl TestEnv {
    /// An order whose pay time ran out, locked by the test (the returned transaction) so racers
    /// queue on it, and a pool of their own for the racers.
    pub async fn hold_expired_order(
        &self,
        order_no: &str,
    ) -> (sqlx::PgPool, sqlx::Transaction<'static, sqlx::Postgres>) {
        let db = &self.admin.db;
        sqlx::query("UPDATE orders SET expires_at = now() - interval '1 second' WHERE order_no = $1")
            .bind(order_no)
            .execute(db)
            .await
            .unwrap();
        let racers = sqlx::PgPool::connect(&self.env["PAYFLEET__DATABASE__URL"]).await.unwrap();
        let mut holder = db.begin().await.unwrap();
        payfleet::store::orders::lock_one(&mut holder, order_no).await.unwrap();
        (racers, holder)
    }
}

/// Waits until `n` sessions of this test's database wait for a lock.
pub async fn until_waiting_on_locks(db: &sqlx::PgPool, n: i64) {
    eventually(Duration::from_secs(10), "a transaction waits for the held lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(db)
        .await
        .unwrap();
        waiting >= n
    })
    .await;
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
