//! The worker binaries' logic, one folder or file per consumer: `pay` (pay requests and expiry
//! checks); `followup` (paid orders' draws); `notify` (WeChat's reports) and `refund` (refunds through WeChat), which the
//! notify-worker runs side by side; the outbox relay every worker runs beside its consumers;
//! `runner`, which wires a worker's consumers and sidecars; and `verdict`, what a failure
//! means for the message at hand.

pub mod followup;
pub mod notify;
pub mod pay;
pub mod refund;
pub mod relay;
mod runner;
mod verdict;
