//! The black-box tests, one program: each module is an area, all share the harness in `common`
//! (a database, queue namespace and Redis prefix per test, so tests run in parallel). One
//! program links the crate once, where a binary per file linked it ten times.

mod common;

mod consumer;
mod e2e;
mod followups;
mod mixed;
mod outage;
mod payments;
mod properties;
mod races;
mod refunds;
mod settle;
mod stop;
mod wechat_e2e;
mod wechat_sim;
