//! Goods and their prizes: what an order buys, at the price the server (never the client)
//! multiplies, and what a paid lottery order draws from.

use super::Result;
use sqlx::PgPool;

use crate::domain::lottery::PrizeSpec;
use crate::domain::{GoodsKind, Money};

/// Creates goods with their prizes (ichiban: the count is the quantity in the box; infinite: the
/// weight), in one transaction. The caller checked the prizes (`domain::lottery::check_prizes`).
pub async fn create_goods(
    pool: &PgPool,
    kind: GoodsKind,
    name: &str,
    price: Money,
    prizes: &[PrizeSpec],
) -> Result<i64> {
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar("INSERT INTO goods (kind, name, price) VALUES ($1, $2, $3) RETURNING id")
        .bind(kind)
        .bind(name)
        .bind(price)
        .fetch_one(&mut *tx)
        .await?;
    let names: Vec<&str> = prizes.iter().map(|p| p.name.as_str()).collect();
    let counts: Vec<i32> = prizes.iter().map(|p| p.count as i32).collect();
    sqlx::query(
        "INSERT INTO prizes (goods_id, name, quantity, remaining, weight)
         SELECT $1, p.name,
                CASE WHEN $4 = 'ichiban' THEN p.n END, CASE WHEN $4 = 'ichiban' THEN p.n END,
                CASE WHEN $4 = 'infinite' THEN p.n END
         FROM unnest($2::text[], $3::int[]) WITH ORDINALITY AS p (name, n, i) ORDER BY p.i",
    )
    .bind(id)
    .bind(&names)
    .bind(&counts)
    .bind(kind)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// A prize as operators and tests read it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Prize {
    pub id: i64,
    pub name: String,
    /// Ichiban: what the box held, and what is left.
    pub quantity: Option<i32>,
    pub remaining: Option<i32>,
    /// Infinite: its weight.
    pub weight: Option<i32>,
}

/// The goods' prizes, in the order they were created.
pub async fn prizes(pool: &PgPool, goods_id: i64) -> Result<Vec<Prize>> {
    Ok(sqlx::query_as("SELECT id, name, quantity, remaining, weight FROM prizes WHERE goods_id = $1 ORDER BY id")
        .bind(goods_id)
        .fetch_all(pool)
        .await?)
}
