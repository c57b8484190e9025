//! The outbox relay: publishes rows the paying transactions wrote to `outbox`, with publisher
//! confirms, and marks them sent only after every confirm of the batch arrived. A crash in
//! between publishes a row again later; its consumers dedupe on the message id.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{BrokerSettings, OutboxSettings};
use crate::mq::publisher::Publisher;
use crate::mq::topology::Topology;
use crate::mq::{MqError, connect_with_backoff, envelope, reconnect_backoff};
use crate::store::{self, Pool, outbox};

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Db(#[from] store::Error),
    #[error(transparent)]
    Mq(#[from] MqError),
}

/// Relays until `stop`, reconnecting to the broker and waiting out database outages.
pub async fn run(db: Pool, broker: BrokerSettings, settings: OutboxSettings, stop: CancellationToken) {
    let topology = Topology::new(&broker);
    let idle = Duration::from_millis(settings.poll_ms);
    loop {
        let Some(conn) = connect_with_backoff(&broker, "payfleet-outbox-relay", &stop).await else { return };
        let publisher = match Publisher::open(&conn, broker.publish_timeout()).await {
            Ok(publisher) => publisher,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay cannot open a channel");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut delays = reconnect_backoff();
        let broker_lost = loop {
            if stop.is_cancelled() {
                break false;
            }
            let wait = match relay_once(&db, &publisher, &topology, settings.batch).await {
                Ok(n) if n as i64 >= settings.batch => {
                    delays = reconnect_backoff();
                    continue;
                }
                Ok(n) => {
                    if n > 0 {
                        tracing::debug!(relayed = n, "outbox relayed");
                    }
                    delays = reconnect_backoff();
                    idle
                }
                Err(RelayError::Db(e)) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(error = %e, retry_in = ?delay, "outbox relay cannot read the outbox");
                    delay
                }
                Err(RelayError::Mq(e)) => {
                    tracing::warn!(error = %e, "outbox relay lost the broker; unsent rows stay unsent");
                    break true;
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break false,
                _ = tokio::time::sleep(wait) => {}
            }
        };
        crate::mq::close(&conn, publisher.channel()).await;
        if !broker_lost {
            return;
        }
    }
}

/// Publishes up to `limit` unsent rows; returns how many.
async fn relay_once(db: &Pool, publisher: &Publisher, topology: &Topology, limit: i64) -> Result<usize, RelayError> {
    let claim = outbox::claim_unsent(db, limit).await?;
    if claim.rows.is_empty() {
        claim.release().await?;
        return Ok(0);
    }
    let rows = &claim.rows;
    // Publish the whole batch, then collect the confirms: one round of broker latency per batch.
    let mut pending = Vec::with_capacity(rows.len());
    for row in rows {
        let origin = row.correlation_id.unwrap_or(row.message_id);
        let mut properties =
            envelope::properties(&row.message_id.to_string(), &row.kind, &envelope::traceparent_for(origin))
                .with_correlation_id(origin.to_string().into());
        if let Some(delay) = row.delay_ms {
            properties = properties.with_expiration(delay.to_string().into());
        }
        pending.push(publisher.send(&topology.queue(&row.queue), row.payload.as_bytes(), properties).await?);
    }
    for confirm in pending {
        confirm.confirmed().await?;
    }
    let relayed = rows.len();
    claim.mark_sent().await?;
    Ok(relayed)
}
