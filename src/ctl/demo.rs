//! `payctl demo`: migrates, declares the topology, starts the fleet as child processes, seeds a
//! user and goods, pays orders with balance, integral and money2 through the HTTP API, and checks
//! every answer and the final balances and ledger. Exits non-zero if any step went wrong.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::client::{ApiClient, ApiResponse};
use super::fleet::{self, Fleet, Logs};
use super::{Admin, declare_topology, migrate};
use crate::config::{DEV_SECRET_VARS, DEV_SECRETS_FILE, Settings, gives_secret, is_development, read_dev_secrets};
use crate::domain::lottery::PrizeSpec;
use crate::domain::{GoodsKind, Money};
use crate::store::users::Balances;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Leave the fleet running after the scenario and print curl lines to try.
    #[arg(long)]
    pub keep_running: bool,
}

/// Counts the scenario's checks and prints each.
struct Checks {
    failed: Vec<String>,
    passed: usize,
}

impl Checks {
    fn expect(&mut self, what: &str, ok: bool, detail: impl std::fmt::Display) {
        if ok {
            self.passed += 1;
            println!("    ✓ {what}");
        } else {
            println!("    ✗ {what}: {detail}");
            self.failed.push(what.to_owned());
        }
    }

    /// Checks an API answer's HTTP status and code.
    fn answer(&mut self, what: &str, r: &ApiResponse, status: u16, code: &str) {
        let ok = r.status == status && r.code() == code;
        self.expect(&format!("{what} → {status} {code}"), ok, format!("got {} {}", r.status, r.body));
    }
}

fn step(n: u32, text: &str) {
    println!("\n── {n}. {text}");
}

fn show(r: &ApiResponse) {
    println!("    {} {}", r.status, compact(&r.body));
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The PAYFLEET__WECHAT__… settings that point a fleet at the wechat-sim whose keys are in
/// `dir` (its payfleet.env) and which listens at `url`.
pub(crate) fn wechat_sim_env(dir: &std::path::Path, url: &str) -> anyhow::Result<Vec<(String, String)>> {
    let path = dir.join("payfleet.env");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut env: Vec<(String, String)> =
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    env.push(("PAYFLEET__WECHAT__API_BASE".into(), url.to_owned()));
    env.push(("PAYFLEET__WECHAT__MP_API_BASE".into(), url.to_owned()));
    env.push(("PAYFLEET__WECHAT__API_VERSION".into(), "v3".into()));
    Ok(env)
}

/// A made-up value for one of `config::DEV_SECRET_VARS`.
fn made_up(var: &str) -> String {
    if var == "PAYFLEET__PAY__SEAL_KEYS" {
        return crate::config::SealKeys::generate("dev1");
    }
    (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// Whether the process environment gives this secret.
fn given(var: &str) -> bool {
    gives_secret(&std::env::vars().collect(), var)
}

/// Made-up secrets for the ones the environment does not give, for one run (the benchmark).
pub(crate) fn throwaway_secrets() -> Vec<(String, String)> {
    DEV_SECRET_VARS.iter().filter(|v| !given(v)).map(|v| ((*v).to_owned(), made_up(v))).collect()
}

/// The demo's secrets for the ones the environment does not give: in development, kept in
/// `DEV_SECRETS_FILE` (made up on the first run) so that `payctl` and the binaries run beside
/// the demo use the same ones; otherwise made up for this run only.
fn demo_secrets() -> anyhow::Result<Vec<(String, String)>> {
    let profile = std::env::var("PAYFLEET_ENV").ok().filter(|p| !p.is_empty());
    if !is_development(profile.as_deref()) {
        let secrets = throwaway_secrets();
        if !secrets.is_empty() {
            println!("PAYFLEET_ENV is {profile:?}: secrets the environment lacks are made up for this run only");
        }
        return Ok(secrets);
    }
    let path = std::path::Path::new(DEV_SECRETS_FILE);
    let mut kept = read_dev_secrets(path);
    let missing: Vec<&str> =
        DEV_SECRET_VARS.iter().copied().filter(|v| !given(v) && !kept.iter().any(|(k, _)| k == v)).collect();
    if !missing.is_empty() {
        kept.extend(missing.iter().map(|v| ((*v).to_owned(), made_up(v))));
        write_private(path, &kept.iter().map(|(k, v)| format!("{k}={v}\n")).collect::<String>())?;
    }
    kept.retain(|(k, _)| !given(k));
    if !kept.is_empty() {
        println!(
            "development secrets ({}) in {DEV_SECRETS_FILE}: payctl and the binaries read them there when the \
             environment has none and PAYFLEET_ENV is unset or development, never otherwise",
            kept.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(kept)
}

/// Writes a file only its owner may read.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

pub async fn run(settings: Settings, args: DemoArgs) -> anyhow::Result<()> {
    // Ctrl-C, SIGTERM and SIGHUP (the terminal closed) all stop the fleet before the demo ends.
    let stop = fleet::stop_signals();
    let secrets = demo_secrets()?;
    let settings = if secrets.is_empty() { settings } else { Settings::load_with(&secrets)? };

    step(1, "migrate the database and declare the queues");
    migrate(&settings).await?;
    declare_topology(&settings).await?;
    println!("    database and topology ready");

    step(2, "start wechat-sim (WeChat Pay on loopback) and the fleet");
    let mut fleet = Fleet::new(fleet::bin_dir()?, secrets.iter().cloned().collect(), Logs::Prefixed);
    let played = tokio::select! {
        played = play(&settings, &mut fleet) => played,
        _ = stop.cancelled() => Err(anyhow::anyhow!("stopped by a signal before the scenario finished")),
    };
    let outcome = match played {
        Ok((checks, seeded, url)) if args.keep_running && checks.failed.is_empty() => {
            print_try_lines(&url, &seeded);
            stop.cancelled().await;
            println!("\nstopping the fleet…");
            Ok(checks)
        }
        other => other.map(|(checks, ..)| checks),
    };
    fleet.stop(Duration::from_secs(10)).await;
    let checks = outcome?;
    if checks.failed.is_empty() {
        println!("\ndemo passed: {} checks", checks.passed);
        Ok(())
    } else {
        bail!(
            "demo failed: {} of {} checks: {}",
            checks.failed.len(),
            checks.failed.len() + checks.passed,
            checks.failed.join("; ")
        )
    }
}

/// Starts wechat-sim and the fleet, and plays the scenario against them; answers the checks,
/// what was seeded, and the ingress's URL.
async fn play(settings: &Settings, fleet: &mut Fleet) -> anyhow::Result<(Checks, Seeded, String)> {
    let sim_dir = std::env::current_dir()?.join("target/wechat-sim");
    let sim_args = ["--listen", "127.0.0.1:0", "--state-dir", &sim_dir.display().to_string()].map(str::to_owned);
    fleet.spawn_with_args(fleet::WECHAT_SIM, &sim_args, &[])?;
    let sim_url = fleet.url_of(fleet::WECHAT_SIM, Duration::from_secs(60)).await?;
    for (key, value) in wechat_sim_env(&sim_dir, &sim_url)? {
        fleet.set_env(&key, &value);
    }
    // Short pay times, so the scenario can show an order running out of its own (and keep
    // every order's expiry check equal: one wait queue, one TTL).
    if std::env::var_os(DEMO_TTL_VAR).is_none() {
        fleet.set_env(DEMO_TTL_VAR, &DEMO_TTL_SECS.to_string());
    }
    fleet.spawn(fleet::INGRESS, &[])?;
    let url = fleet.ingress_url(Duration::from_secs(20)).await?;
    fleet.spawn(
        fleet::PAY_WORKER,
        &[("PAYFLEET__WECHAT__NOTIFY_URL", &format!("{url}/api/v1/payment/wechat/notify"))],
    )?;
    fleet.spawn(
        fleet::NOTIFY_WORKER,
        &[("PAYFLEET__WECHAT__REFUND_NOTIFY_URL", &format!("{url}/api/v1/payment/wechat/refund-notify"))],
    )?;
    fleet.spawn(fleet::FOLLOWUP_WORKER, &[])?;
    let api = ApiClient::new(&url);
    api.wait_ready(Duration::from_secs(30)).await.context("waiting for /readyz")?;
    println!("    ingress ready at {url}, wechat-sim at {sim_url}");
    let (checks, seeded) = scenario(settings, &api, &sim_url).await?;
    Ok((checks, seeded, url))
}

/// The demo fleet's pay time per order, unless the environment sets one.
const DEMO_TTL_VAR: &str = "PAYFLEET__PAY__ORDER_TTL_SECS";
const DEMO_TTL_SECS: u64 = 20;

/// What the scenario seeded, for the curl lines of `--keep-running`.
struct Seeded {
    user: i64,
    token: String,
    goods: i64,
}

async fn scenario(settings: &Settings, api: &ApiClient, sim_url: &str) -> anyhow::Result<(Checks, Seeded)> {
    let admin = Admin::connect(settings)?;
    let mut c = Checks { failed: Vec::new(), passed: 0 };
    let m = |s: &str| Money::parse(s).expect("demo amounts are valid");

    step(3, "seed a user (balance 100.00, integral 1000, money2 20.00) and two goods");
    let opening = Balances { money: m("100.00"), integral: m("1000"), money2: m("20.00") };
    let (user, token) = admin.create_user("demo", &opening, None).await?;
    let prizes =
        |list: &[&str]| list.iter().map(|p| PrizeSpec::parse(p).expect("demo prizes are valid")).collect::<Vec<_>>();
    let box_prizes = prizes(&["A賞 figure:2", "B賞 plush:8", "C賞 keyring:30"]);
    let ticket =
        crate::store::goods::create_goods(&admin.db, GoodsKind::Ichiban, "一番赏 ticket", m("10.00"), &box_prizes)
            .await?;
    let pool_prizes = prizes(&["SSR card:1", "SR card:9", "R card:90"]);
    let draw =
        crate::store::goods::create_goods(&admin.db, GoodsKind::Infinite, "无限赏 draw", m("5.00"), &pool_prizes)
            .await?;
    println!("    user {user}, goods {ticket} (ichiban, 10.00) and {draw} (infinite, 5.00)");

    step(4, "set the pay password with an SMS code");
    let code = admin.issue_sms_code(user).await?;
    println!("    SMS code issued: {code}");
    let r = api.set_pay_password(&token, "123456", &code).await?;
    show(&r);
    c.answer("set pay password", &r, 200, "SUCCESS");
    let r = api.set_pay_password(&token, "123456", &code).await?;
    c.answer("the same SMS code again", &r, 422, "SMS_CODE_INVALID");

    step(5, "a mixed payment left unpaid: balance 2.00 and 30 points held, its WeChat part (5.00) never paid");
    let order = api.create_order(&token, ticket, 1).await?;
    let idle = order.field("order_no").to_owned();
    let body =
        mixed_body(&idle, &[("balance", "2.00", None), ("integral", "30", Some("3.00")), ("wechat", "5.00", None)]);
    let r = api.post("/api/v1/payment/mixed/pay", Some(&token), &body).await?;
    show(&r);
    c.answer("mixed pay with a WeChat part", &r, 200, "SUCCESS");
    c.expect(
        "PAYING, with pay params for the WeChat part",
        r.field("pay_status") == "PAYING" && !r.data()["wechat_pay_info"]["paySign"].is_null(),
        r.data(),
    );
    println!("    nobody pays it: in {DEMO_TTL_SECS} s its pay time runs out (step 16)");

    step(6, "order one ticket (10.00) and pay it with balance");
    let order = api.create_order(&token, ticket, 1).await?;
    show(&order);
    c.answer("create order", &order, 200, "SUCCESS");
    let first = order.field("order_no").to_owned();
    let r = api.pay_balance(&token, &first, "10.00", "123456").await?;
    show(&r);
    c.answer("balance pay", &r, 200, "SUCCESS");
    c.expect(
        "remaining_balance is 88.00 (2.00 held)",
        r.field("remaining_balance") == "88.00",
        r.field("remaining_balance"),
    );
    let pay_no = r.field("pay_no").to_owned();

    step(7, "pay the same order again: refused, nothing deducted");
    let r = api.pay_balance(&token, &first, "10.00", "123456").await?;
    show(&r);
    c.answer("second pay of a paid order", &r, 409, "ORDERPAID");
    c.expect("ORDERPAID names the original pay_no", r.field("pay_no") == pay_no, r.field("pay_no"));

    step(8, "a wrong pay password, then the right one");
    let order = api.create_order(&token, ticket, 1).await?;
    let second = order.field("order_no").to_owned();
    let r = api.pay_balance(&token, &second, "10.00", "654321").await?;
    show(&r);
    c.answer("wrong password", &r, 403, "PASSWORD_WRONG");
    c.expect("4 tries left", r.data()["tries_left"] == 4, r.data());
    let r = api.pay_balance(&token, &second, "10.00", "123456").await?;
    show(&r);
    c.answer("right password", &r, 200, "SUCCESS");
    c.expect("remaining_balance is 78.00", r.field("remaining_balance") == "78.00", r.field("remaining_balance"));

    step(9, "order two draws (10.00) and pay them with 100 integral points");
    let order = api.create_order(&token, draw, 2).await?;
    let third = order.field("order_no").to_owned();
    c.expect("order amount is 10.00", order.field("amount") == "10.00", order.field("amount"));
    let r = api.pay_integral(&token, &third, "100.00", "10.00").await?;
    show(&r);
    c.answer("integral pay", &r, 200, "SUCCESS");
    c.expect(
        "remaining_integral is 870.00 (30 held)",
        r.field("remaining_integral") == "870.00",
        r.field("remaining_integral"),
    );

    step(10, "order one draw (5.00) and pay it with money2");
    let order = api.create_order(&token, draw, 1).await?;
    let fourth = order.field("order_no").to_owned();
    let r = api.pay_money2(&token, &fourth, "5.00").await?;
    show(&r);
    c.answer("money2 pay", &r, 200, "SUCCESS");
    c.expect("remaining_money2 is 15.00", r.field("remaining_money2") == "15.00", r.field("remaining_money2"));

    step(11, "refusals that change nothing");
    let order = api.create_order(&token, ticket, 3).await?;
    let fifth = order.field("order_no").to_owned();
    let r = api.pay_money2(&token, &fifth, "30.00").await?;
    show(&r);
    c.answer("money2 pay of 30.00 with 15.00 left", &r, 409, "NOTENOUGH");
    let r = api.pay_balance(&token, &fifth, "29.99", "123456").await?;
    c.answer("amount not the order amount", &r, 422, "AMOUNT_MISMATCH");
    let r = api.pay_balance(&token, &fifth, "30.001", "123456").await?;
    c.answer("three decimals", &r, 422, "VALIDATION");
    let r = api.pay_balance(&token, "ORD000", "1.00", "123456").await?;
    c.answer("unknown order", &r, 404, "NOT_FOUND");
    let r = api.pay_balance("not-a-token", &fifth, "30.00", "123456").await?;
    c.answer("bad token", &r, 401, "UNAUTHORIZED");

    step(12, "order another ticket (10.00) and pay it with WeChat (wechat-sim plays WeChat and the payer)");
    let order = api.create_order(&token, ticket, 1).await?;
    let sixth = order.field("order_no").to_owned();
    let body = serde_json::json!({
        "order_no": sixth, "amount": "10.00", "description": "一番赏 ticket",
        "openid": "oDemoPayer0000000000000000000", "client_ip": "127.0.0.1", "trade_type": "JSAPI",
    });
    let r = api.post("/api/v1/payment/wechat/create", Some(&token), &body).await?;
    show(&r);
    c.answer("WeChat create (JSAPI)", &r, 200, "SUCCESS");
    c.expect(
        "pay params for wx.requestPayment",
        !r.field("paySign").is_empty() && r.field("signType") == "RSA",
        r.data(),
    );
    let pay_no = r.field("pay_no").to_owned();
    let status = api.status(&token, &sixth).await?;
    c.expect("status PAYING while the payer pays", status.field("pay_status") == "PAYING", status.data());
    println!("    the payer pays at WeChat (POST {sim_url}/sim/pay)…");
    let http = reqwest::Client::new();
    http.post(format!("{sim_url}/sim/pay"))
        .json(&serde_json::json!({ "out_trade_no": pay_no }))
        .send()
        .await?
        .error_for_status()?;
    let settled = wait_status(api, &token, &sixth, "SUCCESS", Duration::from_secs(10)).await?;
    c.expect("the notify arrived and settled the order", settled, "still not paid after 10 s");
    let records: Vec<serde_json::Value> =
        http.get(format!("{sim_url}/sim/records?out_trade_no={pay_no}")).send().await?.json().await?;
    for record in records.iter().filter(|r| r["kind"] == "notify") {
        println!("    wechat-sim sent the notify to {} → HTTP {}", record["endpoint"], record["status"]);
    }

    step(13, "a mixed payment: balance 5.00 + 50 integral points (5.00), one transaction, all or nothing");
    let order = api.create_order(&token, ticket, 1).await?;
    let mixed = order.field("order_no").to_owned();
    let body = mixed_body(&mixed, &[("balance", "5.00", None), ("integral", "50", Some("5.00"))]);
    let r = api.post("/api/v1/payment/mixed/pay", Some(&token), &body).await?;
    show(&r);
    c.answer("mixed pay", &r, 200, "SUCCESS");
    c.expect(
        "paid at once, 73.00 balance and 820 points left",
        r.field("pay_status") == "SUCCESS"
            && r.field("remaining_balance") == "73.00"
            && r.field("remaining_integral") == "820.00",
        r.data(),
    );

    step(14, "a mixed payment with a WeChat part: balance 3.00 + money2 2.00 held, WeChat 5.00 paid at wechat-sim");
    let order = api.create_order(&token, ticket, 1).await?;
    let held = order.field("order_no").to_owned();
    let body = mixed_body(&held, &[("balance", "3.00", None), ("money2", "2.00", None), ("wechat", "5.00", None)]);
    let r = api.post("/api/v1/payment/mixed/pay", Some(&token), &body).await?;
    show(&r);
    c.answer("mixed pay with a WeChat part", &r, 200, "SUCCESS");
    let status = api.status(&token, &held).await?;
    let parts = part_statuses(&status);
    println!("    parts: {}", parts.join(", "));
    let wechat_part = status.data()["payment_details"]
        .as_array()
        .and_then(|d| d.iter().find(|p| p["method"] == "wechat"))
        .and_then(|p| p["pay_no"].as_str())
        .unwrap_or_default()
        .to_owned();
    c.expect(
        "balance and money2 HELD, WeChat PAYING",
        parts == ["balance HELD", "money2 HELD", "wechat PAYING"],
        parts.join(", "),
    );
    http.post(format!("{sim_url}/sim/pay"))
        .json(&serde_json::json!({ "out_trade_no": wechat_part }))
        .send()
        .await?
        .error_for_status()?;
    let settled = wait_status(api, &token, &held, "SUCCESS", Duration::from_secs(10)).await?;
    c.expect("the notify settled it and made the holds final", settled, "still not paid after 10 s");
    let status = api.status(&token, &held).await?;
    show(&status);
    c.expect(
        "MIXED, every part SUCCESS",
        status.field("pay_type") == "MIXED" && part_statuses(&status).iter().all(|p| p.ends_with("SUCCESS")),
        status.data(),
    );

    step(15, "an operator refunds 3.00 of step 13's order: integral goes back before balance");
    let operator = admin.tokens()?.issue_operator("demo-operator").context("the demo makes up the operators' key")?;
    let body = serde_json::json!({ "refund_no": "DEMO-R1", "amount": "3.00", "reason": "one prize out of stock" });
    let r = api.post(&format!("/admin/v1/orders/{mixed}/refunds"), Some(&operator), &body).await?;
    show(&r);
    c.answer("partial refund (operator token)", &r, 200, "SUCCESS");
    let parts = r.data()["parts"].as_array().cloned().unwrap_or_default();
    c.expect(
        "30 points back from the integral part",
        parts.len() == 1 && parts[0]["method"] == "integral" && parts[0]["asset_amount"] == "30.00",
        r.data(),
    );
    let again = api.post(&format!("/admin/v1/orders/{mixed}/refunds"), Some(&operator), &body).await?;
    c.expect(
        "the same refund_no again refunds nothing more",
        again.status == 200 && again.data()["parts"] == r.data()["parts"],
        again.body,
    );
    let status = api.status(&token, &mixed).await?;
    c.expect(
        "the payer sees PARTIALLY_REFUNDED, 3.00",
        status.field("pay_status") == "PARTIALLY_REFUNDED" && status.field("refunded_amount") == "3.00",
        status.data(),
    );

    step(16, "an operator refunds 4.00 of step 12's WeChat order: through WeChat, settled by its refund notify");
    let body = serde_json::json!({ "refund_no": "DEMO-R2", "amount": "4.00", "reason": "shipping was late" });
    let r = api.post(&format!("/admin/v1/orders/{sixth}/refunds"), Some(&operator), &body).await?;
    show(&r);
    c.answer("partial refund of a WeChat payment", &r, 200, "SUCCESS");
    c.expect("PROCESSING until WeChat pays it out", r.field("status") == "PROCESSING", r.data());
    let settled = wait_refund(api, &operator, &sixth, "DEMO-R2", Duration::from_secs(15)).await?;
    c.expect("the refund notify settled it", settled.as_deref() == Some("SUCCESS"), format!("{settled:?}"));
    let records: Vec<serde_json::Value> =
        http.get(format!("{sim_url}/sim/records?out_trade_no={pay_no}")).send().await?.json().await?;
    for record in records.iter().filter(|r| r["detail"].as_str().is_some_and(|d| d.starts_with("refund"))) {
        println!(
            "    wechat-sim: {} {} → HTTP {} ({})",
            record["kind"], record["endpoint"], record["status"], record["detail"]
        );
    }
    let status = api.status(&token, &sixth).await?;
    c.expect(
        "the payer sees PARTIALLY_REFUNDED, 4.00",
        status.field("pay_status") == "PARTIALLY_REFUNDED" && status.field("refunded_amount") == "4.00",
        status.data(),
    );

    step(17, "the unpaid mixed payment of step 5: its pay time runs out, the holds come back");
    let closed = wait_status(api, &token, &idle, "CLOSED", Duration::from_secs(DEMO_TTL_SECS + 30)).await?;
    let status = api.status(&token, &idle).await?;
    let parts = part_statuses(&status);
    println!("    parts: {}", parts.join(", "));
    c.expect(
        "closed, balance and integral RETURNED, the WeChat trade CLOSED",
        closed && parts == ["balance RETURNED", "integral RETURNED", "wechat CLOSED"],
        parts.join(", "),
    );

    step(18, "payment status");
    let r = api.status(&token, &first).await?;
    show(&r);
    c.answer("status", &r, 200, "SUCCESS");
    c.expect(
        "pay_status SUCCESS via BALANCE",
        r.field("pay_status") == "SUCCESS" && r.field("pay_type") == "BALANCE",
        r.data(),
    );

    step(19, "final balances and the ledger");
    let balances = crate::store::users::balances(&admin.db, user).await?.context("the demo user exists")?;
    println!("    balance {}  integral {}  money2 {}", balances.money, balances.integral, balances.money2);
    c.expect(
        "balances are 72.00 / 880.00 / 13.00",
        balances == Balances { money: m("72.00"), integral: m("880.00"), money2: m("13.00") },
        format!("{balances:?}"),
    );
    let ledger = ledger_lines(&admin, user).await?;
    for line in &ledger {
        println!("    {line}");
    }
    c.expect(
        "thirteen ledger rows (two holds, their returns and a refund among them)",
        ledger.len() == 13,
        ledger.len(),
    );
    let audit = crate::store::ledger::audit(&admin.db).await?;
    c.expect("ledger chains, accounts, profit_pay and orders agree", audit.is_clean(), format!("{audit:?}"));
    let relayed = wait_outbox_drained(&admin).await?;
    c.expect("every order-paid event relayed to order.followup", relayed, "outbox rows still unsent");
    Ok((c, Seeded { user, token, goods: ticket }))
}

/// A mixed pay body: (type, amount, money_equivalent) per part, the demo payer's openid and
/// pay password.
fn mixed_body(order_no: &str, parts: &[(&str, &str, Option<&str>)]) -> Value {
    let methods: Vec<Value> = parts
        .iter()
        .map(|(kind, amount, yuan)| serde_json::json!({ "type": kind, "amount": amount, "money_equivalent": yuan }))
        .collect();
    let total = parts
        .iter()
        .map(|(_, amount, yuan)| Money::parse(yuan.unwrap_or(amount)).expect("demo amounts are valid"))
        .fold(Money::ZERO, |sum, part| sum.checked_add(part).expect("demo amounts fit"));
    serde_json::json!({
        "order_no": order_no, "total_amount": total.to_string(), "payment_methods": methods,
        "pay_password": "123456", "openid": "oDemoPayer0000000000000000000", "trade_type": "JSAPI",
    })
}

/// "method STATUS" for each part in a status answer's payment_details.
fn part_statuses(status: &ApiResponse) -> Vec<String> {
    status.data()["payment_details"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .map(|p| format!("{} {}", p["method"].as_str().unwrap_or("?"), p["status"].as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls an order's status until its pay_status is `wanted`; false if it is not within `within`.
async fn wait_status(
    api: &ApiClient,
    token: &str,
    order_no: &str,
    wanted: &str,
    within: Duration,
) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if api.status(token, order_no).await?.field("pay_status") == wanted {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(false)
}

/// Waits until the refund is no longer PROCESSING; answers its status (None: not listed).
async fn wait_refund(
    api: &ApiClient,
    operator: &str,
    order_no: &str,
    refund_no: &str,
    within: Duration,
) -> anyhow::Result<Option<String>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let listed = api.get(&format!("/admin/v1/orders/{order_no}/refunds"), Some(operator)).await?;
        let status = listed.data()["refunds"]
            .as_array()
            .and_then(|all| all.iter().find(|r| r["refund_no"] == refund_no))
            .and_then(|r| r["status"].as_str())
            .map(str::to_owned);
        if status.as_deref() != Some("PROCESSING") || tokio::time::Instant::now() >= deadline {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ledger_lines(admin: &Admin, user: i64) -> anyhow::Result<Vec<String>> {
    Ok(crate::store::ledger::entries(&admin.db, user)
        .await?
        .into_iter()
        .map(|e| {
            format!(
                "{:<8} {:>8} → {:>8}  {:<6} {} {}",
                e.asset,
                e.change,
                e.balance_after,
                e.reason,
                e.order_no.unwrap_or_default(),
                e.pay_no.unwrap_or_default()
            )
        })
        .collect())
}

async fn wait_outbox_drained(admin: &Admin) -> anyhow::Result<bool> {
    for _ in 0..50 {
        if crate::store::outbox::unsent_count(&admin.db).await? == 0 {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

fn print_try_lines(url: &str, seeded: &Seeded) {
    let Seeded { user, token, goods } = seeded;
    println!(
        "\nThe fleet keeps running (Ctrl-C, SIGTERM or closing the terminal stops it). User {user} has pay password 123456. Try:"
    );
    if std::env::var_os(DEMO_TTL_VAR).is_none() {
        println!("  (an order stays payable for {DEMO_TTL_SECS} s here; set {DEMO_TTL_VAR} for longer)");
    }
    println!("  TOKEN={token}");
    println!(
        "  curl -s -X POST {url}/api/v1/orders -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' -d '{{\"goods_id\":{goods},\"num\":1}}'"
    );
    println!(
        "  curl -s -X POST {url}/api/v1/payment/balance/pay -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' -d '{{\"order_no\":\"<order_no>\",\"amount\":\"10.00\",\"pay_password\":\"123456\"}}'"
    );
    println!(
        "  curl -s -X POST {url}/api/v1/payment/mixed/pay -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' -d '{{\"order_no\":\"<order_no>\",\"total_amount\":\"10.00\",\"pay_password\":\"123456\",\"payment_methods\":[{{\"type\":\"balance\",\"amount\":\"4.00\"}},{{\"type\":\"integral\",\"amount\":\"60\",\"money_equivalent\":\"6.00\"}}]}}'"
    );
    println!("  curl -s {url}/api/v1/payment/<order_no>/status -H \"Authorization: Bearer $TOKEN\"");
    println!("  curl -s {url}/readyz");
}
