//! wechat-sim: WeChat Pay v2 and v3 on loopback with its own keys (README, "wechat-sim").

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(name = "wechat-sim", about = "A WeChat Pay simulator for payfleet's quick start and tests")]
struct Cli {
    #[command(flatten)]
    sim: payfleet::sim::SimArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log = payfleet::config::LogSettings { filter: "info".into(), format: payfleet::config::LogFormat::Text };
    payfleet::telemetry::init(&log);
    let listener = tokio::net::TcpListener::bind(cli.sim.listen)
        .await
        .with_context(|| format!("--listen: cannot listen on {}", cli.sim.listen))?;
    payfleet::sim::run(cli.sim, listener, payfleet::shutdown::on_signal(std::time::Duration::from_secs(25))).await
}
