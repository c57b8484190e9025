//! Request rate limits per user and per client address (`rate_limit.*`), counted in Redis so
//! that every ingress copy shares them. A request over a limit is answered 429 `RATE_LIMITED`
//! with `Retry-After`. Redis being away lets requests through (logged): the limits guard
//! against abuse, and the pay path has its own guards in the pay-worker.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use super::{ApiError, AppState, Result};
use crate::cache::Limit;
use crate::config::RateLimit;

/// The kinds of request that are limited, each with its own budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Balance, integral and money2 pay.
    Pay,
    /// WeChat create and retry.
    Create,
    /// Creating orders.
    Orders,
    /// Reading a payment's status.
    Status,
    /// Setting the pay password with an SMS code.
    SmsCode,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pay => "pay",
            Kind::Create => "create",
            Kind::Orders => "orders",
            Kind::Status => "status",
            Kind::SmsCode => "sms_code",
        }
    }
}

/// The client's address: the connection's peer or, with `rate_limit.trust_forwarded_for`
/// (behind one proxy that appends the address it saw to `X-Forwarded-For`), the header's last
/// entry. Never the first: a client can put any address there.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        let forwarded = || {
            let value = parts.headers.get("x-forwarded-for")?.to_str().ok()?;
            value.rsplit(',').next()?.trim().parse().ok()
        };
        let peer = || parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(ClientIp(if app.rate_limit.trust_forwarded_for { forwarded().or_else(peer) } else { peer() }))
    }
}

/// Counts this request against its kind's limits for the user, then (if the user's allows it)
/// the address.
pub async fn check(app: &AppState, kind: Kind, user_id: i64, client: ClientIp) -> Result<()> {
    let settings = &app.rate_limit;
    let limit: RateLimit = match kind {
        Kind::Pay => settings.pay,
        Kind::Create => settings.create,
        Kind::Orders => settings.orders,
        Kind::Status => settings.status,
        Kind::SmsCode => settings.sms_code,
    };
    let name = kind.name();
    let mut limits = Vec::with_capacity(2);
    if limit.per_user > 0 {
        limits.push(Limit { subject: format!("{name}:user:{user_id}"), limit: limit.per_user });
    }
    if let (true, Some(ip)) = (limit.per_ip > 0, client.0) {
        limits.push(Limit { subject: format!("{name}:ip:{ip}"), limit: limit.per_ip });
    }
    let window = std::time::Duration::from_secs(settings.window_secs);
    match app.cache.hit_limits(&limits, window).await {
        Ok(None) => Ok(()),
        Ok(Some(wait)) => {
            tracing::info!(user_id, ip = ?client.0, kind = name, "rate limited");
            Err(ApiError::rate_limited(name, wait))
        }
        Err(e) => {
            tracing::warn!(error = %e, kind = name, "rate limits unavailable; letting the request through");
            Ok(())
        }
    }
}
