//! `payctl bench`: K concurrent clients pay fresh orders through the real ingress and
//! pay-worker; prints settled payments per second, latency percentiles, the binaries' peak
//! memory, and audits balances against the ledger afterwards. With `--pgbench` it also runs the
//! pay-worker's own SQL (bench/payment.sql) under pgbench on the same machine, for the ratio.
//!
//! It runs in its own database (`<database>_bench`), queue namespace (`bench.`) and Redis prefix,
//! all removed afterwards unless `--keep`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use secrecy::ExposeSecret;

use super::client::ApiClient;
use super::fleet::{self, Fleet, Logs};
use super::{Admin, declare_topology, migrate};
use crate::config::Settings;
use crate::domain::lottery::PrizeSpec;
use crate::domain::{GoodsKind, Money, PayMethod};
use crate::mq::topology::Topology;
use crate::store::users::Balances;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMethod {
    Integral,
    Balance,
    Money2,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Concurrent clients, each paying its own orders one after another.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Payments per method.
    #[arg(long, default_value_t = 20_000)]
    pub payments: usize,
    /// Methods to measure, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "integral,balance")]
    pub methods: Vec<BenchMethod>,
    /// bcrypt cost of the pay password during the run (production default: 10; one verify at
    /// cost 10 is ~75 ms of CPU, which would make balance pay a bcrypt benchmark).
    #[arg(long, default_value_t = 4)]
    pub bcrypt_cost: u32,
    /// Also run bench/payment.sql under pgbench and print the fleet/pgbench ratio.
    #[arg(long)]
    pub pgbench: bool,
    /// Seconds pgbench runs.
    #[arg(long, default_value_t = 15)]
    pub pgbench_seconds: u32,
    /// Keep the bench database, queues and logs afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// What one client saw of one payment.
struct Sample {
    latency: Duration,
    status: u16,
    code: String,
}

pub async fn run(base: Settings, args: BenchArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.payments < args.clients {
        bail!("--payments must be at least --clients");
    }
    // Ctrl-C, SIGTERM and SIGHUP stop the fleet before the benchmark ends.
    let stop = fleet::stop_signals();
    let database_url = bench_database_url(base.database.url.expose_secret())?;
    let mut overrides = super::demo::throwaway_secrets();
    overrides.extend([
        ("PAYFLEET__DATABASE__URL".to_owned(), database_url.clone()),
        ("PAYFLEET__BROKER__NAMESPACE".to_owned(), "bench.".to_owned()),
        ("PAYFLEET__REDIS__KEY_PREFIX".to_owned(), "payfleet-bench:".to_owned()),
        ("PAYFLEET__PAY__BCRYPT_COST".to_owned(), args.bcrypt_cost.to_string()),
        ("PAYFLEET__INGRESS__LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("PAYFLEET__LOG__FILTER".to_owned(), "warn".to_owned()),
        // A benchmark client pays hundreds of orders a minute: no person does.
        ("PAYFLEET__PAY__PASSWORD_CHECKS_PER_MINUTE".to_owned(), "1000000".to_owned()),
        // Nor that much in a day; the limit is still counted, as in production.
        ("PAYFLEET__PAY__BALANCE__MAX_DAILY_AMOUNT".to_owned(), "1000000000.00".to_owned()),
    ]);
    for kind in ["PAY", "CREATE", "ORDERS", "STATUS", "SMS_CODE"] {
        for per in ["PER_USER", "PER_IP"] {
            overrides.push((format!("PAYFLEET__RATE_LIMIT__{kind}__{per}"), "0".to_owned()));
        }
    }
    let settings = Settings::load_with(&overrides)?;

    println!(
        "payctl bench: {} clients, {} payments per method, pay-password bcrypt cost {} and no rate limits for this run",
        args.clients, args.payments, args.bcrypt_cost
    );
    crate::store::drop_database(&settings.database).await.context("dropping the old bench database")?;
    migrate(&settings).await?;
    declare_topology(&settings).await?;
    let admin = Admin::connect(&settings)?;

    let log_path = PathBuf::from("target/bench-logs/fleet.log");
    let _ = std::fs::remove_file(&log_path);
    let mut fleet = Fleet::new(fleet::bin_dir()?, overrides.iter().cloned().collect(), Logs::file(&log_path)?);
    fleet.spawn(fleet::INGRESS, &[])?;
    fleet.spawn(fleet::PAY_WORKER, &[])?;
    let api = ApiClient::new(&fleet.ingress_url(Duration::from_secs(20)).await?);
    api.wait_ready(Duration::from_secs(30)).await?;
    let mut pids = fleet.pids(fleet::INGRESS);
    pids.extend(fleet.pids(fleet::PAY_WORKER));

    let result = tokio::select! {
        result = measure(&admin, &api, &args) => result,
        _ = stop.cancelled() => Err(anyhow::anyhow!("stopped by a signal")),
    };
    let peaks = pids.iter().map(|pid| (*pid, peak_rss_kib(*pid))).collect::<Vec<_>>();
    fleet.stop(Duration::from_secs(10)).await;
    let rows = result?;

    println!(
        "\n{:<9} {:>9} {:>11} {:>8} {:>8} {:>8} {:>6}",
        "method", "payments", "settled/s", "p50 ms", "p99 ms", "max ms", "202s"
    );
    for row in &rows {
        println!(
            "{:<9} {:>9} {:>11.0} {:>8.1} {:>8.1} {:>8.1} {:>6}",
            row.method, row.settled, row.per_second, row.p50_ms, row.p99_ms, row.max_ms, row.processing
        );
    }
    for ((pid, peak), name) in peaks.iter().zip([fleet::INGRESS, fleet::PAY_WORKER]) {
        println!("peak RSS of {name} (pid {pid}): {:.1} MiB", *peak as f64 / 1024.0);
    }
    let audit = crate::store::ledger::audit(&admin.db).await?;
    println!(
        "audit of balances, ledger chains, profit_pay and orders: {}",
        if audit.is_clean() { "clean".to_owned() } else { format!("{audit:?}") }
    );

    if args.pgbench {
        println!("\nthe pay-worker's SQL, one payment per transaction, on the bare database:");
        let tps = run_pgbench(&database_url, &admin, args.clients, args.pgbench_seconds).await?;
        if let Some(integral) = rows.iter().find(|r| r.method == "integral") {
            println!(
                "fleet/pgbench ratio (integral, against pgbench's best {tps:.0} tps): {:.2}",
                integral.per_second / tps
            );
        }
    }

    if !args.keep {
        cleanup(&settings, &admin).await?;
    } else {
        println!("kept the bench database, queues (namespace bench.) and {}", log_path.display());
    }
    if !audit.is_clean() {
        bail!("the audit found inconsistencies");
    }
    Ok(())
}

/// One method's figures.
struct Row {
    method: &'static str,
    settled: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    processing: usize,
}

async fn measure(admin: &Admin, api: &ApiClient, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let one = Money::parse("1.00").expect("valid");
    let prize = PrizeSpec { name: "bench prize".into(), count: 1 };
    let goods = crate::store::goods::create_goods(&admin.db, GoodsKind::Infinite, "bench draw", one, &[prize]).await?;
    let opening = Balances {
        money: Money::parse("1000000").expect("valid"),
        integral: Money::parse("100000000").expect("valid"),
        money2: Money::parse("1000000").expect("valid"),
    };
    let mut users = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        users.push(admin.create_user(&format!("bench-{i}"), &opening, Some("123456")).await?);
    }
    let ttl = Duration::from_secs(3600);
    let per_client = args.payments / args.clients;

    let mut rows = Vec::new();
    for method in &args.methods {
        let pay_method = match method {
            BenchMethod::Integral => PayMethod::Integral,
            BenchMethod::Balance => PayMethod::Balance,
            BenchMethod::Money2 => PayMethod::Money2,
        };
        let name = pay_method.as_str();
        let mut plans = Vec::with_capacity(args.clients);
        for (i, (user, token)) in users.iter().enumerate() {
            let prefix = format!("B{}{i:03}", &name[..1].to_uppercase());
            let orders =
                crate::store::orders::create_bulk(&admin.db, &prefix, *user, goods, per_client as i64, ttl).await?;
            plans.push((token.clone(), orders));
        }
        print!("{name}: paying {} orders… ", per_client * args.clients);
        use std::io::Write;
        std::io::stdout().flush()?;

        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (token, orders) in plans {
            let (api, method) = (api.clone(), *method);
            tasks.spawn(async move {
                let mut samples = Vec::with_capacity(orders.len());
                for order_no in orders {
                    let t0 = Instant::now();
                    let r = match method {
                        BenchMethod::Integral => api.pay_integral(&token, &order_no, "10.00", "1.00").await,
                        BenchMethod::Balance => api.pay_balance(&token, &order_no, "1.00", "123456").await,
                        BenchMethod::Money2 => api.pay_money2(&token, &order_no, "1.00").await,
                    };
                    let (status, code) = match r {
                        Ok(r) => (r.status, r.code().to_owned()),
                        Err(e) => (0, e.to_string()),
                    };
                    samples.push(Sample { latency: t0.elapsed(), status, code });
                }
                samples
            });
        }
        let mut samples = Vec::new();
        while let Some(done) = tasks.join_next().await {
            samples.extend(done?);
        }
        let answered = started.elapsed();
        let processing = samples.iter().filter(|s| s.status == 202).count();
        // Requests answered 202 are still settling: wait for them before counting.
        let settled = wait_settled(admin, pay_method, samples.len(), Duration::from_secs(60)).await?;
        let elapsed = if processing > 0 { started.elapsed() } else { answered };

        let mut failures: HashMap<String, usize> = HashMap::new();
        for s in samples.iter().filter(|s| s.status != 200 && s.status != 202) {
            *failures.entry(format!("{} {}", s.status, s.code)).or_default() += 1;
        }
        let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1].as_secs_f64()
                * 1000.0
        };
        println!("{settled} settled in {:.2}s", elapsed.as_secs_f64());
        if !failures.is_empty() {
            println!("  failed answers: {failures:?}");
        }
        rows.push(Row {
            method: name,
            settled,
            per_second: settled as f64 / elapsed.as_secs_f64(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: pct(1.0),
            processing,
        });
    }
    Ok(rows)
}

/// Waits until `expected` payments of the method are in the database (or the deadline).
async fn wait_settled(admin: &Admin, method: PayMethod, expected: usize, within: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + within;
    loop {
        let n = crate::store::payments::count_successful(&admin.db, method).await? as usize;
        if n >= expected || Instant::now() >= deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The peak resident set of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn bench_database_url(url: &str) -> anyhow::Result<String> {
    let mut parsed = reqwest::Url::parse(url).context("database.url is not a URL")?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    parsed.set_path(&format!("/{}_bench", if name.is_empty() { "payfleet" } else { &name }));
    Ok(parsed.to_string())
}

/// Runs bench/payment.sql under pgbench at a few client counts (the bare database peaks well
/// below 64 clients on a small machine) and answers the best tps, so the ratio is against the
/// database at its best.
async fn run_pgbench(database_url: &str, admin: &Admin, clients: usize, seconds: u32) -> anyhow::Result<f64> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench");
    let mut counts = vec![4, 16, clients];
    counts.sort_unstable();
    counts.dedup();
    let mut best: f64 = 0.0;
    for c in counts {
        let prepare = tokio::process::Command::new("psql")
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-d", database_url, "-f"])
            .arg(script.join("prepare.sql"))
            .output()
            .await
            .context("running psql (is it installed?)")?;
        if !prepare.status.success() {
            bail!("bench/prepare.sql failed: {}", String::from_utf8_lossy(&prepare.stderr));
        }
        let output = tokio::process::Command::new("pgbench")
            .args(["-n", "-c", &c.to_string(), "-j", "2", "-T", &seconds.to_string(), "-f"])
            .arg(script.join("payment.sql"))
            .arg(database_url)
            .output()
            .await
            .context("running pgbench (is it installed?)")?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!("pgbench failed: {}{}", text, String::from_utf8_lossy(&output.stderr));
        }
        let tps: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("tps = ").and_then(|rest| rest.split_whitespace().next()?.parse().ok()))
            .context("no tps line in pgbench's output")?;
        println!("pgbench bench/payment.sql, {c:>3} clients: {tps:.0} tps");
        best = best.max(tps);
        let audit = crate::store::ledger::audit(&admin.db).await?;
        if !audit.is_clean() {
            bail!("the pgbench run left the ledger inconsistent: {audit:?}");
        }
    }
    Ok(best)
}

async fn cleanup(settings: &Settings, admin: &Admin) -> anyhow::Result<()> {
    admin.db.close().await;
    crate::store::drop_database(&settings.database).await?;
    admin.cache.delete_namespace().await?;
    let conn = crate::mq::connect(&settings.broker, "payctl-bench").await?;
    let channel = conn.create_channel().await?;
    Topology::new(&settings.broker).delete(&channel).await?;
    crate::mq::close(&conn, &channel).await;
    Ok(())
}
