//! Logging set-up shared by every binary: a tracing subscriber on stderr, text or JSON.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings, Settings};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.filter`.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A log stream that goes away (its reader died) must cost log lines, nothing more: by
    // default the subscriber reports a failed write with eprintln!, which panics on that same
    // closed stream, in whatever task was logging (the one that stops the binary on SIGTERM,
    // say). Failed writes are dropped instead.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false);
    // A second init (tests start several components in one process) keeps the first subscriber.
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}

/// `init`, then says where development secrets came from, if they did: a fleet running on
/// made-up secrets must be plain to see in its log.
pub fn init_for(settings: &Settings) {
    init(&settings.log);
    if let Some(path) = &settings.dev_secrets_from {
        tracing::warn!(
            file = %path.display(),
            "using development secrets made by `payctl demo` (never read when PAYFLEET_ENV is set to anything but development)"
        );
    }
}

/// Prints a line on stdout for whoever started the binary (`payctl demo`, the tests read
/// "<binary> listening on <url>"), and carries on if nobody reads it any more.
pub fn announce(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}
