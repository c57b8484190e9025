//! `ApiError`: every refusal the HTTP API answers, in seed 000's envelope
//! `{"status":0,"msg":…,"code":…,"data":…}` with the HTTP status that fits the code. Internal
//! causes are logged with the request id and never shown to the client.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::domain::Code;
use crate::domain::payment::Refusal;

#[derive(Debug)]
pub struct ApiError {
    code: Code,
    status: StatusCode,
    message: String,
    data: Value,
    /// RATE_LIMITED: sent as `Retry-After`, in seconds.
    retry_after_secs: Option<u64>,
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError { code, status: status_of(code), message: message.into(), data: Value::Null, retry_after_secs: None }
    }

    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::Validation, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::Unauthorized, message)
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(Code::NotFound, format!("{what} not found"))
    }

    /// A dependency is down: nothing was done, the client may try again.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::warn!(cause = %cause, "answering 503");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            ..ApiError::new(
                Code::SystemError,
                "the payment service is temporarily unavailable; nothing was charged, please try again",
            )
        }
    }

    /// The request may or may not have been taken (no publisher confirm, an unreadable reply):
    /// the client must look before paying again.
    pub fn uncertain(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(cause = %cause, "answering 503, outcome unknown");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            ..ApiError::new(
                Code::SystemError,
                "the payment service could not confirm your request; it may still be processed, so check the order's status before paying again",
            )
        }
    }

    /// A bug or an unexpected failure: logged in full, opaque to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(cause = %cause, "internal error");
        ApiError::new(Code::SystemError, "internal error; nothing was charged")
    }

    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    /// Too many requests: try again after `wait`.
    pub fn rate_limited(what: &str, wait: std::time::Duration) -> ApiError {
        let secs = wait.as_secs().max(1);
        ApiError {
            retry_after_secs: Some(secs),
            ..ApiError::new(Code::RateLimited, format!("too many {what} requests; try again in {secs} s"))
        }
        .with_data(serde_json::json!({ "retry_after": secs }))
    }

    pub fn with_data(mut self, data: Value) -> ApiError {
        self.data = data;
        self
    }

    pub fn code(&self) -> Code {
        self.code
    }
}

/// The HTTP status of each code: 4xx says what the client can fix, 5xx that it should retry.
fn status_of(code: Code) -> StatusCode {
    match code {
        Code::Success => StatusCode::OK,
        Code::Validation | Code::AmountMismatch | Code::SmsCodeInvalid => StatusCode::UNPROCESSABLE_ENTITY,
        Code::Unauthorized | Code::SignError => StatusCode::UNAUTHORIZED,
        Code::PasswordWrong | Code::PasswordNotSet | Code::MethodDisabled | Code::Forbidden => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::OrderPaid
        | Code::OrderClosed
        | Code::OrderPaying
        | Code::NotEnough
        | Code::DailyLimit
        | Code::IdempotencyConflict => StatusCode::CONFLICT,
        Code::PasswordLocked | Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Code::SystemError => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        let mut data = serde_json::Map::new();
        if let Some(pay_no) = r.pay_no {
            data.insert("pay_no".into(), pay_no.into());
        }
        if let Some(tries_left) = r.tries_left {
            data.insert("tries_left".into(), tries_left.into());
        }
        if let Some(secs) = r.retry_after_secs {
            data.insert("retry_after".into(), secs.into());
        }
        let error = ApiError { retry_after_secs: r.retry_after_secs, ..ApiError::new(r.code, r.message) };
        if data.is_empty() { error } else { error.with_data(Value::Object(data)) }
    }
}

/// Malformed JSON is the client's to fix: 400 for syntax, 422 for the wrong shape.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let status = match &rejection {
            JsonRejection::JsonSyntaxError(_) | JsonRejection::MissingJsonContentType(_) => StatusCode::BAD_REQUEST,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::validation(rejection.body_text()).with_status(status)
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> ApiError {
        if e.is_unavailable() { ApiError::unavailable(&e) } else { ApiError::internal(&e) }
    }
}

impl From<crate::cache::CacheError> for ApiError {
    fn from(e: crate::cache::CacheError) -> ApiError {
        match e {
            crate::cache::CacheError::Unavailable(_) => ApiError::unavailable(&e),
            crate::cache::CacheError::Command(_) => ApiError::internal(&e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "status": 0, "msg": self.message, "code": self.code.as_str(), "data": self.data });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}
