//! Mixed payments (seed 000 §6.4): one order paid by several methods at once. What a mixed
//! payment is made of, the rules its parts must keep, and what the pay-worker answers.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::payment::{IntegralRules, MethodRule, Refusal};
use super::{Code, Money, PayMethod, PaymentStatus};

/// One part of a mixed payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixedPart {
    pub method: PayMethod,
    /// The yuan this part pays of the order.
    pub amount: Money,
    /// What leaves the account in the asset's unit: points for integral, yuan otherwise.
    pub asset_amount: Money,
}

/// Whether these parts may pay `total` yuan together: at least two parts, each method at most
/// once, every part within its method's rules (`rule`, and `integral` for the points), and the
/// yuan adding up exactly. The order's amount is the pay-worker's to compare, under its lock.
pub fn check_parts(
    total: Money,
    parts: &[MixedPart],
    rule: impl Fn(PayMethod) -> MethodRule,
    integral: &IntegralRules,
) -> Result<(), Refusal> {
    let invalid = |why: String| Err(Refusal::new(Code::Validation, why));
    if parts.len() < 2 {
        return invalid("a mixed payment has at least two parts; pay with one method at its own endpoint".into());
    }
    let mut sum = Money::ZERO;
    for (i, part) in parts.iter().enumerate() {
        let name = part.method.as_str();
        if parts[..i].iter().any(|p| p.method == part.method) {
            return invalid(format!("payment_methods names {name} twice; each method pays at most one part"));
        }
        if part.amount.is_zero() || part.asset_amount.is_zero() {
            return invalid(format!("the {name} part must be above zero"));
        }
        rule(part.method).check(part.method, part.amount)?;
        if part.method == PayMethod::Integral {
            integral.check(part.amount, part.asset_amount).or_else(invalid)?;
        } else if part.amount != part.asset_amount {
            return invalid(format!("the {name} part's money_equivalent must be its amount"));
        }
        sum = match sum.checked_add(part.amount) {
            Some(sum) => sum,
            None => return invalid("the parts add up to more than any order".into()),
        };
    }
    if sum != total {
        let listed: Vec<String> = parts.iter().map(|p| format!("{} {}", p.method.as_str(), p.amount)).collect();
        return invalid(format!("the parts ({}) add up to {sum}, not total_amount {total}", listed.join(" + ")));
    }
    Ok(())
}

/// The parts as one line (`mixed:balance=3.00,integral=2.00/20.00,wechat=5.00`): what a pay
/// password sealed for a mixed payment allows, so its parts cannot be changed on the way.
pub fn terms(parts: &[MixedPart]) -> String {
    let listed: Vec<String> = parts
        .iter()
        .map(|p| {
            if p.amount == p.asset_amount {
                format!("{}={}", p.method.as_str(), p.amount)
            } else {
                format!("{}={}/{}", p.method.as_str(), p.amount, p.asset_amount)
            }
        })
        .collect();
    format!("mixed:{}", listed.join(","))
}

/// What became of a mixed payment, as the pay-worker answers it and the ingress shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixedReceipt {
    /// `MIX…`: the order's pay number once it is paid.
    pub mixed_no: String,
    /// SUCCESS: paid; PAYING: the internal parts are held for the WeChat part.
    pub status: PaymentStatus,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub pay_time: Option<OffsetDateTime>,
    pub parts: Vec<PartReceipt>,
    /// The mini-program's pay params for the WeChat part (as `/wechat/create` answers them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wechat_pay_info: Option<serde_json::Value>,
    /// Why the WeChat part has no pay params yet, and what the payer can do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartReceipt {
    pub method: PayMethod,
    pub pay_no: String,
    pub amount: Money,
    pub asset_amount: Money,
    pub status: PaymentStatus,
    /// Internal parts: what is left of the asset after it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<Money>,
}

impl MixedReceipt {
    /// The WeChat part, if there is one.
    pub fn wechat(&self) -> Option<&PartReceipt> {
        self.parts.iter().find(|p| p.method == PayMethod::Wechat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    fn part(method: PayMethod, amount: &str, asset: &str) -> MixedPart {
        MixedPart { method, amount: m(amount), asset_amount: m(asset) }
    }

    fn integral() -> IntegralRules {
        IntegralRules { rate: 10, min: Money::ZERO, max_per_order: m("100000.00") }
    }

    fn open(_: PayMethod) -> MethodRule {
        MethodRule { enabled: true, min_amount: m("0.01"), max_amount: m("50000.00"), max_daily_amount: None }
    }

    fn code(total: &str, parts: &[MixedPart]) -> Result<(), Code> {
        check_parts(m(total), parts, open, &integral()).map_err(|r| r.code)
    }

    #[test]
    fn the_seed_example_adds_up() {
        let parts = [
            part(PayMethod::Balance, "10.00", "10.00"),
            part(PayMethod::Integral, "10.00", "100.00"),
            part(PayMethod::Wechat, "10.00", "10.00"),
        ];
        assert_eq!(code("30.00", &parts), Ok(()));
    }

    #[test]
    fn parts_must_add_up_be_distinct_and_keep_their_rules() {
        let balance = part(PayMethod::Balance, "10.00", "10.00");
        let money2 = part(PayMethod::Money2, "5.00", "5.00");
        assert_eq!(code("15.01", &[balance, money2]), Err(Code::Validation), "one fen off");
        let refusal = check_parts(m("15.01"), &[balance, money2], open, &integral()).unwrap_err();
        assert!(refusal.message.contains("balance 10.00 + money2 5.00"), "{}", refusal.message);
        assert_eq!(code("10.00", &[balance]), Err(Code::Validation), "one part is no mixed payment");
        assert_eq!(code("20.00", &[balance, balance]), Err(Code::Validation), "a method twice");
        assert_eq!(
            code("15.00", &[part(PayMethod::Integral, "10.00", "99.00"), money2]),
            Err(Code::Validation),
            "points at the wrong rate"
        );
        assert_eq!(
            code("15.00", &[part(PayMethod::Balance, "10.00", "9.00"), money2]),
            Err(Code::Validation),
            "a yuan part's equivalent is itself"
        );
        assert_eq!(code("5.00", &[part(PayMethod::Balance, "0.00", "0.00"), money2]), Err(Code::Validation));
        let off = |method: PayMethod| MethodRule { enabled: method != PayMethod::Money2, ..open(method) };
        let refusal = check_parts(m("15.00"), &[balance, money2], off, &integral()).unwrap_err();
        assert_eq!(refusal.code, Code::MethodDisabled);
    }
}
