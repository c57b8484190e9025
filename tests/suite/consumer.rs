//! The consumer framework against the real broker: batches, replies, delayed retries with an
//! attempt count, dead-lettering with a reason, and holding messages through an outage.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestEnv, eventually};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use payfleet::mq::consumer::{self, BrokerHealth, ConsumerSettings, HandleError, Handler, Incoming, Outcome};
use payfleet::mq::envelope;
use payfleet::mq::publisher::Publisher;
use payfleet::mq::rpc::{Called, Outgoing, RpcClient};
use payfleet::mq::topology::{ORDER_FOLLOWUP, Topology};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Serialize, Deserialize)]
struct TestMessage {
    id: String,
    /// ok | slow (ok after 300 ms) | reply | permanent | retry | retry-once | unavailable-twice | panic
    behaviour: String,
}

/// A handler that does what each message says, and remembers what it saw.
#[derive(Default)]
struct Scripted {
    /// Every call: (message id, attempt header).
    seen: Mutex<Vec<(String, u32)>>,
    batch_sizes: Mutex<Vec<usize>>,
    /// The ids handled `Ok` by batches that returned: what a real handler would have committed
    /// (a batch that panics commits nothing, as its transaction never finishes).
    committed: Mutex<Vec<String>>,
}

impl Scripted {
    fn calls(&self, id: &str) -> Vec<u32> {
        self.seen.lock().unwrap().iter().filter(|(i, _)| i == id).map(|(_, a)| *a).collect()
    }
}

impl Handler for Scripted {
    type Message = TestMessage;

    async fn handle(&self, batch: &[Incoming<TestMessage>]) -> Vec<Result<Outcome, HandleError>> {
        self.batch_sizes.lock().unwrap().push(batch.len());
        if batch.iter().any(|i| i.message.behaviour == "slow") {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let results: Vec<Result<Outcome, HandleError>> = batch
            .iter()
            .map(|incoming| {
                let m = &incoming.message;
                let earlier = self.calls(&m.id).len();
                self.seen.lock().unwrap().push((m.id.clone(), incoming.meta.attempt));
                match m.behaviour.as_str() {
                    "ok" | "slow" => Ok(Outcome::default()),
                    "reply" => Ok(Outcome { reply: Some(b"pong".to_vec()) }),
                    "permanent" => Err(HandleError::Permanent("cannot ever work".into())),
                    "retry" => Err(HandleError::Retryable("not yet".into())),
                    "retry-once" if incoming.meta.attempt == 0 => Err(HandleError::Retryable("not yet".into())),
                    "retry-once" => Ok(Outcome::default()),
                    "unavailable-twice" if earlier < 2 => Err(HandleError::Unavailable("database down".into())),
                    "unavailable-twice" => Ok(Outcome::default()),
                    "panic" => panic!("a bug in the handler"),
                    other => panic!("unknown behaviour {other}"),
                }
            })
            .collect();
        let done = batch.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(i, _)| i.message.id.clone());
        self.committed.lock().unwrap().extend(done);
        results
    }

    fn failure_reply(&self, reason: &str) -> Option<Vec<u8>> {
        Some(format!("failed: {reason}").into_bytes())
    }
}

struct Harness {
    env: TestEnv,
    handler: Arc<Scripted>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    conn: lapin::Connection,
    publisher: Publisher,
}

impl Harness {
    async fn new() -> Harness {
        Harness::with(&[]).await
    }

    async fn with(overrides: &[(&str, &str)]) -> Harness {
        let env = TestEnv::with(overrides).await;
        let conn = payfleet::mq::connect(&env.settings.broker, "test-publisher").await.unwrap();
        let publisher = Publisher::open(&conn, Duration::from_secs(5)).await.unwrap();
        Harness { env, handler: Arc::default(), stop: CancellationToken::new(), task: None, conn, publisher }
    }

    fn start(&mut self) {
        self.start_with(2);
    }

    fn start_with(&mut self, concurrency: usize) {
        let settings = ConsumerSettings {
            queue: ORDER_FOLLOWUP,
            name: "test-consumer".into(),
            prefetch: 100,
            concurrency,
            batch_max: 50,
        };
        let (broker, handler, stop) = (self.env.settings.broker.clone(), self.handler.clone(), self.stop.clone());
        self.task = Some(tokio::spawn(async move {
            let topology = Topology::new(&broker);
            consumer::run(&broker, &topology, &settings, handler, BrokerHealth::default(), stop).await;
        }));
    }

    async fn send(&self, id: &str, behaviour: &str) {
        let body = serde_json::to_vec(&TestMessage { id: id.into(), behaviour: behaviour.into() }).unwrap();
        self.send_raw(id, &body).await;
    }

    async fn send_raw(&self, id: &str, body: &[u8]) {
        let queue = self.topology().queue(ORDER_FOLLOWUP);
        self.publisher.publish(&queue, body, envelope::properties(id, "test", "00-0-0-01")).await.unwrap();
    }

    fn topology(&self) -> Topology {
        Topology::new(&self.env.settings.broker)
    }

    /// Takes every message from the DLQ: (message id, reason header, origin header).
    async fn drain_dlq(&self) -> HashMap<String, (String, String)> {
        let channel = self.conn.create_channel().await.unwrap();
        let mut out = HashMap::new();
        let dlq = self.topology().dlq(ORDER_FOLLOWUP);
        while let Some(message) = channel.basic_get(dlq.as_str().into(), BasicGetOptions::default()).await.unwrap() {
            let headers = message.delivery.properties.headers().clone().unwrap_or_default();
            let text = |name: &str| match headers.inner().get(name) {
                Some(lapin::types::AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                other => format!("{other:?}"),
            };
            let id = message.delivery.properties.message_id().as_ref().map(|s| s.to_string()).unwrap_or_default();
            out.insert(id, (text(envelope::REASON_HEADER), text(envelope::ORIGIN_HEADER)));
            message.delivery.acker.ack(BasicAckOptions::default()).await.unwrap();
        }
        out
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        payfleet::mq::close(&self.conn, self.publisher.channel()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_at_hand_are_handled_as_a_batch_and_acked() {
    let mut h = Harness::new().await;
    for i in 0..40 {
        h.send(&format!("m{i}"), "ok").await;
    }
    h.start();
    let queue = h.topology().queue(ORDER_FOLLOWUP);
    eventually(Duration::from_secs(10), "all 40 handled", || async { h.handler.seen.lock().unwrap().len() == 40 })
        .await;
    eventually(Duration::from_secs(10), "the queue empties (every message acked)", || async {
        h.env.queue_depth(&queue).await == 0
    })
    .await;
    let sizes = h.handler.batch_sizes.lock().unwrap().clone();
    assert!(sizes.iter().any(|&n| n > 1), "queued deliveries come as batches: {sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 50), "never more than batch_max: {sizes:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_through_the_tiers_then_dead_lettered_with_a_reason() {
    let mut h = Harness::new().await;
    h.start();
    h.send("flaky", "retry-once").await;
    h.send("hopeless", "retry").await;
    h.send("broken", "permanent").await;
    h.send_raw("garbage", b"{not json").await;

    eventually(Duration::from_secs(10), "flaky succeeds on its second attempt", || async {
        h.handler.calls("flaky") == vec![0, 1]
    })
    .await;
    // Tiers are 200 ms and 400 ms in tests: attempts 0, 1, 2, then the DLQ.
    eventually(Duration::from_secs(10), "hopeless tried three times", || async {
        h.handler.calls("hopeless") == vec![0, 1, 2]
    })
    .await;
    let mut dead = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dead.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "three messages in the DLQ: {dead:?}");
        dead.extend(h.drain_dlq().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dead["hopeless"].0.contains("attempts used up") && dead["hopeless"].0.contains("not yet"), "{dead:?}");
    assert!(dead["broken"].0.contains("cannot ever work"), "{dead:?}");
    assert!(dead["garbage"].0.contains("unparseable payload"), "{dead:?}");
    assert_eq!(dead["broken"].1, ORDER_FOLLOWUP);
    assert_eq!(h.handler.calls("broken"), vec![0], "a permanent failure is not retried");
    assert!(h.handler.calls("garbage").is_empty(), "an unparseable payload never reaches the handler");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_dependency_holds_the_message_instead_of_spending_its_retries() {
    let mut h = Harness::new().await;
    h.start();
    h.send("patient", "unavailable-twice").await;
    eventually(Duration::from_secs(10), "handled on the third call", || async {
        h.handler.calls("patient").len() == 3
    })
    .await;
    assert_eq!(h.handler.calls("patient"), vec![0, 0, 0], "retried in place, not through the delay tiers");
    let queue = h.topology().queue(ORDER_FOLLOWUP);
    eventually(Duration::from_secs(5), "acked", || async { h.env.queue_depth(&queue).await == 0 }).await;
    assert!(h.drain_dlq().await.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handled_request_is_answered_on_direct_reply_to() {
    let mut h = Harness::new().await;
    h.start();
    let stop = CancellationToken::new();
    let rpc = RpcClient::start(h.env.settings.broker.clone(), stop.clone());
    eventually(Duration::from_secs(10), "rpc connected", || async { rpc.is_connected() }).await;
    let body = serde_json::to_vec(&TestMessage { id: "ping".into(), behaviour: "reply".into() }).unwrap();
    let out =
        Outgoing { queue: ORDER_FOLLOWUP, message_id: "ping", kind: "test", traceparent: "00-0-0-01", body: &body };
    match rpc.call(&out, Duration::from_secs(5)).await.unwrap() {
        Called::Replied(reply) => assert_eq!(reply, b"pong"),
        Called::TimedOut => panic!("no reply"),
    }
    // A request nobody answers in time is still stored and handled.
    let body = serde_json::to_vec(&TestMessage { id: "quiet".into(), behaviour: "ok".into() }).unwrap();
    let out =
        Outgoing { queue: ORDER_FOLLOWUP, message_id: "quiet", kind: "test", traceparent: "00-0-0-01", body: &body };
    assert!(matches!(rpc.call(&out, Duration::from_millis(1)).await.unwrap(), Called::TimedOut | Called::Replied(_)));
    eventually(Duration::from_secs(5), "quiet handled", || async { h.handler.calls("quiet").len() == 1 }).await;
    stop.cancel();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dead_lettered_is_still_answered() {
    let mut h = Harness::new().await;
    h.start();
    let stop = CancellationToken::new();
    let rpc = RpcClient::start(h.env.settings.broker.clone(), stop.clone());
    eventually(Duration::from_secs(10), "rpc connected", || async { rpc.is_connected() }).await;
    let body = serde_json::to_vec(&TestMessage { id: "doomed".into(), behaviour: "permanent".into() }).unwrap();
    let out =
        Outgoing { queue: ORDER_FOLLOWUP, message_id: "doomed", kind: "test", traceparent: "00-0-0-01", body: &body };
    match rpc.call(&out, Duration::from_secs(5)).await.unwrap() {
        Called::Replied(reply) => assert_eq!(String::from_utf8(reply).unwrap(), "failed: cannot ever work"),
        Called::TimedOut => panic!("the caller was left waiting"),
    }
    assert!(h.drain_dlq().await.contains_key("doomed"));
    stop.cancel();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_message_alone_is_returned_until_the_delivery_limit_dead_letters_it() {
    let mut h = Harness::with(&[("PAYFLEET__BROKER__DELIVERY_LIMIT", "1")]).await;
    let healthy: Vec<String> = (0..5).map(|i| format!("healthy{i}")).collect();
    // One batch slot, held by a slow message while the others arrive: they wait in the prefetch
    // buffer and the next batch takes them all.
    h.start_with(1);
    h.send("slow", "slow").await;
    eventually(Duration::from_secs(10), "the slow message is being handled", || async {
        !h.handler.batch_sizes.lock().unwrap().is_empty()
    })
    .await;
    h.send("poison", "panic").await;
    for id in &healthy {
        h.send(id, "ok").await;
    }
    let mut dead = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !dead.contains_key("poison") {
        assert!(tokio::time::Instant::now() < deadline, "the poison message reaches the DLQ");
        dead.extend(h.drain_dlq().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sizes = h.handler.batch_sizes.lock().unwrap().clone();
    assert_eq!(sizes[1], 6, "the poison and the healthy messages shared a batch: {sizes:?}");
    let queue = h.topology().queue(ORDER_FOLLOWUP);
    eventually(Duration::from_secs(10), "every healthy message acked", || async {
        h.env.queue_depth(&queue).await == 0
    })
    .await;
    dead.extend(h.drain_dlq().await);
    assert_eq!(dead.keys().collect::<Vec<_>>(), ["poison"], "only the poison is dead-lettered");
    let mut committed = h.handler.committed.lock().unwrap().clone();
    committed.sort();
    assert_eq!(committed[..5], healthy, "each healthy message handled and committed once");
    assert_eq!(committed[5], "slow");
    // In the batch, then alone, then on its one redelivery: then the broker dead-letters it.
    assert_eq!(h.handler.calls("poison").len(), 3, "{:?}", h.handler.calls("poison"));
    h.stop().await;
}
