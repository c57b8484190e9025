//! Goods: what an order buys, with the price the server (never the client) multiplies.

use super::Result;
use sqlx::PgPool;

use crate::domain::{GoodsKind, Money};

pub async fn create_goods(pool: &PgPool, kind: GoodsKind, name: &str, price: Money) -> Result<i64> {
    Ok(sqlx::query_scalar("INSERT INTO goods (kind, name, price) VALUES ($1, $2, $3) RETURNING id")
        .bind(kind.as_str())
        .bind(name)
        .bind(price.as_decimal())
        .fetch_one(pool)
        .await?)
}
