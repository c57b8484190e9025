//! payfleet: a payment system shaped as a message-queue driven worker fleet.
//!
//! The life of a payment (README, "The life of a payment"):
//! 1. the mini-program calls `POST /api/v1/payment/balance/pay` with a Bearer JWT;
//! 2. `ingress` authenticates, validates, seals the pay password, and publishes `PayRequested`
//!    to `pay.requests` (`mq::rpc`), counting it sent only on the broker's publisher confirm;
//! 3. `workers::pay` takes the deliveries at hand as a batch (`mq::consumer`) and verifies pay
//!    passwords (`password`, attempts in `cache`);
//! 4. `store::payments` applies the batch in one transaction: orders and users locked, a
//!    conditional deduction per account, payments, ledger, profit_pay and outbox rows;
//! 5. the worker replies on `amq.rabbitmq.reply-to`, then acks; the ingress answers 200, or 202
//!    PROCESSING if the reply did not come in time;
//! 6. `workers::relay` publishes the outbox (order paid → `order.followup`).
//!
//! A WeChat payment: the pay-worker begins it and calls WeChat's prepay (`workers::pay`,
//! `wechat`); the ingress verifies WeChat's notify and publishes it to `wechat.notify`;
//! `workers::notify` settles it; `workers::pay::timeout` closes what runs out of pay time;
//! `sim` is the WeChat simulator.
//!
//! The modules, one line each (README, "Layout"):
//! - `domain`: money, orders and their states, payments, error codes; no I/O;
//! - `config`, `telemetry`, `shutdown`: settings, logs, stopping, for every binary;
//! - `auth` (JWT), `password` (pay passwords, sealed for the broker);
//! - `store`: PostgreSQL, every SQL statement, the outbox, `store::Error`;
//! - `cache`: Redis (password attempts, SMS codes, notify nonces, rate limits);
//! - `mq`: RabbitMQ (the queue table, events, confirmed publishing, the consumer framework);
//! - `ingress`: the HTTP API (axum);
//! - `workers`: the pay-worker, the notify-worker, the outbox relay;
//! - `channel`, `channel_sync`, `wechat`: WeChat Pay v2 and v3, and keeping in step with it;
//! - `sim`: wechat-sim; `ctl`: payctl (demo, bench, the fleet supervisor).

pub mod auth;
pub mod cache;
pub mod channel;
pub mod channel_sync;
pub mod config;
pub mod ctl;
pub mod domain;
pub mod ingress;
pub mod mq;
pub mod password;
pub mod shutdown;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod wechat;
pub mod workers;
