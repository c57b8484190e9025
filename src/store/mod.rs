//! PostgreSQL: the pool, the migrations, and every SQL statement of the fleet, one file per
//! table group. Only this module writes SQL.

mod codec;
pub mod followups;
pub mod goods;
pub mod ledger;
pub mod mixed;
pub mod orders;
pub mod outbox;
pub mod payments;
pub mod refunds;
pub mod users;
pub mod wechat;

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::DatabaseSettings;

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why a database call failed, classified once here so that callers decide on the class (wait,
/// retry, give up) and never look inside a driver error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database cannot be reached now (down, restarting, the pool exhausted): wait and try
    /// again; nothing was changed.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A deadlock, serialization failure or lock wait that timed out: the transaction rolled
    /// back and may be retried as it was.
    #[error("database conflict: {0}")]
    Conflict(#[source] sqlx::Error),
    /// The data breaks a rule the code relies on (a state change the order's life does not
    /// have, a batch that wrote other rows than it locked): rolled back; a bug to investigate.
    #[error("database: {0}")]
    Invariant(String),
    /// The statement failed otherwise (a bug, or data the schema refuses).
    #[error("database: {0}")]
    Failed(#[source] sqlx::Error),
    /// The migrations could not be applied.
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// What every function of `store` answers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        match &e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
                Error::Unavailable(e)
            }
            sqlx::Error::WorkerCrashed => Error::Unavailable(e),
            // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, 08* connection
            sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")) => {
                Error::Unavailable(e)
            }
            // 40001 serialization_failure, 40P01 deadlock_detected, 55P03 lock_not_available
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01" | "55P03")) => {
                Error::Conflict(e)
            }
            _ => Error::Failed(e),
        }
    }
}

impl Error {
    /// The database cannot be reached now.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// The database's error code (SQLSTATE) of a failed statement, for the few callers that turn a
/// constraint into an answer.
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// The pool every binary holds: the one database handle outside this module.
pub type Pool = sqlx::PgPool;

fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions> {
    let options: PgConnectOptions = settings.url.expose_secret().parse()?;
    Ok(options.log_statements(tracing::log::LevelFilter::Trace))
}

/// A pool that connects lazily: a binary starts while PostgreSQL is down and reports
/// not-ready until it answers.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .connect_lazy_with(connect_options(settings)?))
}

pub async fn ping(pool: &PgPool) -> Result<()> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

/// Creates the configured database if it does not exist (payctl migrate, demo, tests).
pub async fn ensure_database(settings: &DatabaseSettings) -> Result<()> {
    let options = connect_options(settings)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = sqlx::PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        let created =
            sqlx::query(&format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""))).execute(&mut admin).await;
        // Two callers racing to create it is fine: the loser sees 42P04 duplicate_database.
        if let Err(e) = created
            && !matches!(sqlstate(&e).as_deref(), Some("42P04" | "23505"))
        {
            return Err(e.into());
        }
    }
    Ok(admin.close().await?)
}

/// Drops a database (test and bench clean-up), disconnecting its sessions.
pub async fn drop_database(settings: &DatabaseSettings) -> Result<()> {
    let options = connect_options(settings)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = sqlx::PgConnection::connect_with(&options.database("postgres")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", name.replace('"', "\"\"")))
        .execute(&mut admin)
        .await?;
    Ok(admin.close().await?)
}

pub async fn migrate(pool: &PgPool) -> Result<()> {
    Ok(MIGRATOR.run(pool).await?)
}

/// Waits until the database answers and has every migration this binary knows, logging what
/// it waits for. False if `stop` came first.
pub async fn wait_for_schema(pool: &PgPool, stop: &tokio_util::sync::CancellationToken) -> bool {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let mut delays = crate::mq::reconnect_backoff();
    loop {
        let applied: Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await;
        let problem = match applied {
            Ok(Some(v)) if v >= latest => return true,
            Ok(v) => format!("the database schema is at {v:?}, this binary needs {latest}: run `payctl migrate`"),
            // 42P01: no migrations table yet
            Err(e) if sqlstate(&e).as_deref() == Some("42P01") => {
                "the database has no schema: run `payctl migrate`".to_owned()
            }
            Err(e) => format!("cannot reach the database: {e}"),
        };
        let delay = delays.next().unwrap_or(std::time::Duration::from_secs(5));
        tracing::warn!(retry_in = ?delay, "{problem}");
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
