//! RabbitMQ: the queue topology, confirmed publishing, the consumer framework every worker
//! runs on, the ingress's request/reply client, and the message bodies. Only this module talks
//! lapin.

pub mod consumer;
pub mod envelope;
pub mod messages;
pub mod publisher;
pub mod rpc;
pub mod topology;

use std::time::Duration;

use backon::BackoffBuilder;
use lapin::{Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerSettings;

/// What went wrong with the broker.
#[derive(Debug, thiserror::Error)]
pub enum MqError {
    /// The broker is unreachable, or the connection or channel dropped.
    #[error("broker unavailable: {0}")]
    Unavailable(#[from] lapin::Error),
    /// The broker nacked the message or could not route it to a queue.
    #[error("broker refused the message: {0}")]
    Refused(String),
    /// The message was handed to the broker but its confirm never came (time-out, or the
    /// connection dropped while waiting): it may or may not be stored.
    #[error("publish not confirmed: {0}")]
    Unconfirmed(String),
    /// The fleet has no broker session right now (reconnecting).
    #[error("not connected to the broker")]
    NotConnected,
    /// The broker took the TCP connection but did not finish the AMQP handshake in time (a
    /// broker overloaded or wedged answers this way rather than refusing).
    #[error("the broker did not complete the handshake within {0:?}")]
    HandshakeTimeout(Duration),
}

/// How long one connection attempt may take, the AMQP handshake included. Without a bound, a
/// broker that accepts TCP but never answers would hold a binary (or `payctl`) forever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Closes a channel, then its connection. (Closing only the connection leaves lapin to close
/// the channel as it is dropped, racing the connection's own close and logging a spurious
/// error.)
pub async fn close(conn: &Connection, channel: &lapin::Channel) {
    let _ = channel.close(200, "bye".into()).await;
    let _ = conn.close(200, "bye".into()).await;
}

/// One connection attempt.
pub async fn connect(settings: &BrokerSettings, name: &str) -> Result<Connection, MqError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(settings.url.expose_secret(), properties))
        .await
        .map_err(|_| MqError::HandshakeTimeout(CONNECT_TIMEOUT))?
        .map_err(MqError::from)
}

/// The delays between reconnection attempts: quick at first, then every few seconds.
pub fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Connects, retrying with backoff until it succeeds or `stop` is cancelled.
pub async fn connect_with_backoff(
    settings: &BrokerSettings,
    name: &str,
    stop: &CancellationToken,
) -> Option<Connection> {
    let mut delays = reconnect_backoff();
    loop {
        match connect(settings, name).await {
            Ok(conn) => return Some(conn),
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, retry_in = ?delay, "{name}: cannot reach the broker");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
