//! The error codes of the HTTP contract (seed 000/001 plus the fleet's own), shared by the
//! ingress that answers them and the workers that decide them.

use serde::{Deserialize, Serialize};

/// A machine-readable outcome code; `SUCCESS` for a success, one of the rest for a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    Success,
    /// Not enough balance, integral or money2 (seed 001 `NOTENOUGH`).
    #[serde(rename = "NOTENOUGH")]
    NotEnough,
    /// A signature did not verify (seed 001 `SIGNERROR`).
    #[serde(rename = "SIGNERROR")]
    SignError,
    /// The order is already paid (seed 001 `ORDERPAID`).
    #[serde(rename = "ORDERPAID")]
    OrderPaid,
    /// The order is closed or its pay time ran out.
    #[serde(rename = "ORDERCLOSED")]
    OrderClosed,
    /// A WeChat payment of the order is waiting for the payer: another method would pay twice.
    OrderPaying,
    PasswordWrong,
    PasswordLocked,
    /// The user has not set a pay password yet.
    PasswordNotSet,
    /// The amount sent is not the order's amount.
    AmountMismatch,
    /// The SMS code is wrong, used or expired.
    SmsCodeInvalid,
    /// Too many requests (or pay-password checks) in a short time; try again later.
    RateLimited,
    /// This payment method is switched off (`pay.<method>.enabled`).
    MethodDisabled,
    /// The payment would take the user past the day's balance-pay limit
    /// (`pay.balance.max_daily_amount`, per calendar day in Asia/Shanghai).
    DailyLimit,
    Validation,
    /// The same idempotency key (a refund_no) sent again with another body.
    IdempotencyConflict,
    Unauthorized,
    /// A valid token that may not use this route (a user's on `/admin/v1/…`).
    Forbidden,
    NotFound,
    /// The payment could not be taken right now; nothing was charged.
    #[serde(rename = "SYSTEMERROR")]
    SystemError,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Success => "SUCCESS",
            Code::NotEnough => "NOTENOUGH",
            Code::SignError => "SIGNERROR",
            Code::OrderPaid => "ORDERPAID",
            Code::OrderClosed => "ORDERCLOSED",
            Code::OrderPaying => "ORDER_PAYING",
            Code::PasswordWrong => "PASSWORD_WRONG",
            Code::PasswordLocked => "PASSWORD_LOCKED",
            Code::PasswordNotSet => "PASSWORD_NOT_SET",
            Code::AmountMismatch => "AMOUNT_MISMATCH",
            Code::SmsCodeInvalid => "SMS_CODE_INVALID",
            Code::RateLimited => "RATE_LIMITED",
            Code::MethodDisabled => "METHOD_DISABLED",
            Code::DailyLimit => "DAILY_LIMIT",
            Code::Validation => "VALIDATION",
            Code::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Forbidden => "FORBIDDEN",
            Code::NotFound => "NOT_FOUND",
            Code::SystemError => "SYSTEMERROR",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_are_the_contract_names() {
        for code in [
            Code::Success,
            Code::NotEnough,
            Code::SignError,
            Code::OrderPaid,
            Code::OrderClosed,
            Code::OrderPaying,
            Code::PasswordWrong,
            Code::PasswordLocked,
            Code::PasswordNotSet,
            Code::AmountMismatch,
            Code::SmsCodeInvalid,
            Code::RateLimited,
            Code::MethodDisabled,
            Code::DailyLimit,
            Code::Validation,
            Code::IdempotencyConflict,
            Code::Unauthorized,
            Code::Forbidden,
            Code::NotFound,
            Code::SystemError,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
