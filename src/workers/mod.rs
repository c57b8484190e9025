//! The worker binaries' logic, one file per queue, plus the outbox relay.

pub mod pay;
pub mod relay;
