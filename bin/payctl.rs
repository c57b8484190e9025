//! payctl: migrations, topology, seed data, tokens, the demo and the benchmark (README).

use clap::Parser;
use payfleet::ctl::{self, Cli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = payfleet::config::Settings::load()?;
    payfleet::telemetry::init_for(&settings);
    ctl::run(cli, settings).await
}
