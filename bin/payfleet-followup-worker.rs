//! payfleet-followup-worker: serves paid orders from `order.followup` (lottery draws) and relays
//! the outbox. Settings from config/ and PAYFLEET__… variables (README). Run as many copies as
//! you like.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = payfleet::config::Settings::load()?;
    payfleet::telemetry::init_for(&settings);
    let stop = payfleet::shutdown::on_signal(settings.shutdown.deadline());
    payfleet::workers::followup::run(settings, stop).await
}
