//! Stopping, as operators and new users do it: binaries whose log stream went away keep working
//! and stop on SIGTERM; the demo's children never outlive it, however it ends; a worker stopped
//! in the middle of a batch loses nothing.

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::sim::SimControl;
use common::{TestEnv, eventually, m};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use payfleet::ctl::client::ApiClient;
use payfleet::mq::topology::{PAY_REQUESTS, Topology};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;

fn binary(name: &str) -> &'static str {
    match name {
        "payfleet-ingress" => env!("CARGO_BIN_EXE_payfleet-ingress"),
        "payfleet-pay-worker" => env!("CARGO_BIN_EXE_payfleet-pay-worker"),
        "payfleet-notify-worker" => env!("CARGO_BIN_EXE_payfleet-notify-worker"),
        "wechat-sim" => env!("CARGO_BIN_EXE_wechat-sim"),
        _ => env!("CARGO_BIN_EXE_payctl"),
    }
}

/// Starts a binary with stdout and stderr on pipes this test reads until `ready` appears in a
/// line of either; answers the child, that line, and the pipes (dropping them closes their
/// reading ends, as a log collector that died would).
async fn start(
    name: &str,
    args: &[&str],
    env: &[(String, String)],
    ready: &str,
) -> (Child, String, Vec<tokio::io::Lines<BufReader<Box<dyn tokio::io::AsyncRead + Unpin + Send>>>>) {
    let mut child = Command::new(binary(name))
        .args(args)
        .env("PAYFLEET_CONFIG_DIR", common::config_dir())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out: Box<dyn tokio::io::AsyncRead + Unpin + Send> = Box::new(child.stdout.take().unwrap());
    let err: Box<dyn tokio::io::AsyncRead + Unpin + Send> = Box::new(child.stderr.take().unwrap());
    let mut streams = vec![BufReader::new(out).lines(), BufReader::new(err).lines()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let [a, b] = &mut streams[..] else { unreachable!() };
        let line = tokio::select! {
            line = a.next_line() => line,
            line = b.next_line() => line,
            _ = tokio::time::sleep_until(deadline) => panic!("{name} did not say {ready:?} in time"),
        };
        match line {
            Ok(Some(line)) if line.contains(ready) => return (child, line, streams),
            Ok(Some(_)) => {}
            other => panic!("{name} ended its output before {ready:?}: {other:?}"),
        }
    }
}

/// The URL at the end of a "… listening on <url>" line.
fn url_in(line: &str) -> String {
    line.rsplit(' ').next().unwrap().trim().to_owned()
}

/// Sends SIGTERM and answers the exit code and how long the stop took.
async fn terminate(child: &mut Child) -> (Option<i32>, Duration) {
    let started = std::time::Instant::now();
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("still running 20 s after SIGTERM")
        .unwrap();
    (status.code(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_whose_log_stream_is_gone_keep_working_and_stop_on_sigterm() {
    let env = TestEnv::with(&[("PAYFLEET__SHUTDOWN__DEADLINE_SECS", "5")]).await;
    let state = common::sim::state_dir();
    let state_arg = state.display().to_string();
    let base: Vec<(String, String)> = env.env.clone().into_iter().collect();
    let sim_args = ["--listen", "127.0.0.1:0", "--state-dir", &state_arg, "--notify-schedule-ms", "300,600"];
    let (mut sim, line, sim_logs) = start("wechat-sim", &sim_args, &base, "wechat-sim listening on").await;
    let sim_url = url_in(&line);
    let mut fleet_env = base.clone();
    fleet_env.extend(common::sim::fleet_env(&state, &sim_url));
    let (mut ingress, line, ingress_logs) = start("payfleet-ingress", &[], &fleet_env, "listening on").await;
    let api = ApiClient::new(&url_in(&line));
    fleet_env.push(("PAYFLEET__WECHAT__NOTIFY_URL".into(), format!("{}/api/v1/payment/wechat/notify", api.base())));
    let (mut pay, _, pay_logs) = start("payfleet-pay-worker", &[], &fleet_env, "consuming").await;
    let (mut notify, _, notify_logs) = start("payfleet-notify-worker", &[], &fleet_env, "consuming").await;
    api.wait_ready(Duration::from_secs(30)).await.unwrap();

    // Whoever read their logs is gone.
    drop((sim_logs, ingress_logs, pay_logs, notify_logs));
    // They keep working, logging all the while: a balance payment, and a WeChat one, notify
    // and all.
    let (_, token) = env.user("10.00", "0", "0").await;
    let goods = env.goods("10.00").await;
    let order = api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();
    let r = api.pay_balance(&token, &order, "10.00", "123456").await.unwrap();
    assert_eq!((r.status, r.field("remaining_balance")), (200, "0.00"), "{:?}", r.body);
    let order = api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();
    let create = json!({ "order_no": order, "amount": "10.00", "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" });
    let r = api.post("/api/v1/payment/wechat/create", Some(&token), &create).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    SimControl::new(&sim_url).pay(r.field("pay_no"), None).await;
    eventually(Duration::from_secs(20), "the notify settles the order", || async {
        api.status(&token, &order).await.unwrap().field("pay_status") == "SUCCESS"
    })
    .await;

    // And each stops on SIGTERM, well within its deadline, as a clean stop.
    for (name, child) in [
        ("payfleet-ingress", &mut ingress),
        ("payfleet-pay-worker", &mut pay),
        ("payfleet-notify-worker", &mut notify),
        ("wechat-sim", &mut sim),
    ] {
        let (code, took) = terminate(child).await;
        assert_eq!(code, Some(0), "{name} stopped cleanly");
        assert!(took < Duration::from_secs(5), "{name} took {took:?}");
    }
    env.audit_is_clean().await;
    let _ = std::fs::remove_dir_all(&state);
}

/// `payctl demo --keep-running` as a new user starts it, in a directory of its own; answers the
/// demo, its output, the ingress's port and the pids of its children once the fleet runs.
async fn demo(env: &TestEnv, dir: &std::path::Path) -> (Child, mpsc::UnboundedReceiver<String>, u16, Vec<i32>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut child = Command::new(binary("payctl"))
        .args(["demo", "--keep-running"])
        .current_dir(dir)
        // Run under cargo, the demo would first `cargo build --bins`: on a fresh clone a rebuild
        // with other features that outlasts this test's patience. The binaries are built.
        .env_remove("CARGO")
        .env_remove("CARGO_MANIFEST_DIR")
        .env("PAYFLEET_CONFIG_DIR", common::config_dir())
        .envs(&env.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Read everything it prints, so it never blocks on a full pipe.
    let (tx, mut lines) = mpsc::unbounded_channel();
    let stdout: ChildStdout = child.stdout.take().unwrap();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            let _ = tx.send(line);
        }
    });
    let mut port = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.recv()).await.expect("the demo reaches keep-running");
        let line = line.expect("the demo ended before keep-running");
        if let Some(rest) = line.trim().strip_prefix("ingress ready at http://127.0.0.1:") {
            port = rest.split(',').next().and_then(|p| p.parse().ok());
        }
        if line.contains("The fleet keeps running") {
            break;
        }
    }
    let children = children_of(child.id().unwrap() as i32);
    assert_eq!(children.len(), 5, "wechat-sim, the ingress and three workers: {children:?}");
    (child, lines, port.expect("the demo printed the ingress's address"), children)
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let children = std::fs::read_to_string(task.unwrap().path().join("children")).unwrap_or_default();
        out.extend(children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    out
}

/// Whether a process still runs (a zombie waiting to be reaped does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

async fn nothing_outlives_the_demo(signal: Signal) {
    let env = TestEnv::new().await;
    let dir = std::env::temp_dir().join(format!("payfleet-demo-stop-{}", env.id));
    let (mut demo, _lines, port, children) = demo(&env, &dir).await;
    kill(Pid::from_raw(demo.id().unwrap() as i32), signal).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), demo.wait()).await.expect("the demo ends").unwrap();
    if signal != Signal::SIGKILL {
        assert!(status.success(), "a demo stopped by {signal} stops its fleet and passes: {status}");
    }
    eventually(Duration::from_secs(15), "every child of the demo gone", || async {
        children.iter().all(|pid| !alive(*pid))
    })
    .await;
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the ingress's port is free again");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_outlives_the_demo_sent_sigterm() {
    nothing_outlives_the_demo(Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_outlives_the_demo_sent_sighup() {
    nothing_outlives_the_demo(Signal::SIGHUP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_outlives_the_demo_killed() {
    nothing_outlives_the_demo(Signal::SIGKILL).await;
}

/// How a stop is cut short.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CutShort {
    /// The stop deadline (one second) passes.
    Deadline,
    /// A second SIGTERM comes (the deadline is far).
    SecondSignal,
}

async fn a_worker_stopped_in_the_middle_of_a_batch_loses_nothing(cut: CutShort) {
    // Balance payments of two users, each a bcrypt check (cost 15, seconds) slower than the
    // worker's one-second stop deadline, however the deliveries fall into batches.
    let deadline = if cut == CutShort::Deadline { "1" } else { "60" };
    let env = TestEnv::with(&[
        ("PAYFLEET__SHUTDOWN__DEADLINE_SECS", deadline),
        ("PAYFLEET__PAY__BCRYPT_COST", "15"),
        ("PAYFLEET__PAY_WORKER__CONCURRENCY", "1"),
        ("PAYFLEET__INGRESS__REPLY_TIMEOUT_MS", "200"),
    ])
    .await;
    let mut fleet = env.fleet("stop-mid-batch");
    fleet.spawn(payfleet::ctl::fleet::INGRESS, &[]).unwrap();
    let api = ApiClient::new(&fleet.ingress_url(Duration::from_secs(20)).await.unwrap());
    let goods = env.goods("1.00").await;
    // One slow hash, shared: the same password and pepper verify against it for every user.
    let hash = env.admin.passwords().unwrap().hash("123456").await.unwrap();
    let tokens = env.admin.tokens().unwrap();
    let opening = payfleet::store::users::Balances { money: m("5.00"), integral: m("0"), money2: m("0") };
    let mut payers = Vec::new();
    for _ in 0..2 {
        let user = payfleet::store::users::create_user(&env.admin.db, "slow", &opening, Some(&hash)).await.unwrap();
        payers.push((user, tokens.issue(user), env.orders(user, goods, 1).await.remove(0)));
    }
    let answers = futures_util::future::join_all(
        payers.iter().map(|(_, token, order)| api.pay_balance(token, order, "1.00", "123456")),
    )
    .await;
    assert!(answers.iter().all(|r| r.as_ref().unwrap().status == 202), "queued, no worker yet");

    let base: Vec<(String, String)> = env.env.clone().into_iter().collect();
    let (mut worker, _, _logs) = start("payfleet-pay-worker", &[], &base, "consuming").await;
    // The worker has taken the batch and is checking passwords when the stop comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if cut == CutShort::SecondSignal {
        kill(Pid::from_raw(worker.id().unwrap() as i32), Signal::SIGTERM).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, took) = terminate(&mut worker).await;
    assert_eq!(code, Some(payfleet::shutdown::CUT_SHORT), "{cut:?} cut the batch short ({took:?})");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // The next worker finds the batch back in the queue and settles each payment once.
    fleet.spawn(payfleet::ctl::fleet::PAY_WORKER, &[]).unwrap();
    let queue = Topology::new(&env.settings.broker).queue(PAY_REQUESTS);
    eventually(Duration::from_secs(60), "every payment settled", || async {
        let paid = payfleet::store::payments::count_successful(&env.admin.db, payfleet::domain::PayMethod::Balance)
            .await
            .unwrap();
        paid == 2 && env.queue_depth(&queue).await == 0
    })
    .await;
    for (user, _, _) in &payers {
        assert_eq!(env.balances(*user).await.money, m("4.00"), "paid once");
    }
    fleet.stop(Duration::from_secs(15)).await;
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_short_by_its_stop_deadline_mid_batch_loses_nothing() {
    a_worker_stopped_in_the_middle_of_a_batch_loses_nothing(CutShort::Deadline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_short_by_a_second_sigterm_mid_batch_loses_nothing() {
    a_worker_stopped_in_the_middle_of_a_batch_loses_nothing(CutShort::SecondSignal).await;
}
