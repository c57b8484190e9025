//! The transactional outbox: rows written beside a business change, relayed to the broker
//! after the commit by `workers::relay`.

use super::Result;
use std::time::Duration;

use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::mq::messages::Event;

/// An event to write to the outbox, with what travels beside it.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a, E> {
    pub event: &'a E,
    /// The request it follows from (the AMQP correlation id).
    pub correlation_id: Option<Uuid>,
    /// Held this long in its (wait) queue before it is delivered on.
    pub delay: Option<Duration>,
}

impl<'a, E: Event> Outgoing<'a, E> {
    pub fn new(event: &'a E) -> Outgoing<'a, E> {
        Outgoing { event, correlation_id: None, delay: None }
    }
}

/// Writes one event beside the caller's change, in its transaction: it is published after the
/// commit, or never if the change rolls back.
pub async fn enqueue<E: Event>(conn: &mut PgConnection, event: &E) -> Result<()> {
    enqueue_all(conn, &[Outgoing::new(event)]).await
}

/// Writes these events in one statement (the outbox's only INSERT).
pub async fn enqueue_all<E: Event>(conn: &mut PgConnection, events: &[Outgoing<'_, E>]) -> Result<()> {
    let message_ids: Vec<Uuid> = events.iter().map(|_| Uuid::now_v7()).collect();
    let correlation_ids: Vec<Option<Uuid>> = events.iter().map(|e| e.correlation_id).collect();
    let payloads: Vec<String> =
        events.iter().map(|e| serde_json::to_string(e.event).expect("events serialise")).collect();
    let delays: Vec<Option<i64>> = events.iter().map(|e| e.delay.map(|d| d.as_millis() as i64)).collect();
    Ok(sqlx::query(
        "INSERT INTO outbox (message_id, correlation_id, queue, kind, payload, delay_ms)
         SELECT message_id, correlation_id, $5, $6, payload::jsonb, delay_ms
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[]) WITH ORDINALITY
              AS e(message_id, correlation_id, payload, delay_ms, ord)
         ORDER BY ord",
    )
    .bind(&message_ids)
    .bind(&correlation_ids)
    .bind(&payloads)
    .bind(&delays)
    .bind(E::QUEUE)
    .bind(E::KIND)
    .execute(conn)
    .await
    .map(drop)?)
}

/// One message waiting to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub message_id: Uuid,
    /// The request this message follows from, if any.
    pub correlation_id: Option<Uuid>,
    /// The queue's base name; the relay adds the namespace.
    pub queue: String,
    pub kind: String,
    pub payload: String,
    /// Published with this per-message TTL (into a wait queue).
    pub delay_ms: Option<i64>,
}

/// The oldest unsent rows, held (locked) by one relay until it marks them sent or lets go.
pub struct Claim {
    tx: Transaction<'static, Postgres>,
    pub rows: Vec<OutboxRow>,
}

/// Claims the oldest unsent rows, skipping rows another relay holds, so several relays share
/// the work without publishing a row twice at the same time.
pub async fn claim_unsent(pool: &PgPool, limit: i64) -> Result<Claim> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query_as(
        "SELECT id, message_id, correlation_id, queue, kind, payload::text AS payload, delay_ms FROM outbox
         WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    Ok(Claim { tx, rows })
}

impl Claim {
    /// Marks every claimed row sent (after the broker confirmed them all).
    pub async fn mark_sent(mut self) -> Result<()> {
        let ids: Vec<i64> = self.rows.iter().map(|r| r.id).collect();
        sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)").bind(&ids).execute(&mut *self.tx).await?;
        Ok(self.tx.commit().await?)
    }

    /// Lets go of the rows unsent.
    pub async fn release(self) -> Result<()> {
        Ok(self.tx.rollback().await?)
    }
}

/// Rows not yet relayed (for payctl and tests).
pub async fn unsent_count(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetch_one(pool).await?)
}
