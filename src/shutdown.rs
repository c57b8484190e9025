//! How a binary stops: the first SIGTERM or Ctrl-C cancels one token that every long-running
//! task watches (the ingress drains its requests, a worker finishes and acks the batches in
//! hand). The stop has a deadline (`shutdown.deadline_secs`): past it, or at a second SIGTERM or
//! Ctrl-C, the process exits at once. Nothing is lost that way: a delivery not yet acked returns
//! to its queue when the connection drops, and a transaction not yet committed rolls back.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The exit status of a stop cut short (by the deadline or a second signal).
pub const CUT_SHORT: i32 = 75;

/// A token cancelled on the first SIGINT or SIGTERM; the process exits `deadline` later, or at
/// the second signal, if it has not stopped by then.
pub fn on_signal(deadline: Duration) -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        // Cancel first: whatever happens to the log line, the stop begins.
        trigger.cancel();
        tracing::info!(deadline_secs = deadline.as_secs(), "stop signal received, finishing work in hand");
        let why = tokio::select! {
            _ = term.recv() => "a second stop signal",
            _ = int.recv() => "a second stop signal",
            _ = tokio::time::sleep(deadline) => "the stop deadline",
        };
        tracing::warn!("{why}: exiting now; deliveries not acked return to their queues");
        std::process::exit(CUT_SHORT);
    });
    token
}
