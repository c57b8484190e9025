//! The success answers every handler shares: the seed's envelope, 202 PROCESSING for a pay
//! request still being settled, and times as seed 000 writes them. (Failures are `ApiError`.)

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::domain::Code;

/// A success in the seed's envelope.
pub fn ok(message: &str, data: Value) -> Response {
    Json(json!({ "status": 1, "msg": message, "code": Code::Success.as_str(), "data": data })).into_response()
}

/// 202: the request is safely queued but not settled yet.
pub fn processing(order_no: &str) -> Response {
    let body = json!({
        "status": 1,
        "msg": "payment accepted and processing; poll status_url for the result",
        "code": "PROCESSING",
        "data": {
            "order_no": order_no,
            "pay_status": "PROCESSING",
            "status_url": format!("/api/v1/payment/{order_no}/status"),
        },
    });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// `2024-01-01T12:00:00Z`, to the second, as seed 000 shows it.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).expect("0 is a valid nanosecond");
    t.format(&time::format_description::well_known::Rfc3339).expect("a UTC time formats as RFC 3339")
}
