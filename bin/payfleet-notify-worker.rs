//! payfleet-notify-worker: settles WeChat payments from `wechat.notify` and relays the outbox.
//! Settings from config/ and PAYFLEET__… variables (README). Run as many copies as you like.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = payfleet::config::Settings::load()?;
    payfleet::telemetry::init_for(&settings);
    let stop = payfleet::shutdown::on_signal(settings.shutdown.deadline());
    payfleet::workers::notify::run(settings, stop).await
}
