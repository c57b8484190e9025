//! The transactional outbox: rows written beside a business change, relayed to the broker
//! after the commit by `workers::relay`.

use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

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

/// Opens a transaction holding the oldest unsent rows, skipping rows another relay holds, so
/// several relays share the work without publishing a row twice at the same time.
pub async fn claim_unsent(
    pool: &PgPool,
    limit: i64,
) -> Result<(Transaction<'static, Postgres>, Vec<OutboxRow>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query_as(
        "SELECT id, message_id, correlation_id, queue, kind, payload::text AS payload, delay_ms FROM outbox
         WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    Ok((tx, rows))
}

pub async fn mark_sent(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)").bind(ids).execute(conn).await.map(drop)
}

/// Rows not yet relayed (for payctl and tests).
pub async fn unsent_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetch_one(pool).await
}
