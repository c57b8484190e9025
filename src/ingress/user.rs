//! POST /api/v1/user/payment-password: set or change the pay password, proven by an SMS code.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use serde::Deserialize;
use serde_json::Value;

use super::extract::{AuthUser, Json};
use super::limits::{self, ClientIp, Kind};
use super::respond::ok;
use super::{ApiError, AppState, Result};
use crate::cache::{PAY_PASSWORD_PURPOSE, SmsCheck};
use crate::domain::Code;
use crate::password::is_well_formed;

#[derive(Deserialize)]
struct SetPayPassword {
    password: String,
    confirm_password: String,
    sms_code: String,
}

async fn set_pay_password(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    client: ClientIp,
    Json(body): Json<SetPayPassword>,
) -> Result<Response> {
    limits::check(&app, Kind::SmsCode, user_id, client).await?;
    if !is_well_formed(&body.password) {
        return Err(ApiError::validation("password must be exactly 6 digits"));
    }
    if body.password != body.confirm_password {
        return Err(ApiError::validation("confirm_password does not match password"));
    }
    if !is_well_formed(&body.sms_code) {
        return Err(ApiError::validation("sms_code must be exactly 6 digits"));
    }
    if !crate::store::users::exists(&app.db, user_id).await? {
        return Err(ApiError::not_found("user"));
    }
    let ttl = std::time::Duration::from_secs(app.pay.sms_code_ttl_secs);
    match app
        .cache
        .check_sms_code(PAY_PASSWORD_PURPOSE, user_id, &body.sms_code, app.pay.sms_code_max_attempts, ttl)
        .await?
    {
        SmsCheck::Accepted => {}
        SmsCheck::Wrong => return Err(ApiError::new(Code::SmsCodeInvalid, "wrong SMS code")),
        SmsCheck::Missing => {
            return Err(ApiError::new(
                Code::SmsCodeInvalid,
                "no valid SMS code: it expired, was used, or was never sent; request a new one",
            ));
        }
    }
    let hash = app.passwords.hash(&body.password).await.map_err(|e| ApiError::internal(&e))?;
    crate::store::users::set_pay_password_hash(&app.db, user_id, &hash).await?;
    // A new password starts with a clean slate of tries. The password is set either way, so a
    // Redis hiccup here must not answer failure (the SMS code is used up).
    if let Err(e) = app.cache.clear_password_attempts(&[user_id]).await {
        tracing::warn!(error = %e, user_id, "pay password set, but its try counter could not be reset");
    }
    tracing::info!(user_id, "pay password set");
    Ok(ok("pay password set", Value::Null))
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/user/payment-password", post(set_pay_password))
}
