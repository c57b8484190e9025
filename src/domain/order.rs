//! Orders and goods: what is being paid for, and the order's life (UNPAID → PAID | CLOSED).

use serde::{Deserialize, Serialize};

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

/// An order's state. Only UNPAID orders can be paid; PAID and CLOSED are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Unpaid,
    Paid,
    Closed,
}

impl OrderStatus {
    pub fn parse(s: &str) -> Option<OrderStatus> {
        match s {
            "UNPAID" => Some(OrderStatus::Unpaid),
            "PAID" => Some(OrderStatus::Paid),
            "CLOSED" => Some(OrderStatus::Closed),
            _ => None,
        }
    }
}
