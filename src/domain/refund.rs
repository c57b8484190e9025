//! Refunds: which parts of a paid order a refund gives back, in a written order.

use super::{Money, PayMethod};

/// The order a refund takes a paid order's parts in: money2 first, then integral, then balance,
/// WeChat last. The internal parts go back at once and cannot fail; the WeChat part goes through
/// WeChat, which is slower and can refuse, so it is touched only when the others are used up.
pub const REFUND_ORDER: [PayMethod; 4] =
    [PayMethod::Money2, PayMethod::Integral, PayMethod::Balance, PayMethod::Wechat];

/// A payment (or part) that paid the order, and what it gave back so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refundable {
    pub method: PayMethod,
    /// Yuan it paid.
    pub amount: Money,
    /// What it took in its asset's unit (points for integral).
    pub asset_amount: Money,
    /// Yuan given back so far.
    pub refunded: Money,
}

impl Refundable {
    pub fn left(&self) -> Money {
        self.amount.checked_sub(self.refunded).unwrap_or(Money::ZERO)
    }
}

/// What a refund gives back of one payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// Index into the payments given to `allocate`.
    pub index: usize,
    /// Yuan.
    pub amount: Money,
    /// In the asset's unit: the payment's own rate (points per yuan for integral).
    pub asset_amount: Money,
}

/// Splits `amount` yuan over the payments in `REFUND_ORDER`, each giving back at most what it has
/// left. `Err(left)`: the payments have only `left` yuan left to give back.
pub fn allocate(amount: Money, payments: &[Refundable]) -> Result<Vec<Share>, Money> {
    let left_in_all = payments.iter().fold(Money::ZERO, |sum, p| sum.checked_add(p.left()).unwrap_or(sum));
    if amount > left_in_all || amount.is_zero() {
        return Err(left_in_all);
    }
    let mut wanted = amount;
    let mut shares = Vec::new();
    for method in REFUND_ORDER {
        for (index, p) in payments.iter().enumerate().filter(|(_, p)| p.method == method) {
            if wanted.is_zero() {
                break;
            }
            let take = wanted.min(p.left());
            if take.is_zero() {
                continue;
            }
            wanted = wanted.checked_sub(take).expect("take is at most wanted");
            // At the payment's own rate: whole fen, exact for a rate of whole units per yuan.
            let asset_fen =
                i128::from(take.to_fen()) * i128::from(p.asset_amount.to_fen()) / i128::from(p.amount.to_fen());
            let asset_amount = Money::from_fen(i64::try_from(asset_fen).expect("at most the payment's asset amount"))
                .expect("a share of an amount is an amount");
            shares.push(Share { index, amount: take, asset_amount });
        }
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    fn paid(method: PayMethod, yuan: &str, rate: i64) -> Refundable {
        let amount = m(yuan);
        Refundable { method, amount, asset_amount: amount.checked_mul(rate).unwrap(), refunded: Money::ZERO }
    }

    #[test]
    fn a_partial_refund_takes_money2_integral_balance_then_wechat() {
        let parts = [
            paid(PayMethod::Wechat, "5.00", 1),
            paid(PayMethod::Balance, "3.00", 1),
            paid(PayMethod::Integral, "2.00", 10),
        ];
        let shares = allocate(m("4.00"), &parts).unwrap();
        assert_eq!(
            shares,
            [
                Share { index: 2, amount: m("2.00"), asset_amount: m("20.00") },
                Share { index: 1, amount: m("2.00"), asset_amount: m("2.00") },
            ]
        );
        assert_eq!(allocate(m("10.01"), &parts), Err(m("10.00")), "no more than was paid");
        let mut refunded = parts;
        refunded[2].refunded = m("2.00");
        refunded[1].refunded = m("2.00");
        let rest = allocate(m("6.00"), &refunded).unwrap();
        assert_eq!(rest.iter().map(|s| (s.index, s.amount)).collect::<Vec<_>>(), [(1, m("1.00")), (0, m("5.00"))]);
    }

    proptest! {
        #[test]
        fn shares_add_up_never_pass_what_is_left_and_keep_the_order(
            fen in proptest::collection::vec((1i64..5000, 0i64..=100), 1..4),
            ask in 1i64..20000,
        ) {
            let methods = [PayMethod::Balance, PayMethod::Integral, PayMethod::Money2, PayMethod::Wechat];
            let parts: Vec<Refundable> = fen
                .iter()
                .zip(methods)
                .map(|((paid_fen, refunded_pct), method)| {
                    let amount = Money::from_fen(*paid_fen).unwrap();
                    let refunded = Money::from_fen(paid_fen * refunded_pct / 100).unwrap();
                    let rate = if method == PayMethod::Integral { 10 } else { 1 };
                    Refundable { method, amount, asset_amount: amount.checked_mul(rate).unwrap(), refunded }
                })
                .collect();
            let total_left: i64 = parts.iter().map(|p| p.left().to_fen()).sum();
            match allocate(Money::from_fen(ask).unwrap(), &parts) {
                Err(left) => {
                    prop_assert!(ask > total_left);
                    prop_assert_eq!(left.to_fen(), total_left);
                }
                Ok(shares) => {
                    prop_assert_eq!(shares.iter().map(|s| s.amount.to_fen()).sum::<i64>(), ask);
                    for s in &shares {
                        let p = parts[s.index];
                        prop_assert!(s.amount <= p.left());
                        let rate = p.asset_amount.to_fen() / p.amount.to_fen();
                        prop_assert_eq!(s.asset_amount.to_fen(), s.amount.to_fen() * rate);
                    }
                    // A later method gives back only once every earlier one is used up.
                    for s in &shares {
                        let rank = REFUND_ORDER.iter().position(|m| *m == parts[s.index].method).unwrap();
                        for (i, p) in parts.iter().enumerate() {
                            let earlier = REFUND_ORDER.iter().position(|m| *m == p.method).unwrap() < rank;
                            let taken = shares.iter().find(|x| x.index == i).map_or(0, |x| x.amount.to_fen());
                            prop_assert!(!earlier || taken == p.left().to_fen(), "{:?} before {:?}", p.method, parts[s.index].method);
                        }
                    }
                }
            }
        }
    }
}
