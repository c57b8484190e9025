//! /healthz (the process is up) and /readyz (PostgreSQL, the broker and Redis all answer), for
//! the ingress and, through `serve`, for the workers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::cache::Cache;
use crate::store::Pool;

/// What a readiness check looks at.
#[derive(Clone)]
pub struct Probe {
    pub db: Pool,
    pub cache: Cache,
    /// Whether the binary holds a live broker session.
    pub broker: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Probe {
    /// 200 when every dependency answers within a second, else 503 naming the ones that did not.
    pub async fn readiness(&self) -> Response {
        let limit = Duration::from_secs(1);
        let (db, cache) = tokio::join!(
            tokio::time::timeout(limit, crate::store::ping(&self.db)),
            tokio::time::timeout(limit, self.cache.ping())
        );
        let database = matches!(db, Ok(Ok(())));
        let redis = matches!(cache, Ok(Ok(())));
        let broker = (self.broker)();
        let ready = database && redis && broker;
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        let body = json!({ "ready": ready, "database": database, "broker": broker, "redis": redis });
        (status, Json(body)).into_response()
    }
}

impl From<&AppState> for Probe {
    fn from(state: &AppState) -> Probe {
        let rpc = state.rpc.clone();
        Probe { db: state.db.clone(), cache: state.cache.clone(), broker: Arc::new(move || rpc.is_connected()) }
    }
}

async fn healthz() -> Response {
    Json(json!({ "alive": true })).into_response()
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(|State(state): State<AppState>| async move { Probe::from(&state).readiness().await }))
}

/// Serves /healthz and /readyz for a worker until `stop`.
pub async fn serve(addr: SocketAddr, probe: Probe, stop: CancellationToken) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "health endpoint listening");
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(move || async move { probe.readiness().await }));
    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
}
