//! Follow-ups of paid orders (the follow-up worker): lottery draws, each order's once, and the
//! refund of an order that cannot be served; the draws an order shows its owner.

use super::{Error, Result};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use super::orders;
use super::refunds::{self, RefundRequest, Refunded};
use crate::domain::lottery::{self, Unservable};
use crate::domain::{GoodsKind, OrderStatus};
use crate::mq::messages::OrderPaid;

/// What following up a paid order did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// Served now: this many prizes drawn.
    Drawn(usize),
    /// Its follow-up was done before (the event came again): nothing changed.
    Already,
    /// It could not be served, and everything paid was refunded by this refund.
    Refunded { refund_no: String, why: String },
    /// It was refunded in full before it was served: nothing to serve.
    Skipped,
}

#[derive(sqlx::FromRow)]
struct PrizeRow {
    id: i64,
    remaining: Option<i32>,
    weight: Option<i32>,
}

/// Draws a paid lottery order's prizes, once, in one transaction under the order's lock: the
/// follow-up record is read after the lock, so a second delivery of the event (to this worker
/// or another) finds the first one's and changes nothing. An ichiban box's prizes are locked
/// (`FOR UPDATE`) before they are counted, so concurrent orders on one box take turns and each
/// draws from what the last one left; `remaining >= 0` backs that up in the schema. An order the
/// box cannot serve whole is refunded in full in the same transaction, never half-served.
pub async fn draw(pool: &PgPool, paid: &OrderPaid) -> Result<Followed> {
    let mut tx = pool.begin().await?;
    let Some(order) = orders::lock_one(&mut tx, &paid.order_no).await? else {
        return Err(Error::Invariant(format!("order {} of an order_paid event does not exist", paid.order_no)));
    };
    if done(&mut tx, &order.order_no).await? {
        return Ok(Followed::Already);
    }
    match order.status {
        OrderStatus::Refunded => {
            record(&mut tx, &order.order_no, "SKIPPED", None, "refunded in full before it was served").await?;
            tx.commit().await?;
            return Ok(Followed::Skipped);
        }
        status if !status.was_paid() => {
            return Err(Error::Invariant(format!("order {} is {}, not paid", order.order_no, status.as_str())));
        }
        _ => {}
    }
    // The box is locked only for ichiban: infinite pools have no stock to guard.
    let lock = if order.kind == GoodsKind::Ichiban { "FOR UPDATE" } else { "" };
    let prizes: Vec<PrizeRow> =
        sqlx::query_as(&format!("SELECT id, remaining, weight FROM prizes WHERE goods_id = $1 ORDER BY id {lock}"))
            .bind(order.goods_id)
            .fetch_all(&mut *tx)
            .await?;
    let num = u32::try_from(order.num)
        .map_err(|_| Error::Invariant(format!("order {} num {}", order.order_no, order.num)))?;
    // The thread's generator (ChaCha12, seeded and reseeded from the operating system), held
    // only here: it stays on its thread, not across an await.
    let drawn = match order.kind {
        GoodsKind::Ichiban => {
            let stock: Vec<u32> = prizes.iter().map(|p| p.remaining.unwrap_or(0).max(0) as u32).collect();
            lottery::draw_ichiban(&stock, num, &mut rand::rng())
        }
        GoodsKind::Infinite => {
            let weights: Vec<u32> = prizes.iter().map(|p| p.weight.unwrap_or(0).max(0) as u32).collect();
            lottery::draw_weighted(&weights, num, &mut rand::rng())
        }
    };
    let drawn = match drawn {
        Ok(drawn) => drawn,
        Err(unservable) => {
            let followed = refund_unserved(&mut tx, &order.order_no, unservable).await?;
            tx.commit().await?;
            return Ok(followed);
        }
    };
    record(&mut tx, &order.order_no, "SERVED", None, "").await?;
    let prize_ids: Vec<i64> = drawn.iter().map(|&i| prizes[i].id).collect();
    sqlx::query(
        "INSERT INTO draws (order_no, position, prize_id)
         SELECT $1, d.position, d.prize_id FROM unnest($2::bigint[]) WITH ORDINALITY AS d (prize_id, position)",
    )
    .bind(&order.order_no)
    .bind(&prize_ids)
    .execute(&mut *tx)
    .await?;
    if order.kind == GoodsKind::Ichiban {
        sqlx::query(
            "UPDATE prizes p SET remaining = p.remaining - d.n
             FROM (SELECT prize_id, count(*)::int AS n FROM unnest($1::bigint[]) AS prize_id GROUP BY prize_id) d
             WHERE p.id = d.prize_id",
        )
        .bind(&prize_ids)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Followed::Drawn(drawn.len()))
}

/// Whether the order's follow-up is done (read after the order's lock).
async fn done(tx: &mut PgConnection, order_no: &str) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM followups WHERE order_no = $1)")
        .bind(order_no)
        .fetch_one(&mut *tx)
        .await?)
}

async fn record(
    tx: &mut PgConnection,
    order_no: &str,
    outcome: &str,
    refund_no: Option<&str>,
    detail: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO followups (order_no, outcome, refund_no, detail) VALUES ($1, $2, $3, $4)")
        .bind(order_no)
        .bind(outcome)
        .bind(refund_no)
        .bind(detail)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Refunds what is left of an order that cannot be served, through the refund path (internal
/// parts at once, a WeChat part through the refund worker), named `UNSERVED-<order_no>` so a
/// second attempt finds the first.
async fn refund_unserved(tx: &mut PgConnection, order_no: &str, unservable: Unservable) -> Result<Followed> {
    let refund_no = format!("UNSERVED-{order_no}");
    let why = format!("the order cannot be served: {unservable}");
    let request = RefundRequest {
        order_no,
        refund_no: &refund_no,
        amount: None,
        reason: &why,
        operator: "payfleet-followup-worker",
    };
    match refunds::create_in(tx, &request).await? {
        Refunded::Made(_) | Refunded::Again(_) => {}
        Refunded::Refused(refusal) => {
            return Err(Error::Invariant(format!("refunding unserved order {order_no}: {}", refusal.message)));
        }
    }
    record(tx, order_no, "REFUNDED", Some(&refund_no), &why).await?;
    Ok(Followed::Refunded { refund_no, why })
}

/// One draw of an order, as its owner sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DrawView {
    pub position: i32,
    pub prize: String,
    pub drawn_at: OffsetDateTime,
}

/// What became of a paid order's follow-up.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FollowupView {
    pub outcome: String,
    pub refund_no: Option<String>,
    pub detail: String,
    pub done_at: OffsetDateTime,
}

/// An order's follow-up (None: not done yet) and its draws, by position.
pub async fn of_order(pool: &PgPool, order_no: &str) -> Result<(Option<FollowupView>, Vec<DrawView>)> {
    let followup = sqlx::query_as("SELECT outcome, refund_no, detail, done_at FROM followups WHERE order_no = $1")
        .bind(order_no)
        .fetch_optional(pool)
        .await?;
    let draws = sqlx::query_as(
        "SELECT d.position, p.name AS prize, d.drawn_at FROM draws d JOIN prizes p ON p.id = d.prize_id
         WHERE d.order_no = $1 ORDER BY d.position",
    )
    .bind(order_no)
    .fetch_all(pool)
    .await?;
    Ok((followup, draws))
}
