//! The consumer framework every worker runs on.
//!
//! - Manual acks, and only after the handler is done (its transaction committed): a crash at
//!   any point before the ack means the broker redelivers, and every handler is idempotent.
//! - The deliveries at hand are handed over as one batch, so a handler can apply them in one
//!   transaction; `prefetch` bounds how many a worker holds, `concurrency` how many batches run
//!   at once.
//! - The handler's verdict alone decides what happens to each message: `Ok` replies (if the
//!   message asked for one) and acks; `Retryable` goes to the next delay tier with its attempt
//!   count raised, or to the DLQ once the tiers are used up; `Permanent` goes to the DLQ with the
//!   reason in a header; `Unavailable` (the database or Redis is down) keeps the message and
//!   tries again with backoff, so an outage delays work instead of burning its retries.
//! - A lost broker connection is re-established with backoff; deliveries not yet acked return
//!   to the queue by themselves.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::envelope::{self, Meta};
use super::messages::SCHEMA_VERSION;
use super::publisher::{Publisher, Replier};
use super::topology::Topology;
use super::{MqError, connect_with_backoff, reconnect_backoff};
use crate::config::BrokerSettings;

/// A decoded message and its envelope.
#[derive(Debug)]
pub struct Incoming<M> {
    pub message: M,
    pub meta: Meta,
}

/// A handled message: acked, after sending `reply` to its `reply_to` if it has both.
#[derive(Debug, Default)]
pub struct Outcome {
    pub reply: Option<Vec<u8>>,
}

/// Why a message was not handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// A transient failure (a deadlock, a conflict): retry after the next delay tier.
    #[error("retryable: {0}")]
    Retryable(String),
    /// A dependency is unreachable: keep the message and retry here once it is back.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// It will never succeed (unparseable, invalid): dead-letter it now.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// What a worker does with a batch of messages from its queue.
pub trait Handler: Send + Sync + 'static {
    type Message: DeserializeOwned + Send + Sync + 'static;

    /// Handles a batch and answers one result per message, in the batch's order.
    fn handle(
        &self,
        batch: &[Incoming<Self::Message>],
    ) -> impl Future<Output = Vec<Result<Outcome, HandleError>>> + Send;

    /// The reply for a request that is dead-lettered, so a caller still waiting learns it
    /// failed instead of waiting for nothing. None: no reply.
    fn failure_reply(&self, reason: &str) -> Option<Vec<u8>> {
        let _ = reason;
        None
    }
}

/// How one consumer consumes.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    /// The work queue's base name (`mq::topology`).
    pub queue: &'static str,
    /// Names the connection and consumer tag in the broker's UI.
    pub name: String,
    pub prefetch: u16,
    pub concurrency: usize,
    pub batch_max: usize,
}

/// Whether the consumer holds a live broker session (for /readyz).
#[derive(Clone, Default)]
pub struct BrokerHealth(Arc<AtomicBool>);

impl BrokerHealth {
    pub fn is_connected(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
    }
}

/// Consumes `settings.queue` until `stop` is cancelled, reconnecting whenever the broker goes
/// away. On stop it cancels the consumer, finishes the batches in hand, and returns.
pub async fn run<H: Handler>(
    broker: &BrokerSettings,
    topology: &Topology,
    settings: &ConsumerSettings,
    handler: Arc<H>,
    health: BrokerHealth,
    stop: CancellationToken,
) {
    let mut delays = reconnect_backoff();
    loop {
        let Some(conn) = connect_with_backoff(broker, &settings.name, &stop).await else { return };
        let result = session(&conn, broker, topology, settings, &handler, &health, &stop).await;
        health.set(false);
        let _ = conn.close(200, "bye".into()).await;
        match result {
            Ok(()) => return,
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, retry_in = ?delay, queue = settings.queue, "consumer lost its broker session");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// One broker session: consume until the connection fails (Err) or `stop` (Ok).
async fn session<H: Handler>(
    conn: &lapin::Connection,
    broker: &BrokerSettings,
    topology: &Topology,
    settings: &ConsumerSettings,
    handler: &Arc<H>,
    health: &BrokerHealth,
    stop: &CancellationToken,
) -> Result<(), MqError> {
    let channel = conn.create_channel().await?;
    topology.ensure(&channel).await?;
    channel.basic_qos(settings.prefetch, BasicQosOptions::default()).await?;
    let publisher = Publisher::on(channel.clone(), broker.publish_timeout()).await?;
    let replier = Replier::open(conn).await?;
    let tag = format!("{}-{}", settings.name, uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            topology.queue(settings.queue).into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    health.set(true);
    tracing::info!(queue = %topology.queue(settings.queue), prefetch = settings.prefetch, concurrency = settings.concurrency, "consuming");

    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let mut batches = JoinSet::new();
    let outcome = loop {
        // Wait for a free slot before taking deliveries: while every slot is busy, deliveries
        // pile up in the prefetch buffer and the next batch takes them all at once.
        let permit = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let first = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            next = consumer.next() => next,
        };
        let mut batch = match first {
            Some(Ok(delivery)) => vec![delivery],
            Some(Err(e)) => break Err(MqError::Unavailable(e)),
            None => break Err(MqError::Refused("the broker cancelled the consumer".into())),
        };
        while batch.len() < settings.batch_max {
            match consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(delivery),
                _ => break,
            }
        }
        let context = BatchContext {
            handler: handler.clone(),
            publisher: publisher.clone(),
            replier: replier.clone(),
            topology: topology.clone(),
            queue: settings.queue,
            stop: stop.clone(),
        };
        let queue = settings.queue;
        batches.spawn(async move {
            if AssertUnwindSafe(context.process(&batch)).catch_unwind().await.is_err() {
                // A bug, not a verdict, and one message of the batch may be all it takes: apply
                // the messages still unsettled one at a time, so the healthy ones are handled
                // (and acked) alone and only a message that panics by itself goes back to the
                // queue, where x-delivery-limit dead-letters it once it keeps doing this.
                let unsettled: Vec<&Delivery> = batch.iter().filter(|d| d.acker.usable()).collect();
                tracing::error!(queue, unsettled = unsettled.len(), "a batch handler panicked; applying its unsettled messages one at a time");
                for delivery in unsettled {
                    let alone = std::slice::from_ref(delivery);
                    if batch.len() == 1 || AssertUnwindSafe(context.process(alone)).catch_unwind().await.is_err() {
                        tracing::error!(queue, message_id = ?delivery.properties.message_id(), "the handler panics on this message; returning it to the queue");
                        requeue(delivery).await;
                    }
                }
            }
            drop(permit);
        });
        while batches.try_join_next().is_some() {}
    };
    // Stop taking deliveries, then let the batches in hand commit and ack.
    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
    while batches.join_next().await.is_some() {}
    let _ = replier.channel().close(200, "bye".into()).await;
    let _ = channel.close(200, "bye".into()).await;
    outcome
}

/// Everything a batch task needs.
struct BatchContext<H> {
    handler: Arc<H>,
    /// Retries and dead letters, confirmed.
    publisher: Publisher,
    /// Replies, unconfirmed.
    replier: Replier,
    topology: Topology,
    queue: &'static str,
    stop: CancellationToken,
}

impl<H: Handler> BatchContext<H> {
    async fn process(&self, deliveries: &[Delivery]) {
        let mut held: Vec<&Delivery> = Vec::with_capacity(deliveries.len());
        let mut batch: Vec<Incoming<H::Message>> = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let meta = envelope::read(delivery);
            if meta.schema.is_some_and(|v| v > SCHEMA_VERSION) {
                let reason =
                    format!("schema version {} is newer than this worker's {SCHEMA_VERSION}", meta.schema.unwrap_or(0));
                self.dead_letter(delivery, &meta, &reason).await;
                continue;
            }
            match serde_json::from_slice::<H::Message>(&delivery.data) {
                Ok(message) => {
                    held.push(delivery);
                    batch.push(Incoming { message, meta });
                }
                Err(e) => self.dead_letter(delivery, &meta, &format!("unparseable payload: {e}")).await,
            }
        }

        let mut delays = reconnect_backoff();
        while !batch.is_empty() {
            let results = self.handler.handle(&batch).await;
            assert_eq!(results.len(), batch.len(), "a handler answers once per message");
            let (mut still_held, mut still_batch, mut reason) = (Vec::new(), Vec::new(), String::new());
            for ((delivery, incoming), result) in held.into_iter().zip(batch).zip(results) {
                match result {
                    Err(HandleError::Unavailable(why)) => {
                        reason = why;
                        still_held.push(delivery);
                        still_batch.push(incoming);
                    }
                    other => self.settle(delivery, &incoming.meta, other).await,
                }
            }
            (held, batch) = (still_held, still_batch);
            if batch.is_empty() {
                break;
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tracing::warn!(queue = self.queue, held = batch.len(), %reason, retry_in = ?delay, "dependency unavailable, holding messages");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => {
                    // Shutting down mid-outage: give the messages back for another worker.
                    for delivery in held {
                        requeue(delivery).await;
                    }
                    return;
                }
            }
        }
    }

    /// Acts on the handler's verdict for one delivery.
    async fn settle(&self, delivery: &Delivery, meta: &Meta, result: Result<Outcome, HandleError>) {
        match result {
            Ok(outcome) => {
                if let Some(body) = outcome.reply {
                    self.reply(meta, &body).await;
                }
                ack(delivery).await;
            }
            Err(HandleError::Retryable(reason)) => {
                let attempt = meta.attempt + 1;
                match self.topology.retry_delay(self.queue, attempt) {
                    Some(delay) => {
                        let queue = self.topology.retry_queue(self.queue, delay);
                        let properties = envelope::with_header(
                            &delivery.properties,
                            envelope::ATTEMPT_HEADER,
                            AMQPValue::LongUInt(attempt),
                        );
                        match self.publisher.publish(&queue, &delivery.data, properties).await {
                            Ok(()) => {
                                tracing::warn!(queue = self.queue, message_id = ?meta.message_id, attempt, delay_ms = delay, %reason, "retrying later");
                                ack(delivery).await;
                            }
                            Err(e) => {
                                tracing::error!(error = %e, message_id = ?meta.message_id, "cannot schedule the retry, returning the message to its queue");
                                requeue(delivery).await;
                            }
                        }
                    }
                    None => {
                        self.dead_letter(delivery, meta, &format!("attempts used up ({}): {reason}", meta.attempt))
                            .await
                    }
                }
            }
            Err(HandleError::Permanent(reason)) => self.dead_letter(delivery, meta, &reason).await,
            Err(HandleError::Unavailable(_)) => unreachable!("held and retried by process()"),
        }
    }

    /// Answers the message's `reply_to`, if it has one.
    async fn reply(&self, meta: &Meta, body: &[u8]) {
        let Some(reply_to) = meta.reply_to.as_deref() else { return };
        let correlation = meta.correlation_id.as_deref().or(meta.message_id.as_deref()).unwrap_or_default();
        if let Err(e) = self.replier.reply(reply_to, correlation, body).await {
            tracing::warn!(error = %e, message_id = ?meta.message_id, "could not send the reply; the result stays in the database");
        }
    }

    /// Moves a message to `<queue>.dlq` with the reason, confirmed before the ack.
    async fn dead_letter(&self, delivery: &Delivery, meta: &Meta, reason: &str) {
        let dlq = self.topology.dlq(self.queue);
        let properties = envelope::with_header(
            &delivery.properties,
            envelope::REASON_HEADER,
            AMQPValue::LongString(LongString::from(reason)),
        );
        let properties = envelope::with_header(
            &properties,
            envelope::ORIGIN_HEADER,
            AMQPValue::LongString(LongString::from(self.queue)),
        );
        match self.publisher.publish(&dlq, &delivery.data, properties).await {
            Ok(()) => {
                tracing::error!(queue = self.queue, message_id = ?meta.message_id, %reason, "dead-lettered to {dlq}");
                if let Some(body) = self.handler.failure_reply(reason) {
                    self.reply(meta, &body).await;
                }
                ack(delivery).await;
            }
            Err(e) => {
                tracing::error!(error = %e, message_id = ?meta.message_id, %reason, "cannot dead-letter, returning the message to its queue");
                requeue(delivery).await;
            }
        }
    }
}

async fn ack(delivery: &Delivery) {
    // A failed ack means the channel is gone; the broker redelivers and the handler, being
    // idempotent, answers the same again.
    match delivery.acker.ack(BasicAckOptions::default()).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!("ack not sent (the channel is gone); the message will be redelivered"),
        Err(e) => tracing::warn!(error = %e, "ack failed; the message will be redelivered"),
    }
}

async fn requeue(delivery: &Delivery) {
    let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
}
