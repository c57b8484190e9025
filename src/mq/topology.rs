//! Queue names and their arguments, declared idempotently by every binary at start and by
//! `payctl topology`.
//!
//! Every work queue is a quorum queue with `x-delivery-limit` (a message that keeps crashing
//! its consumer is dead-lettered instead of looping) and a `<queue>.dlq`. Delays are one TTL
//! queue per tier that dead-letters back into the work queue (`pay.requests.retry.5s` →
//! `pay.requests`); per-message TTLs in one shared queue would block behind the head. Nothing
//! here needs a broker plugin.

use lapin::Channel;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::MqError;
use crate::config::BrokerSettings;

/// Pay requests from the ingress; answered on `amq.rabbitmq.reply-to`.
pub const PAY_REQUESTS: &str = "pay.requests";
/// WeChat's pay notifies, verified at the ingress, and the answers of our own trade queries.
pub const WECHAT_NOTIFY: &str = "wechat.notify";
/// Refunds through WeChat: parts to ask WeChat for, and WeChat's refund notifies.
pub const WECHAT_REFUND: &str = "wechat.refund";
/// Order paid: lottery draw, infinite draw, recharge credit, shipping fee.
pub const ORDER_FOLLOWUP: &str = "order.followup";
/// OrderNotify callbacks to the business notify_url.
pub const ORDER_NOTIFY: &str = "order.notify";
/// Mini-program shipping information uploads.
pub const SHIPPING_NOTICE: &str = "shipping.notice";
/// Unpaid-order expiry checks.
pub const PAY_TIMEOUT: &str = "pay.timeout";
/// Where expiry checks wait (per-message TTL = the order's pay time) before `pay.timeout`.
pub const PAY_TIMEOUT_WAIT: &str = "pay.timeout.wait";

/// Which delay tiers a queue's transient failures wait through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// `broker.retry_delays_ms`: seconds to minutes, for work of our own that a short outage
    /// held up.
    Short,
    /// `broker.notice_retry_delays_ms`: WeChat's own schedule, up to hours, for work that must
    /// outlast an outage of someone else's (a business notify_url, WeChat itself).
    Long,
}

/// One work queue of the fleet. Everything about the queues (what is declared, retried,
/// checked, listed by `payctl topology`, and the README's table) is derived from `QUEUES`.
#[derive(Clone, Copy, Debug)]
pub struct QueueSpec {
    /// The base name; the namespace is prefixed.
    pub name: &'static str,
    /// What a message on it says, for operators.
    pub carries: &'static str,
    /// Who publishes to it.
    pub from: &'static str,
    pub retry: Retry,
    /// A queue messages wait in first (their per-message TTL) before they enter this one.
    pub waits_in: Option<&'static str>,
    /// The binaries that consume it; none yet means its messages wait for a later version.
    pub consumers: &'static [&'static str],
}

/// Every work queue: one row each. Each also has a `<name>.dlq` and one TTL queue per delay
/// tier of its retry schedule.
pub const QUEUES: [QueueSpec; 7] = [
    QueueSpec {
        name: PAY_REQUESTS,
        carries: "a user asked to pay (asset pay, WeChat create)",
        from: "payfleet-ingress",
        retry: Retry::Short,
        waits_in: None,
        consumers: &["payfleet-pay-worker"],
    },
    QueueSpec {
        name: WECHAT_NOTIFY,
        carries: "WeChat reported a trade (a verified notify, or our own query)",
        from: "payfleet-ingress, outbox",
        retry: Retry::Short,
        waits_in: None,
        consumers: &["payfleet-notify-worker"],
    },
    QueueSpec {
        name: WECHAT_REFUND,
        carries: "a refund part to ask WeChat for (then query until it settles), or WeChat's refund notify",
        from: "outbox, payfleet-ingress",
        // A refund waits out a WeChat outage, and is queried on this schedule until it settles.
        retry: Retry::Long,
        waits_in: None,
        consumers: &["payfleet-notify-worker"],
    },
    QueueSpec {
        name: PAY_TIMEOUT,
        carries: "an order's pay time ran out: close it unless WeChat took the money",
        from: "outbox, when the order is created",
        // Expiry checks must outlast a WeChat outage.
        retry: Retry::Long,
        waits_in: Some(PAY_TIMEOUT_WAIT),
        consumers: &["payfleet-pay-worker"],
    },
    QueueSpec {
        name: ORDER_FOLLOWUP,
        carries: "an order was paid (serve it: lottery draws) or refunded",
        from: "outbox",
        retry: Retry::Short,
        waits_in: None,
        consumers: &["payfleet-followup-worker"],
    },
    QueueSpec {
        name: ORDER_NOTIFY,
        carries: "an OrderNotify callback to a business notify_url",
        from: "outbox",
        retry: Retry::Long,
        waits_in: None,
        consumers: &[],
    },
    QueueSpec {
        name: SHIPPING_NOTICE,
        carries: "a shipping notice to upload to WeChat",
        from: "outbox",
        retry: Retry::Long,
        waits_in: None,
        consumers: &[],
    },
];

/// The spec of a work queue named by its base name.
pub fn spec(base: &str) -> Option<&'static QueueSpec> {
    QUEUES.iter().find(|q| q.name == base)
}

/// RabbitMQ's direct reply-to pseudo-queue.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The queue names and arguments of one fleet.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Prefixed to every name (`broker.namespace`).
    namespace: String,
    delivery_limit: u32,
    /// Delay tiers, in attempt order, for transient failures.
    retry_delays_ms: Vec<u64>,
    /// The tiers of the outgoing notices (OrderNotify, shipping), WeChat's own schedule.
    notice_retry_delays_ms: Vec<u64>,
    /// Binaries declare the queues at start (`broker.declare_topology`); otherwise they only
    /// check the queues exist, and a user without the configure permission will do.
    declares: bool,
}

impl Topology {
    pub fn new(settings: &BrokerSettings) -> Topology {
        Topology {
            namespace: settings.namespace.clone(),
            delivery_limit: settings.delivery_limit,
            retry_delays_ms: settings.retry_delays_ms.clone(),
            notice_retry_delays_ms: settings.notice_retry_delays_ms.clone(),
            declares: settings.declare_topology,
        }
    }

    /// The full name of a work queue.
    pub fn queue(&self, base: &str) -> String {
        format!("{}{base}", self.namespace)
    }

    /// Where a work queue's failures go.
    pub fn dlq(&self, base: &str) -> String {
        format!("{}{base}.dlq", self.namespace)
    }

    /// The retry schedule of a work queue (none for a name not in `QUEUES`).
    fn schedule(&self, base: &str) -> &[u64] {
        match spec(base).map(|q| q.retry) {
            Some(Retry::Short) => &self.retry_delays_ms,
            Some(Retry::Long) => &self.notice_retry_delays_ms,
            None => &[],
        }
    }

    /// The delay before retry number `attempt` (1-based), or `None` once the tiers are used up.
    pub fn retry_delay(&self, base: &str, attempt: u32) -> Option<u64> {
        self.schedule(base).get(attempt.checked_sub(1)? as usize).copied()
    }

    /// The TTL queue that holds a message for `delay_ms` before returning it to `base`.
    pub fn retry_queue(&self, base: &str, delay_ms: u64) -> String {
        format!("{}{base}.retry.{}", self.namespace, delay_label(delay_ms))
    }

    /// One TTL queue per distinct delay of the queue's schedule.
    fn retry_tiers(&self, base: &str) -> Vec<u64> {
        let mut tiers = self.schedule(base).to_vec();
        tiers.sort_unstable();
        tiers.dedup();
        tiers
    }

    /// Every queue name of this fleet, DLQs, wait queues and delay tiers included.
    pub fn all_queues(&self) -> Vec<String> {
        QUEUES
            .iter()
            .flat_map(|q| {
                let mut names = vec![self.queue(q.name), self.dlq(q.name)];
                names.extend(q.waits_in.map(|wait| self.queue(wait)));
                names.extend(self.retry_tiers(q.name).into_iter().map(|d| self.retry_queue(q.name, d)));
                names
            })
            .collect()
    }

    /// What a binary does at the start of a broker session: declares every queue, or (with
    /// `broker.declare_topology` off) checks they exist, which needs no permission at all.
    pub async fn ensure(&self, channel: &Channel) -> Result<(), MqError> {
        if self.declares {
            return self.declare(channel).await;
        }
        for name in self.all_queues() {
            let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
            if let Err(e) =
                channel.queue_declare(ShortString::from(name.as_str()), options, FieldTable::default()).await
            {
                return Err(MqError::Refused(format!("queue {name} is missing ({e}): run `payctl topology`")));
            }
        }
        Ok(())
    }

    /// Declares every queue. Safe to repeat; fails if a queue exists with other arguments.
    pub async fn declare(&self, channel: &Channel) -> Result<(), MqError> {
        for q in &QUEUES {
            let dlq = self.dlq(q.name);
            declare(channel, &dlq, quorum()).await?;
            let mut work = quorum();
            work.insert("x-delivery-limit".into(), AMQPValue::LongInt(self.delivery_limit as i32));
            dead_letter_to(&mut work, &dlq);
            declare(channel, &self.queue(q.name), work).await?;
            if let Some(wait) = q.waits_in {
                let mut args = quorum();
                dead_letter_to(&mut args, &self.queue(q.name));
                declare(channel, &self.queue(wait), args).await?;
            }
            for delay in self.retry_tiers(q.name) {
                let mut tier = quorum();
                tier.insert("x-message-ttl".into(), AMQPValue::LongLongInt(delay as i64));
                dead_letter_to(&mut tier, &self.queue(q.name));
                declare(channel, &self.retry_queue(q.name, delay), tier).await?;
            }
        }
        Ok(())
    }

    /// Every queue of this fleet with the messages waiting in it and its consumers right now
    /// (`payctl topology`).
    pub async fn depths(&self, channel: &Channel) -> Result<Vec<QueueDepth>, MqError> {
        let mut out = Vec::new();
        for name in self.all_queues() {
            let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
            let queue = channel.queue_declare(ShortString::from(name.as_str()), options, FieldTable::default()).await?;
            out.push(QueueDepth { name, messages: queue.message_count(), consumers: queue.consumer_count() });
        }
        Ok(out)
    }

    /// Deletes every queue of this fleet, messages included (tests, bench).
    pub async fn delete(&self, channel: &Channel) -> Result<(), MqError> {
        // The delay queues first (waits and retry tiers): a message whose TTL runs out while its
        // work queue is already gone would be dead-lettered into a queue being deleted. With
        // quorum queues on RabbitMQ 3.10 that race was seen to leave the broker answering no
        // AMQP handshake at all, after tests deleted a fleet whose orders were expiring.
        let delays: Vec<String> = QUEUES
            .iter()
            .flat_map(|q| {
                let mut names: Vec<String> = q.waits_in.map(|wait| self.queue(wait)).into_iter().collect();
                names.extend(self.retry_tiers(q.name).into_iter().map(|d| self.retry_queue(q.name, d)));
                names
            })
            .collect();
        let rest = self.all_queues().into_iter().filter(|name| !delays.contains(name));
        for name in delays.iter().cloned().chain(rest) {
            channel.queue_delete(ShortString::from(name), QueueDeleteOptions::default()).await?;
        }
        Ok(())
    }
}

/// A queue as the broker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDepth {
    pub name: String,
    pub messages: u32,
    pub consumers: u32,
}

/// The README's queue table (between its `queues` markers), from `QUEUES`.
pub fn markdown_table() -> String {
    let mut out = String::from("| queue | carries | from | consumed by | retries |\n|---|---|---|---|---|\n");
    for q in &QUEUES {
        let consumers = if q.consumers.is_empty() {
            "nothing yet: its messages wait".to_owned()
        } else {
            q.consumers.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
        };
        let retry = match q.retry {
            Retry::Short => "`broker.retry_delays_ms`",
            Retry::Long => "`broker.notice_retry_delays_ms`",
        };
        let waits = q.waits_in.map(|w| format!(" (waits in `{w}` first)")).unwrap_or_default();
        out.push_str(&format!("| `{}`{waits} | {} | {} | {consumers} | {retry} |\n", q.name, q.carries, q.from));
    }
    out
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    args
}

/// Dead-letters to `target` through the default exchange, at-least-once: the broker keeps the
/// message until the target queue has confirmed it (which needs `reject-publish` overflow).
fn dead_letter_to(args: &mut FieldTable, target: &str) {
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from("")));
    args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(LongString::from(target)));
    args.insert("x-dead-letter-strategy".into(), AMQPValue::LongString(LongString::from("at-least-once")));
    args.insert("x-overflow".into(), AMQPValue::LongString(LongString::from("reject-publish")));
}

async fn declare(channel: &Channel, name: &str, args: FieldTable) -> Result<(), MqError> {
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(ShortString::from(name), options, args).await?;
    Ok(())
}

/// `15s`, `3m`, `1h`, or `750ms`: readable queue names.
fn delay_label(ms: u64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_namespace_and_a_readable_delay() {
        let settings = crate::config::Settings::load_from(
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config")),
            None,
            Some([("PAYFLEET__BROKER__NAMESPACE".to_owned(), "t1.".to_owned())].into()),
        )
        .unwrap();
        let t = Topology::new(&settings.broker);
        assert_eq!(t.queue(PAY_REQUESTS), "t1.pay.requests");
        assert_eq!(t.dlq(PAY_REQUESTS), "t1.pay.requests.dlq");
        assert_eq!(t.retry_queue(PAY_REQUESTS, 5000), "t1.pay.requests.retry.5s");
        assert_eq!(t.retry_delay(PAY_REQUESTS, 1), Some(1000));
        assert_eq!(t.retry_delay(PAY_REQUESTS, 4), Some(120_000));
        assert_eq!(t.retry_delay(PAY_REQUESTS, 5), None);
        assert_eq!(t.retry_delay(ORDER_NOTIFY, 1), Some(15_000));
        assert_eq!(t.retry_delay(ORDER_NOTIFY, 15), Some(21_600_000));
        assert_eq!(t.retry_delay(ORDER_NOTIFY, 16), None);
        assert!(t.all_queues().contains(&"t1.order.notify.retry.6h".to_owned()));
        assert_eq!(t.retry_delay(PAY_TIMEOUT, 15), Some(21_600_000), "expiry checks outlast a WeChat outage");
        assert!(t.all_queues().contains(&"t1.pay.timeout.wait".to_owned()));
        assert_eq!(delay_label(180_000), "3m");
        assert_eq!(delay_label(750), "750ms");
        assert_eq!(delay_label(7_200_000), "2h");
    }

    #[test]
    fn the_readme_shows_the_queue_table() {
        let readme = include_str!("../../README.md");
        let table = readme
            .split_once("<!-- queues:begin -->\n")
            .and_then(|(_, rest)| rest.split_once("<!-- queues:end -->"))
            .map(|(table, _)| table)
            .expect("README.md has the queues markers");
        assert_eq!(table, markdown_table(), "regenerate it with `payctl topology --markdown`");
    }

    #[test]
    fn every_queue_is_consumed_by_a_binary_of_the_fleet() {
        let manifest = include_str!("../../Cargo.toml");
        for q in &QUEUES {
            for consumer in q.consumers {
                assert!(manifest.contains(&format!("name = \"{consumer}\"")), "{consumer} of {} is a binary", q.name);
            }
        }
    }
}
