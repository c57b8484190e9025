//! The HTTP ingress (axum only): authenticates and validates requests, publishes pay requests
//! to the broker and waits for the worker's answer, and serves reads straight from PostgreSQL.

mod admin;
mod error;
mod extract;
mod fields;
pub mod health;
mod limits;
mod mixed_pay;
mod orders;
mod pay_call;
mod payment;
mod respond;
mod user;
mod wechat_notify;
mod wechat_pay;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use error::{ApiError, Result};

use crate::auth::TokenKeys;
use crate::cache::Cache;
use crate::config::{PaySettings, RateLimitSettings, Settings};
use crate::mq::rpc::RpcClient;
use crate::password::{PasswordHasher, Sealer};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub db: crate::store::Pool,
    pub cache: Cache,
    pub rpc: RpcClient,
    pub tokens: Arc<TokenKeys>,
    pub passwords: PasswordHasher,
    /// Seals pay passwords for their trip through the broker.
    pub sealer: Sealer,
    pub pay: Arc<PaySettings>,
    /// How long a pay request waits for the worker before answering 202.
    pub reply_timeout: Duration,
    /// None when WeChat Pay is not configured.
    pub wechat: Option<Arc<crate::wechat::Wechat>>,
    /// A WeChat payment waiting longer than this is queried when its status is read.
    pub wechat_query_after: Duration,
    pub rate_limit: Arc<RateLimitSettings>,
}

/// The id of one HTTP request: logged on every line, returned in `x-request-id`, and used as
/// the pay request's message id, so one id follows a payment from HTTP to the ledger.
#[derive(Clone, Copy, Debug)]
pub struct RequestId(pub uuid::Uuid);

impl AppState {
    /// Builds the state from settings: secrets resolved, connections lazy.
    pub fn from_settings(settings: &Settings, stop: CancellationToken) -> anyhow::Result<AppState> {
        Ok(AppState {
            db: crate::store::pool(&settings.database)?,
            cache: Cache::new(&settings.redis)?,
            rpc: RpcClient::start(settings.broker.clone(), stop),
            tokens: Arc::new(settings.auth.token_keys()?),
            passwords: PasswordHasher::new(settings.pay.password_pepper()?, settings.pay.bcrypt_cost),
            sealer: Sealer::new(settings.pay.seal_keys()?),
            pay: Arc::new(settings.pay.clone()),
            reply_timeout: settings.ingress.reply_timeout(),
            wechat: crate::wechat::Wechat::from_settings_optional(&settings.wechat)?.map(Arc::new),
            wechat_query_after: Duration::from_secs(settings.wechat.query_after_secs),
            rate_limit: Arc::new(settings.rate_limit.clone()),
        })
    }
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .merge(orders::router())
        .merge(payment::router())
        .merge(admin::router())
        .merge(mixed_pay::router())
        .merge(user::router())
        .merge(wechat_pay::router())
        .merge(wechat_notify::router())
        .merge(health::router())
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(crate::domain::Code::Validation, "method not allowed on this route")
                .with_status(axum::http::StatusCode::METHOD_NOT_ALLOWED)
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(with_request_id))
        .with_state(state)
}

/// Serves the API on `listener` until `stop`, then drains in-flight requests.
pub async fn run(settings: Settings, listener: TcpListener, stop: CancellationToken) -> anyhow::Result<()> {
    let state = AppState::from_settings(&settings, stop.clone())?;
    let app = router(state, settings.ingress.max_body_bytes);
    let addr = listener.local_addr()?;
    // Tests and `payctl demo` read this line to learn the port.
    crate::telemetry::announce(format_args!("payfleet-ingress listening on http://{addr}"));
    tracing::info!(%addr, "listening");
    // The peer's address, for the per-address rate limits.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await?;
    Ok(())
}

async fn with_request_id(mut request: Request, next: Next) -> Response {
    let id = RequestId(uuid::Uuid::now_v7());
    request.extensions_mut().insert(id);
    let span =
        tracing::info_span!("http", request_id = %id.0, method = %request.method(), path = %request.uri().path());
    let started = std::time::Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "answered"
        );
    });
    response
        .headers_mut()
        .insert("x-request-id", HeaderValue::from_str(&id.0.to_string()).expect("a uuid is a header value"));
    response
}
