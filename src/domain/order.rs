//! Orders and goods: what is being paid for, and the order's life (`OrderStatus`).

use serde::{Deserialize, Serialize};

use super::payment::Refusal;
use super::{Code, Money};

/// The kinds of goods the shop sells; the kind decides the follow-up after payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoodsKind {
    /// 一番赏: a finite pool of prizes drawn per ticket.
    Ichiban,
    /// 无限赏: an endless pool, one draw per ticket.
    Infinite,
}

impl GoodsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GoodsKind::Ichiban => "ichiban",
            GoodsKind::Infinite => "infinite",
        }
    }

    pub fn parse(s: &str) -> Option<GoodsKind> {
        match s {
            "ichiban" => Some(GoodsKind::Ichiban),
            "infinite" => Some(GoodsKind::Infinite),
            _ => None,
        }
    }
}

/// An order's state, kept on the order row so that every transaction that locks the row
/// reads it: a payment in progress must be seen by whoever pays next, not only a payment row
/// beside the order (a concurrent locker reads that with its old snapshot).
///
/// ```text
///   UNPAID ──asset payment──────────────────► PAID
///     │  ▲                                      ▲
///     │  └─the channel trade failed for good─┐  │
///     └──channel payment begun──► PAYING ────┴──┘ (the channel reports it paid)
///   UNPAID, PAYING ──pay time ran out──► CLOSED ──the channel took the money anyway──► PAID
///   PAID ──refunded in part──► PARTIALLY_REFUNDED ──the rest──► REFUNDED
///     └────────refunded in full──────────────────────────────────┘
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Payable by any method.
    Unpaid,
    /// A channel payment (WeChat) waits for the payer; no other method may pay.
    Paying,
    Paid,
    /// Paid, and part of it given back.
    PartiallyRefunded,
    /// Paid, and all of it given back.
    Refunded,
    Closed,
}

impl OrderStatus {
    /// Paid, whatever was given back since: the states with a pay_no.
    pub fn was_paid(self) -> bool {
        matches!(self, OrderStatus::Paid | OrderStatus::PartiallyRefunded | OrderStatus::Refunded)
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        match s {
            "UNPAID" => Some(OrderStatus::Unpaid),
            "PAYING" => Some(OrderStatus::Paying),
            "PAID" => Some(OrderStatus::Paid),
            "PARTIALLY_REFUNDED" => Some(OrderStatus::PartiallyRefunded),
            "REFUNDED" => Some(OrderStatus::Refunded),
            "CLOSED" => Some(OrderStatus::Closed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Unpaid => "UNPAID",
            OrderStatus::Paying => "PAYING",
            OrderStatus::Paid => "PAID",
            OrderStatus::PartiallyRefunded => "PARTIALLY_REFUNDED",
            OrderStatus::Refunded => "REFUNDED",
            OrderStatus::Closed => "CLOSED",
        }
    }

    /// Whether the order may move from this state to `next` (the diagram above).
    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Unpaid, Paid | Paying | Closed)
                | (Paying, Paid | Unpaid | Closed)
                | (Closed, Paid)
                | (Paid, PartiallyRefunded | Refunded)
                | (PartiallyRefunded, Refunded)
        )
    }
}

/// What decides whether an order can be paid.
#[derive(Clone, Copy, Debug)]
pub struct OrderFacts<'a> {
    pub user_id: i64,
    pub status: OrderStatus,
    pub amount: Money,
    /// Its pay time has run out (it is closed, or about to be).
    pub expired: bool,
    /// PAID: the payment that settled it.
    pub pay_no: Option<&'a str>,
}

/// Whether `user_id` may pay `amount` towards this order now, and if not, what to answer.
/// Every pay path asks this: the pay-worker before it spends CPU on a pay password, and each
/// path again once the order is locked. A PAYING order is refused: only the payment it waits
/// for may go on, which its own path knows (and asks with the order as UNPAID).
pub fn check_payable(order: Option<&OrderFacts>, user_id: i64, amount: Money) -> Result<(), Refusal> {
    let refuse = |code, message: &str| Err(Refusal::new(code, message));
    // Someone else's order is indistinguishable from a missing one.
    let Some(order) = order.filter(|o| o.user_id == user_id) else {
        return refuse(Code::NotFound, "order not found");
    };
    match order.status {
        OrderStatus::Paid | OrderStatus::PartiallyRefunded | OrderStatus::Refunded => Err(Refusal {
            pay_no: order.pay_no.map(str::to_owned),
            ..Refusal::new(Code::OrderPaid, "order already paid")
        }),
        OrderStatus::Closed => refuse(Code::OrderClosed, "order is closed"),
        _ if order.expired => refuse(Code::OrderClosed, "order's pay time has run out; place a new order"),
        OrderStatus::Paying => refuse(
            Code::OrderPaying,
            "a WeChat payment of this order is waiting for the payer; finish or retry it instead of paying another way",
        ),
        OrderStatus::Unpaid if order.amount != amount => {
            refuse(Code::AmountMismatch, &format!("amount {amount} is not the order amount {}", order.amount))
        }
        OrderStatus::Unpaid => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [OrderStatus; 6] = [
        OrderStatus::Unpaid,
        OrderStatus::Paying,
        OrderStatus::Paid,
        OrderStatus::PartiallyRefunded,
        OrderStatus::Refunded,
        OrderStatus::Closed,
    ];

    #[test]
    fn names_round_trip() {
        for s in ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn paid_is_final_and_only_a_channel_may_pay_a_closed_order() {
        for s in ALL {
            let refund = matches!(s, OrderStatus::PartiallyRefunded | OrderStatus::Refunded);
            assert_eq!(OrderStatus::Paid.can_become(s), refund, "PAID → {s:?}: only refunds");
            assert!(!OrderStatus::Refunded.can_become(s), "REFUNDED is final: {s:?}");
            assert!(!s.can_become(s), "{s:?} → itself is no transition");
        }
        assert!(OrderStatus::Closed.can_become(OrderStatus::Paid));
        assert!(!OrderStatus::Closed.can_become(OrderStatus::Paying));
        assert!(!OrderStatus::Closed.can_become(OrderStatus::Unpaid));
    }

    #[test]
    fn only_the_owner_may_pay_an_open_order_its_amount() {
        let ten = Money::parse("10.00").unwrap();
        let open = OrderFacts { user_id: 7, status: OrderStatus::Unpaid, amount: ten, expired: false, pay_no: None };
        let code = |o: &OrderFacts, user, amount| check_payable(Some(o), user, amount).map_err(|r| r.code);
        assert_eq!(code(&open, 7, ten), Ok(()));
        assert_eq!(code(&open, 8, ten), Err(Code::NotFound));
        assert_eq!(check_payable(None, 7, ten).unwrap_err().code, Code::NotFound);
        assert_eq!(code(&open, 7, Money::parse("9.99").unwrap()), Err(Code::AmountMismatch));
        assert_eq!(code(&OrderFacts { expired: true, ..open }, 7, ten), Err(Code::OrderClosed));
        assert_eq!(code(&OrderFacts { status: OrderStatus::Paying, ..open }, 7, ten), Err(Code::OrderPaying));
        assert_eq!(code(&OrderFacts { status: OrderStatus::Closed, ..open }, 7, ten), Err(Code::OrderClosed));
        let paid = OrderFacts { status: OrderStatus::Paid, pay_no: Some("BAL1"), expired: true, ..open };
        let refusal = check_payable(Some(&paid), 7, ten).unwrap_err();
        assert_eq!(
            (refusal.code, refusal.pay_no.as_deref()),
            (Code::OrderPaid, Some("BAL1")),
            "paid wins over expired"
        );
        assert_eq!(code(&paid, 8, ten), Err(Code::NotFound), "nothing about someone else's order");
    }
}
