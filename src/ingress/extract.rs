//! Extractors: the authenticated user, the request id, and JSON bodies whose rejections come
//! back in the API's envelope.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::{ApiError, AppState, RequestId};
use crate::auth::Bearer;
use crate::domain::Code;

/// The user a valid `Authorization: Bearer <JWT>` names (an operator's token is refused).
#[derive(Clone, Copy, Debug)]
pub struct AuthUser(pub i64);

/// The operator a valid operator token names (`/admin/v1/…`; a user's token is refused).
#[derive(Clone, Debug)]
pub struct Operator(pub String);

/// Who the request's bearer token names.
fn bearer(parts: &Parts, state: &AppState) -> Result<Bearer, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("Authorization must be \"Bearer <token>\""))?;
    state.tokens.verify(token.trim()).map_err(|e| {
        tracing::debug!(error = %e, "token refused");
        ApiError::unauthorized("invalid or expired token; sign in again")
    })
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match bearer(parts, state)? {
            Bearer::User(user_id) => Ok(AuthUser(user_id)),
            Bearer::Operator(_) => Err(ApiError::unauthorized("an operator token does not act as a user")),
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if !state.tokens.has_operators() {
            return Err(ApiError::new(
                Code::Forbidden,
                "operator routes are off here: set auth.operator_jwt_secret (PAYFLEET__AUTH__OPERATOR_JWT_SECRET)",
            ));
        }
        match bearer(parts, state)? {
            Bearer::Operator(name) => Ok(Operator(name)),
            Bearer::User(_) => Err(ApiError::new(Code::Forbidden, "this route needs an operator token")),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<RequestId>().copied().unwrap_or(RequestId(uuid::Uuid::now_v7())))
    }
}

/// `axum::Json` with its rejections turned into `ApiError` (VALIDATION).
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Json(value))
    }
}
