//! The ingress's side of the broker: confirmed publishing, and request/reply over RabbitMQ's
//! direct reply-to.
//!
//! One channel carries both: the reply consumer on `amq.rabbitmq.reply-to` must exist on the
//! channel that publishes the requests. A supervisor task keeps that session alive and rebuilds
//! it after the broker goes away; while it is down, calls fail at once with `NotConnected`
//! (nothing was published, so nothing can be charged).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::messages::Event;
use super::publisher::Publisher;
use super::topology::{REPLY_TO, Topology};
use super::{MqError, connect_with_backoff, envelope, reconnect_backoff};
use crate::config::BrokerSettings;

/// How a request/reply call ended.
#[derive(Debug)]
pub enum Called {
    /// The worker answered in time.
    Replied(Vec<u8>),
    /// The request is stored in its queue but no answer came in time; the worker will still
    /// handle it.
    TimedOut,
}

/// What a message is and where it goes.
pub struct Outgoing<'a> {
    /// The work queue's base name.
    pub queue: &'static str,
    /// Unique per message; also the correlation id of the reply.
    pub message_id: &'a str,
    pub kind: &'a str,
    pub traceparent: &'a str,
    pub body: &'a [u8],
}

impl<'a> Outgoing<'a> {
    /// A message carrying an event: its queue and kind are the event type's.
    pub fn event<E: Event>(message_id: &'a str, traceparent: &'a str, body: &'a [u8]) -> Outgoing<'a> {
        Outgoing { queue: E::QUEUE, message_id, kind: E::KIND, traceparent, body }
    }
}

/// A handle to the ingress's broker session; cheap to clone.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// The live session's publisher, `None` while (re)connecting.
    session: RwLock<Option<Publisher>>,
    /// Calls waiting for a reply, by correlation id.
    pending: Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>,
    topology: Topology,
}

/// Removes a call's entry from `pending` however the call ends (reply, time-out, error, or the
/// HTTP request being dropped).
struct PendingGuard<'a> {
    inner: &'a Inner,
    id: &'a str,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.inner.pending.lock().expect("pending lock").remove(self.id);
    }
}

impl RpcClient {
    /// Starts the supervisor; the client is usable once it has connected (see `is_connected`).
    pub fn start(settings: BrokerSettings, stop: CancellationToken) -> RpcClient {
        let inner = Arc::new(Inner {
            session: RwLock::new(None),
            pending: Mutex::new(HashMap::new()),
            topology: Topology::new(&settings),
        });
        tokio::spawn(supervise(inner.clone(), settings, stop));
        RpcClient { inner }
    }

    pub fn is_connected(&self) -> bool {
        self.inner.session.read().expect("session lock").is_some()
    }

    fn publisher(&self) -> Result<Publisher, MqError> {
        self.inner.session.read().expect("session lock").clone().ok_or(MqError::NotConnected)
    }

    /// Publishes a message and waits for its confirm.
    pub async fn publish(&self, out: &Outgoing<'_>) -> Result<(), MqError> {
        let properties = envelope::properties(out.message_id, out.kind, out.traceparent);
        self.publisher()?.publish(&self.inner.topology.queue(out.queue), out.body, properties).await
    }

    /// Publishes a request with `reply_to` set, waits for its confirm, then waits up to `wait`
    /// for the reply. An error means the request was not stored, or, for `Unconfirmed`, that
    /// nobody knows: the caller must not report it as accepted.
    pub async fn call(&self, out: &Outgoing<'_>, wait: Duration) -> Result<Called, MqError> {
        let publisher = self.publisher()?;
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().expect("pending lock").insert(out.message_id.to_owned(), tx);
        let _guard = PendingGuard { inner: &self.inner, id: out.message_id };
        let properties = envelope::properties(out.message_id, out.kind, out.traceparent)
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(out.message_id.into());
        publisher.publish(&self.inner.topology.queue(out.queue), out.body, properties).await?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(reply)) => Ok(Called::Replied(reply)),
            // Time-out, or the session dropped and took the pending reply with it.
            Ok(Err(_)) | Err(_) => Ok(Called::TimedOut),
        }
    }
}

/// Keeps one broker session alive until `stop`.
async fn supervise(inner: Arc<Inner>, settings: BrokerSettings, stop: CancellationToken) {
    let mut delays = reconnect_backoff();
    loop {
        let Some(conn) = connect_with_backoff(&settings, "payfleet-ingress", &stop).await else { return };
        match open_session(&conn, &inner.topology, &settings).await {
            Ok((publisher, mut replies)) => {
                *inner.session.write().expect("session lock") = Some(publisher);
                tracing::info!("connected to the broker");
                delays = reconnect_backoff();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        next = replies.next() => match next {
                            Some(Ok(delivery)) => {
                                let id = delivery.properties.correlation_id().as_ref().map(|c| c.to_string());
                                let waiter = id.and_then(|id| inner.pending.lock().expect("pending lock").remove(&id));
                                // No waiter: the call already timed out and answered 202.
                                if let Some(waiter) = waiter {
                                    let _ = waiter.send(delivery.data);
                                }
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "lost the broker session");
                                break;
                            }
                            None => {
                                tracing::warn!("the broker closed the reply consumer");
                                break;
                            }
                        }
                    }
                }
                let publisher = inner.session.write().expect("session lock").take();
                if let Some(publisher) = publisher {
                    let _ = publisher.channel().close(200, "bye".into()).await;
                }
                // Calls waiting on this session's replies will not get them; they answer 202.
                inner.pending.lock().expect("pending lock").clear();
            }
            Err(e) => tracing::warn!(error = %e, "cannot open a broker session"),
        }
        let _ = conn.close(200, "bye".into()).await;
        if stop.is_cancelled() {
            return;
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn open_session(
    conn: &lapin::Connection,
    topology: &Topology,
    settings: &BrokerSettings,
) -> Result<(Publisher, lapin::Consumer), MqError> {
    let channel = conn.create_channel().await?;
    topology.ensure(&channel).await?;
    let publisher = Publisher::on(channel.clone(), settings.publish_timeout()).await?;
    let options = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let replies = channel.basic_consume(REPLY_TO.into(), "".into(), options, FieldTable::default()).await?;
    Ok((publisher, replies))
}
