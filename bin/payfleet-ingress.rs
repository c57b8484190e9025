//! payfleet-ingress: the HTTP API. Settings from config/ and PAYFLEET__… variables (README).

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = payfleet::config::Settings::load()?;
    payfleet::telemetry::init_for(&settings);
    let stop = payfleet::shutdown::on_signal(settings.shutdown.deadline());
    let listen = settings.ingress.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("ingress.listen: cannot listen on {listen}"))?;
    payfleet::ingress::run(settings, listener, stop).await
}
