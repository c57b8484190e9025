//! The bodies of queue messages: past-tense events, JSON, one struct per kind. The envelope
//! (message id, correlation id, attempt, traceparent, schema version) travels in the AMQP
//! properties, see `mq::envelope`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::topology;
use crate::channel::{Trade, TradeType};
use crate::domain::mixed::{MixedPart, MixedReceipt};
use crate::domain::payment::{Receipt, Refusal};
use crate::domain::{GoodsKind, Money, PayMethod, PayType};

/// Bumped when a message body changes incompatibly; consumers refuse versions they do not know.
pub const SCHEMA_VERSION: u32 = 1;

/// A message published to a work queue: the queue it goes to and its kind (the AMQP `type`,
/// the outbox row's `kind`) belong to its type, so no call site names either.
pub trait Event: Serialize {
    /// The work queue's base name (`mq::topology`).
    const QUEUE: &'static str;
    const KIND: &'static str;
}

impl Event for PayRequested {
    const QUEUE: &'static str = topology::PAY_REQUESTS;
    const KIND: &'static str = "pay_requested";
}

impl Event for TradeReported {
    const QUEUE: &'static str = topology::WECHAT_NOTIFY;
    const KIND: &'static str = "trade_reported";
}

/// Published into the wait queue, with the order's pay time as its TTL.
impl Event for PayTimeoutDue {
    const QUEUE: &'static str = topology::PAY_TIMEOUT_WAIT;
    const KIND: &'static str = "pay_timeout_due";
}

impl Event for OrderPaid {
    const QUEUE: &'static str = topology::ORDER_FOLLOWUP;
    const KIND: &'static str = "order_paid";
}

impl Event for RefundWork {
    const QUEUE: &'static str = topology::WECHAT_REFUND;
    const KIND: &'static str = "wechat_refund";
}

/// Work on a refund through WeChat, for the notify-worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RefundWork {
    /// A refund part to ask WeChat for (or, once WeChat accepted it, to query): written to the
    /// outbox by the refund's transaction; retried on the delay tiers until it settles.
    Requested { part_no: String },
    /// WeChat reported a refund's progress: a refund notify, verified at the ingress and
    /// verified again before anything settles from it.
    Reported { report_id: String, signed: crate::wechat::SignedNotify },
}

impl Event for OrderRefunded {
    const QUEUE: &'static str = topology::ORDER_FOLLOWUP;
    const KIND: &'static str = "order_refunded";
}

/// Money of a paid order was given back: written to the outbox by the refund's transaction,
/// relayed to `order.followup` (a follow-up undoes what the refund covers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRefunded {
    pub order_no: String,
    pub user_id: i64,
    pub refund_no: String,
    /// Yuan this refund gave back.
    pub amount: Money,
    /// Yuan given back of the order so far, this refund included.
    pub refunded: Money,
    /// Everything paid is back.
    pub full: bool,
    pub reason: String,
}

/// A user asked to pay: published by the ingress to `pay.requests`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PayRequested {
    /// Pay a whole order from one internal asset (balance, integral or money2).
    Asset(AssetPayRequested),
    /// Create (or reuse) the WeChat payment of an order and answer the client's pay params.
    WechatCreate(WechatCreateRequested),
    /// Pay an order with several methods at once.
    Mixed(MixedPayRequested),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixedPayRequested {
    /// Unique per HTTP request; the mixed payment keeps it, so a redelivery is recognised.
    pub request_id: Uuid,
    pub user_id: i64,
    pub order_no: String,
    /// The order amount the payer confirmed, in yuan; the parts add up to it.
    pub total: Money,
    pub parts: Vec<MixedPart>,
    /// With a balance part: the pay password, sealed for this request and `total`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_password: Option<String>,
    /// With a WeChat part: how its channel order is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wechat: Option<WechatPayer>,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
}

/// Who pays a WeChat part, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WechatPayer {
    pub trade_type: TradeType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openid: Option<String>,
    pub client_ip: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WechatCreateRequested {
    pub request_id: Uuid,
    pub user_id: i64,
    pub order_no: String,
    /// The order amount the payer confirmed, in yuan.
    pub amount: Money,
    pub trade_type: TradeType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openid: Option<String>,
    pub client_ip: String,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetPayRequested {
    /// Unique per HTTP request; the payment row keeps it, so a redelivery is recognised.
    pub request_id: Uuid,
    pub user_id: i64,
    pub order_no: String,
    pub method: PayMethod,
    /// The order amount the payer confirmed, in yuan.
    pub amount: Money,
    /// What leaves the account in the asset's unit (points for integral; yuan otherwise).
    pub asset_amount: Money,
    /// Balance pay: the pay password sealed by `PasswordHasher::seal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_password: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
}

/// The pay-worker's answer, sent to the request's `reply_to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PayReplied {
    Paid(Receipt),
    Refused(Refusal),
    /// A WeChat payment is ready: the client pays with these params.
    Prepaid(PrepaidReply),
    /// A mixed payment was paid, or its internal parts are held for its WeChat part.
    Mixed(MixedReceipt),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepaidReply {
    pub order_no: String,
    /// Our number of the payment, the channel's `out_trade_no`.
    pub pay_no: String,
    pub pay_params: serde_json::Value,
}

/// Where a trade report came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TradeSource {
    /// A verified notify from WeChat.
    Notify,
    /// Our own query at WeChat (status sync, timeout check, a prepay that said "already paid").
    Query,
}

/// WeChat reported a trade: published to `wechat.notify` by the ingress (a verified notify) or
/// through the outbox (a query answer); the notify-worker settles the payment from it, but
/// only on what it confirms itself: the signed notify verified again, or WeChat queried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeReported {
    pub source: TradeSource,
    /// WeChat's notify id, or an id of our own for a query answer.
    pub report_id: String,
    pub event_type: String,
    /// The trade as the reporter read it: what to confirm, never what to settle on.
    pub trade: Trade,
    /// The notify body as received, for the record.
    pub raw: String,
    /// A notify as WeChat signed it; None for a query answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<crate::wechat::SignedNotify>,
}

impl TradeReported {
    /// A trade our own query of WeChat found.
    pub fn queried(trade: Trade) -> TradeReported {
        TradeReported {
            source: TradeSource::Query,
            report_id: format!("query:{}:{}", trade.out_trade_no, Uuid::now_v7()),
            event_type: format!("QUERY.{}", trade.trade_state.as_str()),
            raw: serde_json::to_string(&trade).expect("a trade serialises"),
            trade,
            signed: None,
        }
    }
}

/// An order's pay time ran out: published when the order is created, delayed until then in
/// `pay.timeout.wait`, handled by the pay-worker from `pay.timeout`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayTimeoutDue {
    pub order_no: String,
}

/// What arrives on `order.followup`: an order was paid (serve it), or money of it was given
/// back. The two kinds differ in their fields, which tell them apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Followup {
    Paid(OrderPaid),
    Refunded(OrderRefunded),
}

/// An order was paid: written to the outbox in the paying transaction, relayed to
/// `order.followup` (lottery draw, recharge credit, shipping fee).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPaid {
    pub order_no: String,
    pub user_id: i64,
    pub goods_id: i64,
    pub kind: GoodsKind,
    pub num: i32,
    pub amount: Money,
    /// The payment that settled it (`MIX…` for a mixed one).
    pub pay_no: String,
    #[serde(alias = "method")]
    pub pay_type: PayType,
    #[serde(with = "time::serde::rfc3339")]
    pub paid_at: OffsetDateTime,
}
