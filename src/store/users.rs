//! Users and their three assets (money, integral, money2) and pay password hash.

use super::Result;
use sqlx::PgPool;

use crate::domain::Money;

/// A user's assets as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Balances {
    pub money: Money,
    pub integral: Money,
    pub money2: Money,
}

/// Inserts a user with opening balances and, optionally, a pay password hash.
pub async fn create_user(
    pool: &PgPool,
    nickname: &str,
    opening: &Balances,
    pay_password_hash: Option<&str>,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO users (nickname, money, integral, money2, pay_password_hash) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(nickname)
    .bind(opening.money.as_decimal())
    .bind(opening.integral.as_decimal())
    .bind(opening.money2.as_decimal())
    .bind(pay_password_hash)
    .fetch_one(pool)
    .await?)
}

pub async fn exists(pool: &PgPool, user_id: i64) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)").bind(user_id).fetch_one(pool).await?)
}

pub async fn balances(pool: &PgPool, user_id: i64) -> Result<Option<Balances>> {
    Ok(sqlx::query_as("SELECT money, integral, money2 FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(pool)
        .await?)
}

/// Sets (or replaces) the pay password hash; false when the user does not exist.
pub async fn set_pay_password_hash(pool: &PgPool, user_id: i64, hash: &str) -> Result<bool> {
    let done = sqlx::query("UPDATE users SET pay_password_hash = $2 WHERE id = $1")
        .bind(user_id)
        .bind(hash)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The pay password hash of each of these users that has one.
pub async fn pay_password_hashes(pool: &PgPool, user_ids: &[i64]) -> Result<Vec<(i64, String)>> {
    Ok(sqlx::query_as("SELECT id, pay_password_hash FROM users WHERE id = ANY($1) AND pay_password_hash IS NOT NULL")
        .bind(user_ids)
        .fetch_all(pool)
        .await?)
}
