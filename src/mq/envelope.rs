//! The envelope every message carries in its AMQP properties: message id, correlation id, a
//! W3C `traceparent`, the attempt count and the schema version; and the headers a dead-lettered
//! message gets.

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::messages::SCHEMA_VERSION;

pub const ATTEMPT_HEADER: &str = "x-attempt";
pub const SCHEMA_HEADER: &str = "x-schema";
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-payfleet-reason";
/// The work queue a dead-lettered message came from (for replay).
pub const ORIGIN_HEADER: &str = "x-payfleet-origin";

/// What a consumer learns about a delivery besides its body.
#[derive(Clone, Debug, Default)]
pub struct Meta {
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub traceparent: Option<String>,
    /// 0 for the first delivery through the work queue, n after n delayed retries.
    pub attempt: u32,
    pub schema: Option<u32>,
    /// The broker says an earlier delivery of this message was not acked.
    pub redelivered: bool,
}

/// Properties for a new message.
pub fn properties(message_id: &str, kind: &str, traceparent: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(SCHEMA_HEADER.into(), AMQPValue::LongUInt(SCHEMA_VERSION));
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongUInt(0));
    headers.insert(TRACEPARENT_HEADER.into(), AMQPValue::LongString(LongString::from(traceparent)));
    BasicProperties::default()
        .with_message_id(ShortString::from(message_id))
        .with_type(ShortString::from(kind))
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(time::OffsetDateTime::now_utc().unix_timestamp() as u64)
        .with_headers(headers)
}

/// The same properties with one header set (attempt count, dead-letter reason).
pub fn with_header(properties: &BasicProperties, name: &str, value: AMQPValue) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(ShortString::from(name), value);
    properties.clone().with_headers(headers)
}

pub fn read(delivery: &Delivery) -> Meta {
    let p = &delivery.properties;
    let header = |name: &str| p.headers().as_ref().and_then(|h| h.inner().get(name).cloned());
    Meta {
        message_id: p.message_id().as_ref().map(|s| s.to_string()),
        correlation_id: p.correlation_id().as_ref().map(|s| s.to_string()),
        reply_to: p.reply_to().as_ref().map(|s| s.to_string()),
        traceparent: header(TRACEPARENT_HEADER).and_then(|v| text(&v)),
        attempt: header(ATTEMPT_HEADER).and_then(|v| number(&v)).unwrap_or(0),
        schema: header(SCHEMA_HEADER).and_then(|v| number(&v)),
        redelivered: delivery.redelivered,
    }
}

/// A W3C traceparent whose trace id is the request's id, so one id follows a payment from the
/// HTTP request through every queue and log line.
pub fn traceparent_for(request_id: uuid::Uuid) -> String {
    let span: u64 = rand::random();
    format!("00-{}-{span:016x}-01", request_id.simple())
}

fn number(v: &AMQPValue) -> Option<u32> {
    match v {
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u32::from(*n)),
        _ => None,
    }
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}
