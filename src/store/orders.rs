//! Orders: created by the ingress at the goods' price, paid by the pay-worker, read back for
//! the status endpoint.

use std::time::Duration;

use rust_decimal::Decimal;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::domain::{Money, OrderStatus, PayMethod};

/// A freshly created order.
#[derive(Debug, Clone)]
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
    Db(#[from] sqlx::Error),
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
    let row: Result<Option<(String, Decimal, OffsetDateTime)>, sqlx::Error> = sqlx::query_as(
        "WITH o AS (
             INSERT INTO orders (order_no, user_id, goods_id, kind, num, amount, expires_at)
             SELECT 'ORD' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD') || lpad(nextval('order_no_seq')::text, 10, '0'),
                    $1, g.id, g.kind, $3, g.price * $3, now() + make_interval(secs => $4)
             FROM goods g WHERE g.id = $2
             RETURNING order_no, amount, expires_at
         ), check_due AS (
             INSERT INTO outbox (message_id, queue, kind, payload, delay_ms)
             SELECT gen_random_uuid(), $5, 'pay_timeout_due', jsonb_build_object('order_no', o.order_no), $6 FROM o
         )
         SELECT order_no, amount, expires_at FROM o",
    )
    .bind(user_id)
    .bind(goods_id)
    .bind(num)
    .bind(ttl.as_secs_f64())
    .bind(crate::mq::topology::PAY_TIMEOUT_WAIT)
    .bind(ttl.as_millis() as i64)
    .fetch_optional(pool)
    .await;
    match row {
        Ok(Some((order_no, amount, expires_at))) => Ok(NewOrder {
            order_no,
            amount: Money::from_decimal(amount).map_err(|_| CreateOrderError::TooLarge)?,
            expires_at,
        }),
        Ok(None) => Err(CreateOrderError::GoodsNotFound),
        // 22003 numeric_value_out_of_range
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("22003") => Err(CreateOrderError::TooLarge),
        // 23503 foreign_key_violation: the only reference not checked by the SELECT is the user
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23503") => Err(CreateOrderError::UserNotFound),
        Err(e) => Err(e.into()),
    }
}

/// One payment of an order, as the status endpoint lists it.
#[derive(Debug, Clone)]
pub struct PaymentDetail {
    pub method: PayMethod,
    pub amount: Money,
    pub status: String,
}

/// An order and its payments, as its owner may see them.
#[derive(Debug, Clone)]
pub struct OrderView {
    pub order_no: String,
    pub status: OrderStatus,
    pub amount: Money,
    pub pay_method: Option<PayMethod>,
    pub pay_no: Option<String>,
    pub paid_at: Option<OffsetDateTime>,
    pub expires_at: OffsetDateTime,
    pub payments: Vec<PaymentDetail>,
}

type OrderRow = (String, String, Decimal, Option<String>, Option<String>, Option<OffsetDateTime>, OffsetDateTime);

/// The order with its payments, if it exists and belongs to `user_id` (someone else's order
/// is indistinguishable from a missing one).
pub async fn find_for_user(pool: &PgPool, order_no: &str, user_id: i64) -> Result<Option<OrderView>, sqlx::Error> {
    let row: Option<OrderRow> = sqlx::query_as(
        "SELECT order_no, status, amount, pay_type, pay_no, paid_at, expires_at
         FROM orders WHERE order_no = $1 AND user_id = $2",
    )
    .bind(order_no)
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    let Some((order_no, status, amount, pay_type, pay_no, paid_at, expires_at)) = row else {
        return Ok(None);
    };
    let payments: Vec<(String, Decimal, String)> =
        sqlx::query_as("SELECT method, amount, status FROM payments WHERE order_no = $1 ORDER BY id")
            .bind(&order_no)
            .fetch_all(pool)
            .await?;
    Ok(Some(OrderView {
        order_no,
        status: OrderStatus::parse(&status).expect("orders.status CHECK"),
        amount: Money::from_decimal(amount).expect("NUMERIC(12,2)"),
        pay_method: pay_type.as_deref().and_then(PayMethod::parse),
        pay_no,
        paid_at,
        expires_at,
        payments: payments
            .into_iter()
            .map(|(method, amount, status)| PaymentDetail {
                method: PayMethod::parse(&method).expect("payments.method CHECK"),
                amount: Money::from_decimal(amount).expect("NUMERIC(12,2)"),
                status,
            })
            .collect(),
    }))
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
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
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
    .await
}
