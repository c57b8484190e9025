//! `Money`: an exact amount with at most two decimals, used for yuan, integral points and money2.
//!
//! Amounts enter as strings (`"10.00"`) and leave as strings with exactly two decimals; towards
//! WeChat they become integer fen. Every conversion is exact or rejected: there is no path that
//! rounds, and no floating point anywhere.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest amount the schema holds: NUMERIC(12,2).
const MAX_UNITS: i64 = 9_999_999_999;

/// A non-negative amount with at most two decimals that fits NUMERIC(12,2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(Decimal);

/// Why a string or number is not a `Money`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not of the form `123` or `123.4` or `123.45`.
    #[error("not an amount like \"10.00\"")]
    Malformed,
    /// More than two decimals: we never round a payment.
    #[error("more than two decimals")]
    TooPrecise,
    /// Below zero.
    #[error("negative")]
    Negative,
    /// Larger than 9999999999.99.
    #[error("too large")]
    TooLarge,
}

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    /// Parses `"10"`, `"10.5"` or `"10.50"`; rejects signs other than a leading `-` (reported as
    /// negative), exponents, spaces, and more than two decimals.
    pub fn parse(text: &str) -> Result<Money, MoneyError> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (int_part, frac_part) = match digits.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (digits, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int_part) || frac_part.is_some_and(|f| !all_digits(f)) {
            return Err(MoneyError::Malformed);
        }
        let frac = frac_part.unwrap_or("");
        if frac.len() > 2 {
            return Err(MoneyError::TooPrecise);
        }
        let int_part = int_part.trim_start_matches('0');
        if int_part.len() > 10 {
            return Err(MoneyError::TooLarge);
        }
        let whole: i64 = if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| MoneyError::Malformed)? };
        let mut cents: i64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            cents += i64::from(b - b'0') * if i == 0 { 10 } else { 1 };
        }
        let fen = whole * 100 + cents;
        if negative && fen != 0 {
            return Err(MoneyError::Negative);
        }
        Money::from_fen(fen)
    }

    /// An amount of fen (hundredths), the unit WeChat Pay speaks.
    pub fn from_fen(fen: i64) -> Result<Money, MoneyError> {
        if fen < 0 {
            return Err(MoneyError::Negative);
        }
        if fen > MAX_UNITS * 100 + 99 {
            return Err(MoneyError::TooLarge);
        }
        Ok(Money(Decimal::new(fen, 2)))
    }

    /// The amount in fen; exact because a `Money` never has more than two decimals.
    pub fn to_fen(self) -> i64 {
        let mut d = self.0;
        d.rescale(2);
        i64::try_from(d.mantissa()).expect("a Money fits NUMERIC(12,2), far inside i64")
    }

    /// Wraps a value read from a NUMERIC(12,2) column or computed from `Money` values.
    pub fn from_decimal(d: Decimal) -> Result<Money, MoneyError> {
        if d.is_sign_negative() && !d.is_zero() {
            return Err(MoneyError::Negative);
        }
        let normalized = d.normalize();
        if normalized.scale() > 2 {
            return Err(MoneyError::TooPrecise);
        }
        let mut d = normalized;
        d.rescale(2);
        if d.mantissa() > i128::from(MAX_UNITS) * 100 + 99 {
            return Err(MoneyError::TooLarge);
        }
        Ok(Money(d))
    }

    pub fn as_decimal(self) -> Decimal {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// `self - other`, or `None` when it would go below zero.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        Money::from_fen(self.to_fen().checked_sub(other.to_fen())?).ok()
    }

    /// `self + other`, or `None` past NUMERIC(12,2).
    pub fn checked_add(self, other: Money) -> Option<Money> {
        Money::from_fen(self.to_fen().checked_add(other.to_fen())?).ok()
    }

    /// `self × n`, or `None` past NUMERIC(12,2).
    pub fn checked_mul(self, n: i64) -> Option<Money> {
        Money::from_fen(self.to_fen().checked_mul(n)?).ok()
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fen = self.to_fen();
        write!(f, "{}.{:02}", fen / 100, fen % 100)
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Money::parse(s)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Accepts only JSON strings: a JSON number may already have been rounded by whoever wrote it.
impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an amount as a string, like \"10.00\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Money, E> {
                Money::parse(v).map_err(|e| E::custom(format_args!("{e}: {v:?}")))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_formats_the_usual_shapes() {
        assert_eq!(Money::parse("10").unwrap().to_string(), "10.00");
        assert_eq!(Money::parse("10.5").unwrap().to_string(), "10.50");
        assert_eq!(Money::parse("0.01").unwrap().to_fen(), 1);
        assert_eq!(Money::parse("007.10").unwrap().to_string(), "7.10");
        assert_eq!(Money::parse("9999999999.99").unwrap().to_fen(), 999_999_999_999);
        assert_eq!(Money::parse("-0").unwrap(), Money::ZERO);
    }

    #[test]
    fn rejects_what_it_cannot_hold_exactly() {
        assert_eq!(Money::parse("10.001"), Err(MoneyError::TooPrecise));
        assert_eq!(Money::parse("-1.00"), Err(MoneyError::Negative));
        assert_eq!(Money::parse("10000000000"), Err(MoneyError::TooLarge));
        for bad in ["", ".", "1.", ".5", "1e3", " 1", "1 ", "+1", "1,00", "--1", "0x10", "１"] {
            assert_eq!(Money::parse(bad), Err(MoneyError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn json_is_a_string_both_ways() {
        let m: Money = serde_json::from_str("\"12.3\"").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"12.30\"");
        assert!(serde_json::from_str::<Money>("12.3").is_err());
    }

    #[test]
    fn decimals_from_the_database_keep_their_value() {
        let d = Decimal::new(12_345, 3); // 12.345
        assert_eq!(Money::from_decimal(d), Err(MoneyError::TooPrecise));
        let d = Decimal::new(12_340, 3); // 12.340
        assert_eq!(Money::from_decimal(d).unwrap().to_string(), "12.34");
    }

    proptest! {
        #[test]
        fn fen_round_trips_through_text(fen in 0i64..=999_999_999_999) {
            let m = Money::from_fen(fen).unwrap();
            let text = m.to_string();
            prop_assert_eq!(Money::parse(&text).unwrap(), m);
            prop_assert_eq!(m.to_fen(), fen);
            prop_assert_eq!(Money::from_decimal(m.as_decimal()).unwrap(), m);
        }

        #[test]
        fn yuan_text_converts_to_fen_exactly(whole in 0i64..=9_999_999_999, frac in 0u8..100, short in any::<bool>()) {
            let text = if short && frac % 10 == 0 { format!("{whole}.{}", frac / 10) } else { format!("{whole}.{frac:02}") };
            let m = Money::parse(&text).unwrap();
            prop_assert_eq!(m.to_fen(), whole * 100 + i64::from(frac));
        }

        #[test]
        fn three_decimals_are_always_refused(whole in 0i64..1_000_000, frac in 0u16..1000) {
            let text = format!("{whole}.{frac:03}");
            prop_assert_eq!(Money::parse(&text), Err(MoneyError::TooPrecise));
        }

        #[test]
        fn arithmetic_is_exact(a in 0i64..=999_999_999_999, b in 0i64..=999_999_999_999) {
            let (ma, mb) = (Money::from_fen(a).unwrap(), Money::from_fen(b).unwrap());
            match ma.checked_sub(mb) {
                Some(d) => { prop_assert!(a >= b); prop_assert_eq!(d.to_fen(), a - b); prop_assert_eq!(d.checked_add(mb), Some(ma)); }
                None => prop_assert!(a < b),
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,20}") {
            let _ = Money::parse(&s);
        }
    }
}
