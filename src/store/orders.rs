//! Orders: created by the ingress at the goods' price, paid by the pay-worker, read back for
//! the status endpoint.

use super::{Error, Result};
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use super::outbox::{self, Outgoing};
use crate::domain::order::OrderFacts;
use crate::domain::{GoodsKind, Money, OrderStatus, PayMethod, PayType, PaymentStatus};
use crate::mq::messages::PayTimeoutDue;

/// An order as the pay paths read it (`lock`, `read`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub order_no: String,
    pub user_id: i64,
    pub goods_id: i64,
    pub kind: GoodsKind,
    pub num: i32,
    pub amount: Money,
    pub status: OrderStatus,
    /// PAID: the payment that settled it.
    pub pay_no: Option<String>,
    /// PAYING: the payment it waits for.
    pub paying_pay_no: Option<String>,
    /// When its pay time runs out (the channel order is created to stop taking money then).
    pub expires_at: OffsetDateTime,
    /// Its pay time has run out.
    pub expired: bool,
    /// The transaction's clock (one `now()` for everything it writes).
    pub now: OffsetDateTime,
}

impl OrderRow {
    /// What `domain::order::check_payable` decides on.
    pub fn facts(&self) -> OrderFacts<'_> {
        OrderFacts {
            user_id: self.user_id,
            status: self.status,
            amount: self.amount,
            expired: self.expired,
            pay_no: self.pay_no.as_deref(),
        }
    }

    /// Refuses a change of state the order's life does not have (`OrderStatus::can_become`),
    /// before it is written: the callers decide under the order's lock, and a wrong decision
    /// must roll back rather than commit.
    pub fn check_becomes(&self, next: OrderStatus) -> Result<()> {
        let now = self.status;
        if now.can_become(next) {
            Ok(())
        } else {
            Err(Error::Invariant(format!(
                "order {} cannot go from {} to {}",
                self.order_no,
                now.as_str(),
                next.as_str()
            )))
        }
    }

    /// Whether the order waits for exactly this payment.
    pub fn is_paying_with(&self, pay_no: &str) -> bool {
        self.status == OrderStatus::Paying && self.paying_pay_no.as_deref() == Some(pay_no)
    }
}

const ORDER_COLUMNS: &str = "order_no, user_id, goods_id, kind, num, amount, status, pay_no, paying_pay_no,
                             expires_at, expires_at <= now() AS expired, now() AS now";

/// Locks these orders (`FOR UPDATE`, in order_no order, so two lockers never deadlock on them)
/// and reads them as they are once the locks are granted. Every transaction that changes an
/// order or its payments locks the order first, with this, and its payments after: one lock
/// order everywhere, so settling, paying and expiring never deadlock on each other.
pub async fn lock(conn: &mut PgConnection, order_nos: &[&str]) -> Result<Vec<OrderRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE order_no = ANY($1) ORDER BY order_no FOR UPDATE"
    ))
    .bind(order_nos)
    .fetch_all(conn)
    .await?)
}

/// `lock` for one order.
pub async fn lock_one(conn: &mut PgConnection, order_no: &str) -> Result<Option<OrderRow>> {
    Ok(lock(conn, &[order_no]).await?.pop())
}

/// An order read without a lock, and for a paid one the pay request that paid it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SeenOrder {
    #[sqlx(flatten)]
    pub order: OrderRow,
    pub paid_by: Option<uuid::Uuid>,
}

/// These orders as they are now, unlocked: for checks worth making before expensive work, which
/// the locked transaction makes again.
pub async fn read(pool: &PgPool, order_nos: &[&str]) -> Result<Vec<SeenOrder>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS}, (SELECT p.request_id FROM payments p WHERE p.pay_no = orders.pay_no) AS paid_by
         FROM orders WHERE order_no = ANY($1)"
    ))
    .bind(order_nos)
    .fetch_all(pool)
    .await?)
}

/// A freshly created order.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NewOrder {
    pub order_no: String,
    pub amount: Money,
    pub expires_at: OffsetDateTime,
}

/// Why an order could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateOrderError {
    /// No goods with that id.
    #[error("no such goods")]
    GoodsNotFound,
    /// The token's user does not exist (any more).
    #[error("no such user")]
    UserNotFound,
    /// price × num does not fit NUMERIC(12,2).
    #[error("order amount too large")]
    TooLarge,
    #[error(transparent)]
    Db(#[from] Error),
}

/// Creates an UNPAID order of `num` × the goods' price, payable for `ttl`.
pub async fn create_order(
    pool: &PgPool,
    user_id: i64,
    goods_id: i64,
    num: i32,
    ttl: Duration,
) -> Result<NewOrder, CreateOrderError> {
    // The order and its expiry check, together: the check waits in pay.timeout.wait for the
    // order's pay time, then closes it if it is still unpaid.
    let mut tx = pool.begin().await.map_err(Error::from)?;
    let created: Result<Option<NewOrder>, sqlx::Error> = sqlx::query_as(
        "INSERT INTO orders (order_no, user_id, goods_id, kind, num, amount, expires_at)
         SELECT 'ORD' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD') || lpad(nextval('order_no_seq')::text, 10, '0'),
                $1, g.id, g.kind, $3, g.price * $3, now() + make_interval(secs => $4)
         FROM goods g WHERE g.id = $2
         RETURNING order_no, amount, expires_at",
    )
    .bind(user_id)
    .bind(goods_id)
    .bind(num)
    .bind(ttl.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await;
    let order = match created {
        Ok(Some(order)) => order,
        Ok(None) => return Err(CreateOrderError::GoodsNotFound),
        // 22003 numeric_value_out_of_range
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("22003") => {
            return Err(CreateOrderError::TooLarge);
        }
        // 23503 foreign_key_violation: the only reference not checked by the SELECT is the user
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23503") => {
            return Err(CreateOrderError::UserNotFound);
        }
        Err(e) => return Err(Error::from(e).into()),
    };
    let due = PayTimeoutDue { order_no: order.order_no.clone() };
    outbox::enqueue_all(&mut tx, &[Outgoing { delay: Some(ttl), ..Outgoing::new(&due) }]).await?;
    tx.commit().await.map_err(Error::from)?;
    Ok(order)
}

/// One payment of an order (or one part of a mixed payment), as the status endpoint lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PaymentDetail {
    pub pay_no: String,
    pub method: PayMethod,
    /// Yuan.
    pub amount: Money,
    /// In the asset's unit: points for integral.
    pub asset_amount: Money,
    pub status: PaymentStatus,
    /// The mixed payment it is a part of.
    pub mixed_no: Option<String>,
    /// The channel's number of the payment (WeChat's transaction_id, on the payer's bill).
    pub third_party_no: Option<String>,
}

/// An order and its payments, as its owner may see them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderView {
    pub order_no: String,
    pub user_id: i64,
    pub goods_id: i64,
    pub kind: GoodsKind,
    pub num: i32,
    pub status: OrderStatus,
    pub amount: Money,
    pub pay_type: Option<PayType>,
    pub pay_no: Option<String>,
    pub paid_at: Option<OffsetDateTime>,
    pub expires_at: OffsetDateTime,
    /// Yuan given back by refunds.
    pub refunded: Money,
    pub created_at: OffsetDateTime,
    #[sqlx(skip)]
    pub payments: Vec<PaymentDetail>,
}

/// The order with its payments, if it exists and belongs to `user_id` (someone else's order
/// is indistinguishable from a missing one).
pub async fn find_for_user(pool: &PgPool, order_no: &str, user_id: i64) -> Result<Option<OrderView>> {
    find_where(pool, order_no, Some(user_id)).await
}

/// The order with its payments, whoever's it is (operators).
pub async fn find(pool: &PgPool, order_no: &str) -> Result<Option<OrderView>> {
    find_where(pool, order_no, None).await
}

async fn find_where(pool: &PgPool, order_no: &str, user_id: Option<i64>) -> Result<Option<OrderView>> {
    let view: Option<OrderView> = sqlx::query_as(
        "SELECT order_no, user_id, goods_id, kind, num, status, amount, pay_type, pay_no, paid_at, expires_at, refunded,
                created_at
         FROM orders WHERE order_no = $1 AND ($2::bigint IS NULL OR user_id = $2)",
    )
    .bind(order_no)
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    let Some(mut view) = view else {
        return Ok(None);
    };
    view.payments = sqlx::query_as(
        "SELECT pay_no, method, amount, asset_amount, status, mixed_no, third_party_no
             FROM payments WHERE order_no = $1 ORDER BY id",
    )
    .bind(&view.order_no)
    .fetch_all(pool)
    .await?;
    Ok(Some(view))
}

/// Creates `count` UNPAID orders of one goods for a user in one statement, numbered
/// `<prefix>0000000001`… (benchmark seeding). Returns their numbers in order.
pub async fn create_bulk(
    pool: &PgPool,
    prefix: &str,
    user_id: i64,
    goods_id: i64,
    count: i64,
    ttl: Duration,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "INSERT INTO orders (order_no, user_id, goods_id, kind, num, amount, expires_at)
         SELECT $1 || lpad(n::text, 10, '0'), $2, g.id, g.kind, 1, g.price, now() + make_interval(secs => $5)
         FROM goods g, generate_series(1, $4) AS n WHERE g.id = $3
         ORDER BY n
         RETURNING order_no",
    )
    .bind(prefix)
    .bind(user_id)
    .bind(goods_id)
    .bind(count)
    .bind(ttl.as_secs_f64())
    .fetch_all(pool)
    .await?)
}
