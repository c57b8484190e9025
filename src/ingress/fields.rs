//! The fields of request bodies, checked once for every route that takes them: order numbers
//! and amounts.

use super::{ApiError, AppState, Result};
use crate::domain::{Code, Money, MoneyError};

/// An amount field of a pay request: positive, two decimals at most, within `pay.max_amount`.
pub fn payment_amount(app: &AppState, field: &str, raw: &str) -> Result<Money> {
    let amount = parse_money(field, raw)?;
    if amount.is_zero() {
        return Err(ApiError::validation(format!("{field} must be above zero")));
    }
    if amount > app.pay.max_amount {
        return Err(ApiError::validation(format!("{field} exceeds the limit of {} per payment", app.pay.max_amount)));
    }
    Ok(amount)
}

pub fn parse_money(field: &str, raw: &str) -> Result<Money> {
    Money::parse(raw).map_err(|e| {
        ApiError::validation(match e {
            MoneyError::Malformed => format!("{field} must be an amount like \"10.00\""),
            MoneyError::TooPrecise => format!("{field} has more than two decimals"),
            MoneyError::Negative => format!("{field} must not be negative"),
            MoneyError::TooLarge => format!("{field} is too large"),
        })
    })
}

/// Order numbers are short and plain; anything else cannot name an order.
pub fn check_order_no(order_no: &str) -> Result<()> {
    if order_no.is_empty() || order_no.len() > 64 || !order_no.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::new(Code::Validation, "order_no must be 1 to 64 letters or digits"));
    }
    Ok(())
}
