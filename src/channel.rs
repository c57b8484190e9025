//! The words a payment channel's trades are spoken in, whoever the channel is: what to create
//! (`PrepayOrder`), what it answered (`Prepaid`), a trade and its state, and why a call failed.
//! `wechat` speaks them for WeChat Pay v2 and v3; store, workers and sim use them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::Money;

/// How the payer pays at the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TradeType {
    /// Mini-program / official account (needs the payer's openid).
    Jsapi,
    /// A mobile browser outside WeChat (v2 calls it MWEB).
    H5,
    /// A QR code to scan.
    Native,
    /// A native app.
    App,
}

impl TradeType {
    pub fn as_str(self) -> &'static str {
        match self {
            TradeType::Jsapi => "JSAPI",
            TradeType::H5 => "H5",
            TradeType::Native => "NATIVE",
            TradeType::App => "APP",
        }
    }

    pub fn parse(s: &str) -> Option<TradeType> {
        match s {
            "JSAPI" => Some(TradeType::Jsapi),
            "H5" | "MWEB" => Some(TradeType::H5),
            "NATIVE" => Some(TradeType::Native),
            "APP" => Some(TradeType::App),
            _ => None,
        }
    }
}

/// An order to create at the channel.
#[derive(Clone, Debug)]
pub struct PrepayOrder {
    /// Our number for the payment at the channel (`out_trade_no`).
    pub out_trade_no: String,
    pub description: String,
    pub amount: Money,
    pub trade_type: TradeType,
    pub openid: Option<String>,
    pub client_ip: String,
    /// The channel closes the order by itself after this.
    pub expires_at: OffsetDateTime,
}

/// What the channel answered a prepay with: what the client needs to start paying.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Prepaid {
    /// Signed into `wx.requestPayment` params by `Wechat::pay_params`.
    Jsapi {
        prepay_id: String,
    },
    /// Signed into the app SDK's params by `Wechat::pay_params`.
    App {
        prepay_id: String,
    },
    H5 {
        h5_url: String,
    },
    Native {
        code_url: String,
    },
}

/// The state of a trade at the channel (WeChat's `trade_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TradeState {
    Success,
    Refund,
    Notpay,
    Closed,
    Revoked,
    Userpaying,
    Payerror,
    Accept,
}

impl TradeState {
    pub fn parse(s: &str) -> Option<TradeState> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            TradeState::Success => "SUCCESS",
            TradeState::Refund => "REFUND",
            TradeState::Notpay => "NOTPAY",
            TradeState::Closed => "CLOSED",
            TradeState::Revoked => "REVOKED",
            TradeState::Userpaying => "USERPAYING",
            TradeState::Payerror => "PAYERROR",
            TradeState::Accept => "ACCEPT",
        }
    }

    /// The trade can no longer be paid. (A failed attempt, PAYERROR, can be paid again.)
    pub fn is_closed(&self) -> bool {
        matches!(self, TradeState::Closed | TradeState::Revoked)
    }

    /// Paid, and the money is still with the merchant: the only state that settles an order.
    /// (REFUND is a payment that was paid back: it must never settle one.)
    pub fn is_paid(&self) -> bool {
        matches!(self, TradeState::Success)
    }

    /// The payer's money reached the merchant at some point (it may have gone back since): such
    /// a trade can no longer be closed, or paid again.
    pub fn was_paid(&self) -> bool {
        matches!(self, TradeState::Success | TradeState::Refund)
    }
}

/// A trade as the channel reports it (query answer or notify), normalised across API versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    pub appid: String,
    pub mchid: String,
    pub out_trade_no: String,
    pub transaction_id: Option<String>,
    pub trade_state: TradeState,
    /// The order total in fen, as the channel has it.
    pub total_fen: Option<i64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub success_time: Option<OffsetDateTime>,
    pub payer_openid: Option<String>,
}

/// Why a channel call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The channel has no such order.
    #[error("the channel has no such order")]
    NotFound,
    /// The channel says the order is already paid.
    #[error("already paid at the channel")]
    AlreadyPaid,
    /// The channel says the order is closed.
    #[error("closed at the channel")]
    Closed,
    /// The channel refused the request for good (configuration, signature, parameters).
    #[error("channel refused: {code}: {message}")]
    Refused { code: String, message: String },
    /// The outcome is unknown or the channel is busy: retry, then query.
    #[error("channel unavailable: {0}")]
    Transient(String),
    /// The answer did not carry a valid channel signature: it may be forged.
    #[error("channel answer failed verification: {0}")]
    Forged(String),
}

/// A refund to ask the channel for: part of a paid trade given back to the payer.
#[derive(Clone, Debug)]
pub struct RefundOrder {
    /// The paid trade (`out_trade_no`).
    pub out_trade_no: String,
    /// Our number for this refund at the channel: asking again with it is the same refund.
    pub out_refund_no: String,
    pub refund: Money,
    /// What the trade took, as the channel has it.
    pub total: Money,
    pub reason: String,
}

/// Where a refund stands at the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundState {
    /// Accepted, not paid out yet.
    Processing,
    /// The payer has the money back.
    Success,
    /// The money left the merchant but could not reach the payer (a closed bank card, say):
    /// someone has to see to it.
    Abnormal,
    /// The refund was given up: the money stayed with the merchant.
    Closed,
}

impl RefundState {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundState::Processing => "PROCESSING",
            RefundState::Success => "SUCCESS",
            RefundState::Abnormal => "ABNORMAL",
            RefundState::Closed => "CLOSED",
        }
    }

    /// v3's `refund_status`, or v2's (`CHANGE` is v2's abnormal, `REFUNDCLOSE` its closed).
    pub fn parse(s: &str) -> Option<RefundState> {
        match s {
            "PROCESSING" => Some(RefundState::Processing),
            "SUCCESS" => Some(RefundState::Success),
            "ABNORMAL" | "CHANGE" => Some(RefundState::Abnormal),
            "CLOSED" | "REFUNDCLOSE" => Some(RefundState::Closed),
            _ => None,
        }
    }
}

/// A refund as the channel reports it (refund answer, query or notify), across API versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRefund {
    pub out_trade_no: String,
    pub out_refund_no: String,
    /// The channel's own number of the refund.
    pub refund_id: Option<String>,
    pub state: RefundState,
    /// What is given back, in fen.
    pub refund_fen: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub success_time: Option<OffsetDateTime>,
}
