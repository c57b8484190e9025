//! Payment methods and the assets they draw on.

use serde::{Deserialize, Serialize};

use super::{Code, Money};

/// How (part of) an order is paid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayMethod {
    Wechat,
    Balance,
    Integral,
    Money2,
}

/// A user's internal asset: the column it lives in and the ledger's name for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Asset {
    Money,
    Integral,
    Money2,
}

/// What one payment method accepts (seed 000's PaymentConfig, `pay.<method>`), the same at the
/// ingress, in the pay-worker, and for every part of a payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodRule {
    pub enabled: bool,
    /// The smallest amount, in yuan, this method pays.
    pub min_amount: Money,
    /// The largest amount, in yuan, this method pays at once.
    pub max_amount: Money,
    /// Balance: the most one user pays with it in a day; a single payment above it can never
    /// pass, so it is refused before any other work (the day's total is the database's).
    pub max_daily_amount: Option<Money>,
}

impl MethodRule {
    /// Whether `method` may pay `amount` yuan: `METHOD_DISABLED`, or `VALIDATION` naming the
    /// bound it is outside.
    pub fn check(&self, method: PayMethod, amount: Money) -> Result<(), Refusal> {
        let name = method.as_str();
        if !self.enabled {
            return Err(Refusal::new(Code::MethodDisabled, format!("{name} payments are switched off")));
        }
        if amount < self.min_amount || amount > self.max_amount {
            return Err(Refusal::new(
                Code::Validation,
                format!("a {name} payment must be between {} and {} yuan", self.min_amount, self.max_amount),
            ));
        }
        if let Some(limit) = self.max_daily_amount.filter(|limit| amount > *limit) {
            return Err(Refusal::new(Code::DailyLimit, format!("{name} payments are limited to {limit} yuan a day")));
        }
        Ok(())
    }
}

/// The rules of paying with integral points (`pay.integral_*`), the same at the ingress and
/// in the pay-worker.
#[derive(Clone, Copy, Debug)]
pub struct IntegralRules {
    /// Points per yuan.
    pub rate: u32,
    /// The fewest points one order may be paid with.
    pub min: Money,
    /// The most points one order may be paid with.
    pub max_per_order: Money,
}

impl IntegralRules {
    /// Whether `points` may pay `yuan`: whole points, within the per-order bounds, worth
    /// exactly the yuan at the rate. The error says which rule, for the payer.
    pub fn check(&self, yuan: Money, points: Money) -> Result<(), String> {
        let IntegralRules { rate, min, max_per_order: max } = *self;
        if points.to_fen() % 100 != 0 {
            return Err("integral_amount must be a whole number of points".into());
        }
        if points < min || points > max {
            return Err(format!("integral_amount must be between {min} and {max} points per order"));
        }
        if yuan.checked_mul(i64::from(rate)) != Some(points) {
            return Err(format!("integral_amount {points} is not money_amount {yuan} at {rate} points per yuan"));
        }
        Ok(())
    }
}

/// Why a payment needs an operator (`payment_alerts.kind`, README "Alerts").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// WeChat reports another amount than the order's: not settled.
    AmountMismatch,
    /// The trade names another appid or mchid than ours: not settled.
    MerchantMismatch,
    /// The trade names no WeChat payment of ours.
    UnknownTrade,
    /// A report WeChat does not stand behind (its signature fails, WeChat has no such trade).
    UnconfirmedReport,
    /// WeChat took the money after the order closed: refunded in full, the order stays closed.
    PaidAfterClose,
    /// WeChat took the money after reporting the trade closed: the order is paid.
    PaidAfterFailure,
    /// A second payment of a paid order: refunded in full.
    DoublePayment,
    /// Paid and refunded at WeChat before it settled here: the order stays unpaid.
    RefundedUnsettled,
    /// A settled payment refunded outside payfleet (the merchant platform).
    RefundedOutside,
    /// A SUCCESS report for a payment WeChat reported refunded before: not settled.
    SuccessAfterRefund,
    /// A refund's money left the merchant but did not reach the payer: see to it at WeChat.
    RefundAbnormal,
    /// WeChat gave a refund up (or refused it): nothing went back; refund again if still owed.
    RefundClosed,
    /// A refund report naming no refund of ours, or another trade or amount than ours.
    UnknownRefund,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::AmountMismatch => "amount_mismatch",
            AlertKind::MerchantMismatch => "merchant_mismatch",
            AlertKind::UnknownTrade => "unknown_trade",
            AlertKind::UnconfirmedReport => "unconfirmed_report",
            AlertKind::PaidAfterClose => "paid_after_close",
            AlertKind::PaidAfterFailure => "paid_after_failure",
            AlertKind::DoublePayment => "double_payment",
            AlertKind::RefundedUnsettled => "refunded_unsettled",
            AlertKind::RefundedOutside => "refunded_outside",
            AlertKind::SuccessAfterRefund => "success_after_refund",
            AlertKind::RefundAbnormal => "refund_abnormal",
            AlertKind::RefundClosed => "refund_closed",
            AlertKind::UnknownRefund => "unknown_refund",
        }
    }
}

/// An alert: its kind, and what an operator reads (which starts with the kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub kind: AlertKind,
    pub detail: String,
}

impl Alert {
    pub fn new(kind: AlertKind, why: impl std::fmt::Display) -> Alert {
        Alert { kind, detail: format!("{}: {why}", kind.as_str()) }
    }
}

/// A payment's state, in `payments.status`.
///
/// ```text
///   asset payment ──────────────────────────────► SUCCESS
///   channel payment ─► PAYING ─the channel reports it paid─► SUCCESS
///                        │  └──closed unpaid──► CLOSED ──paid anyway──► SUCCESS
///                        └──paid and refunded before it settled here──► REFUNDED
///   internal part of a mixed payment with a channel part:
///                      HELD ─the channel part settled─► SUCCESS
///                        └──the order closed or reopened unpaid──► RETURNED
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// Waiting for the payer at the channel.
    Paying,
    /// Taken from the account for a mixed payment whose channel part has not settled yet.
    Held,
    Success,
    /// The channel refused it for good (kept for rows of older versions).
    Failed,
    /// Closed unpaid: the order's pay time ran out, or the order was paid another way.
    Closed,
    /// A hold given back: the mixed payment it belonged to closed unpaid.
    Returned,
    /// Paid, and part of it given back by a refund.
    PartiallyRefunded,
    /// Paid and given back (by a refund, or at the channel before it settled here).
    Refunded,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 8] = [
        PaymentStatus::Paying,
        PaymentStatus::Held,
        PaymentStatus::Success,
        PaymentStatus::Failed,
        PaymentStatus::Closed,
        PaymentStatus::Returned,
        PaymentStatus::PartiallyRefunded,
        PaymentStatus::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Paying => "PAYING",
            PaymentStatus::Held => "HELD",
            PaymentStatus::Success => "SUCCESS",
            PaymentStatus::Failed => "FAILED",
            PaymentStatus::Closed => "CLOSED",
            PaymentStatus::Returned => "RETURNED",
            PaymentStatus::PartiallyRefunded => "PARTIALLY_REFUNDED",
            PaymentStatus::Refunded => "REFUNDED",
        }
    }

    pub fn parse(s: &str) -> Option<PaymentStatus> {
        PaymentStatus::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Took the money for its order (whatever a refund gave back since).
    pub fn settled(self) -> bool {
        matches!(self, PaymentStatus::Success | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded)
    }
}

impl PayMethod {
    /// The name stored in `payments.method` and shown in `payment_details`.
    pub fn as_str(self) -> &'static str {
        match self {
            PayMethod::Wechat => "wechat",
            PayMethod::Balance => "balance",
            PayMethod::Integral => "integral",
            PayMethod::Money2 => "money2",
        }
    }

    pub fn parse(s: &str) -> Option<PayMethod> {
        match s {
            "wechat" => Some(PayMethod::Wechat),
            "balance" => Some(PayMethod::Balance),
            "integral" => Some(PayMethod::Integral),
            "money2" => Some(PayMethod::Money2),
            _ => None,
        }
    }

    /// `pay_type` in the status answer (seed 000 shows `"WECHAT"`).
    pub fn pay_type_name(self) -> &'static str {
        match self {
            PayMethod::Wechat => "WECHAT",
            PayMethod::Balance => "BALANCE",
            PayMethod::Integral => "INTEGRAL",
            PayMethod::Money2 => "MONEY2",
        }
    }

    /// The numeric `profit_pay.pay_type` of seed 001.
    pub fn pay_type(self) -> i16 {
        match self {
            PayMethod::Wechat => 1,
            PayMethod::Balance => 2,
            PayMethod::Integral => 3,
            PayMethod::Money2 => 4,
        }
    }

    /// The prefix of this method's pay numbers (`BAL…`, `INT…`, as in seed 000's examples).
    pub fn pay_no_prefix(self) -> &'static str {
        match self {
            PayMethod::Wechat => "WX",
            PayMethod::Balance => "BAL",
            PayMethod::Integral => "INT",
            PayMethod::Money2 => "HN",
        }
    }

    /// The internal asset this method deducts, if any.
    pub fn asset(self) -> Option<Asset> {
        match self {
            PayMethod::Wechat => None,
            PayMethod::Balance => Some(Asset::Money),
            PayMethod::Integral => Some(Asset::Integral),
            PayMethod::Money2 => Some(Asset::Money2),
        }
    }
}

impl Asset {
    pub fn as_str(self) -> &'static str {
        match self {
            Asset::Money => "money",
            Asset::Integral => "integral",
            Asset::Money2 => "money2",
        }
    }
}

impl PayMethod {
    /// `profit_pay.content`, worded as the shop's own records (seed 000 writes "余额支付").
    pub fn content(self) -> &'static str {
        match self {
            PayMethod::Wechat => "微信支付",
            PayMethod::Balance => "余额支付",
            PayMethod::Integral => "积分支付",
            PayMethod::Money2 => "哈尼券支付",
        }
    }
}

/// How an order is (being) paid: one method, or several at once (`orders.pay_type`, the status
/// answer's `pay_type`, the order-paid event). Spelled as the method, or `mixed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayType {
    Single(PayMethod),
    Mixed,
}

impl PayType {
    pub fn as_str(self) -> &'static str {
        match self {
            PayType::Single(method) => method.as_str(),
            PayType::Mixed => "mixed",
        }
    }

    pub fn parse(s: &str) -> Option<PayType> {
        match s {
            "mixed" => Some(PayType::Mixed),
            _ => PayMethod::parse(s).map(PayType::Single),
        }
    }

    /// `pay_type` in the status answer: `WECHAT`, `BALANCE`…, `MIXED`.
    pub fn name(self) -> &'static str {
        match self {
            PayType::Single(method) => method.pay_type_name(),
            PayType::Mixed => "MIXED",
        }
    }
}

impl Serialize for PayType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PayType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        PayType::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is no pay type")))
    }
}

/// A settled payment, as the pay-worker answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub pay_no: String,
    pub method: PayMethod,
    #[serde(with = "time::serde::rfc3339")]
    pub pay_time: time::OffsetDateTime,
    /// What is left of the asset the payment drew on, in that asset's unit.
    pub remaining: super::Money,
}

/// A payment the worker refused; nothing was charged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: super::Code,
    /// A sentence the payer can act on.
    pub message: String,
    /// ORDERPAID: the payment that already settled the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_no: Option<String>,
    /// PASSWORD_WRONG: tries left before the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries_left: Option<u32>,
    /// RATE_LIMITED: when to try again, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl Refusal {
    pub fn new(code: super::Code, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into(), pay_no: None, tries_left: None, retry_after_secs: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_rule_refuses_a_disabled_method_and_amounts_outside_its_bounds() {
        let m = |s: &str| Money::parse(s).unwrap();
        let rule =
            MethodRule { enabled: true, min_amount: m("0.01"), max_amount: m("50000.00"), max_daily_amount: None };
        assert_eq!(rule.check(PayMethod::Wechat, m("0.01")), Ok(()));
        assert_eq!(rule.check(PayMethod::Wechat, m("50000.00")), Ok(()));
        let code = |r: Result<(), Refusal>| r.unwrap_err().code;
        assert_eq!(code(rule.check(PayMethod::Wechat, m("50000.01"))), Code::Validation);
        assert_eq!(code(rule.check(PayMethod::Wechat, m("0"))), Code::Validation);
        let off = MethodRule { enabled: false, ..rule };
        assert_eq!(code(off.check(PayMethod::Money2, m("1.00"))), Code::MethodDisabled);
        let daily = MethodRule { max_daily_amount: Some(m("100.00")), ..rule };
        assert_eq!(daily.check(PayMethod::Balance, m("100.00")), Ok(()));
        assert_eq!(code(daily.check(PayMethod::Balance, m("100.01"))), Code::DailyLimit);
    }
}
