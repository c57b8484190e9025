//! End to end: the real `payfleet-ingress` and `payfleet-pay-worker` binaries, paying through
//! HTTP, being killed, scaled, and misconfigured.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestEnv, eventually, m};
use payfleet::ctl::client::ApiClient;
use payfleet::ctl::fleet::{INGRESS, PAY_WORKER};
use payfleet::mq::topology::{PAY_REQUESTS, Topology};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binaries_pay_through_http_and_stop_cleanly() {
    let env = TestEnv::new().await;
    let mut fleet = env.fleet("real-binaries");
    fleet.spawn(INGRESS, &[]).unwrap();
    fleet.spawn(PAY_WORKER, &[]).unwrap();
    let api = ApiClient::new(&fleet.ingress_url(Duration::from_secs(20)).await.unwrap());
    api.wait_ready(Duration::from_secs(20)).await.unwrap();

    let (user, token) = env.user("50.00", "500", "10.00").await;
    let goods = env.goods("5.00").await;
    let orders: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned());
        }
        v
    };
    let r = api.pay_balance(&token, &orders[0], "5.00", "123456").await.unwrap();
    assert_eq!((r.status, r.field("remaining_balance")), (200, "45.00"), "{:?}", r.body);
    let r = api.pay_integral(&token, &orders[1], "50.00", "5.00").await.unwrap();
    assert_eq!((r.status, r.field("remaining_integral")), (200, "450.00"), "{:?}", r.body);
    let r = api.pay_money2(&token, &orders[2], "5.00").await.unwrap();
    assert_eq!((r.status, r.field("remaining_money2")), (200, "5.00"), "{:?}", r.body);
    let r = api.pay_money2(&token, &orders[2], "5.00").await.unwrap();
    assert_eq!((r.status, r.code()), (409, "ORDERPAID"));
    for order in &orders {
        assert_eq!(api.status(&token, order).await.unwrap().field("pay_status"), "SUCCESS");
    }
    assert_eq!(env.balances(user).await.money, m("45.00"));

    fleet.stop(Duration::from_secs(15)).await;
    assert!(fleet.exited().is_none(), "stop reaps every child");
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_settles_every_request_exactly_once() {
    let env = TestEnv::with(&[("PAYFLEET__INGRESS__REPLY_TIMEOUT_MS", "300")]).await;
    let mut fleet = env.fleet("kill-worker");
    fleet.spawn(INGRESS, &[]).unwrap();
    fleet.spawn(PAY_WORKER, &[]).unwrap();
    let api = ApiClient::new(&fleet.ingress_url(Duration::from_secs(20)).await.unwrap());
    api.wait_ready(Duration::from_secs(20)).await.unwrap();

    const CLIENTS: usize = 12;
    const PER_CLIENT: usize = 40;
    let goods = env.goods("1.00").await;
    let mut plans = Vec::new();
    for _ in 0..CLIENTS {
        let (user, token) = env.user("1000.00", "10000", "0").await;
        plans.push((user, token, env.orders(user, goods, PER_CLIENT as i64).await));
    }
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for (i, (_, token, orders)) in plans.iter().cloned().enumerate() {
        let (api, answered) = (api.clone(), answered.clone());
        clients.spawn(async move {
            let mut answers = Vec::new();
            for order in orders {
                // Half the clients pay with balance (bcrypt in the worker), half with integral.
                let r = if i % 2 == 0 {
                    api.pay_balance(&token, &order, "1.00", "123456").await.unwrap()
                } else {
                    api.pay_integral(&token, &order, "10.00", "1.00").await.unwrap()
                };
                answered.fetch_add(1, Ordering::SeqCst);
                answers.push((order, r.status, r.field("pay_no").to_owned()));
            }
            answers
        });
    }

    // Kill the worker while requests stream in; requests keep arriving (and queueing) while it
    // is dead, then a fresh worker takes over.
    eventually(Duration::from_secs(30), "a first part answered", || async { answered.load(Ordering::SeqCst) >= 100 })
        .await;
    fleet.kill(PAY_WORKER).await;
    let at_kill = answered.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let queued = env.queue_depth(&Topology::new(&env.settings.broker).queue(PAY_REQUESTS)).await;
    fleet.spawn(PAY_WORKER, &[]).unwrap();

    let mut answers = Vec::new();
    while let Some(done) = clients.join_next().await {
        answers.extend(done.unwrap());
    }
    assert!(at_kill < CLIENTS * PER_CLIENT, "the worker died mid-stream");
    assert!(queued > 0, "requests were queued while the worker was dead");
    assert!(answers.iter().any(|(_, status, _)| *status == 202), "some requests were answered 202 while it was dead");
    assert!(answers.iter().all(|(_, status, _)| *status == 200 || *status == 202), "{answers:?}");

    let total = (CLIENTS * PER_CLIENT) as i64;
    eventually(Duration::from_secs(60), "every request settled", || async {
        let paid: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PAID'")
            .fetch_one(&env.admin.db)
            .await
            .unwrap();
        paid == total
    })
    .await;
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&env.admin.db).await.unwrap();
    assert_eq!(payments, total, "exactly one payment per order");
    for (i, (user, _, _)) in plans.iter().enumerate() {
        let b = env.balances(*user).await;
        let expected = if i % 2 == 0 { (m("960.00"), m("10000")) } else { (m("1000.00"), m("9600.00")) };
        assert_eq!((b.money, b.integral), expected, "user {user} charged exactly once per order");
    }
    for (order, status, pay_no) in answers.iter().filter(|(_, s, _)| *s == 200) {
        let recorded: String = sqlx::query_scalar("SELECT pay_no FROM orders WHERE order_no = $1")
            .bind(order)
            .fetch_one(&env.admin.db)
            .await
            .unwrap();
        assert_eq!(&recorded, pay_no, "a 200 answer ({status}) names the payment that stands");
    }
    env.audit_is_clean().await;
    let topology = Topology::new(&env.settings.broker);
    assert_eq!(env.queue_depth(&topology.queue(PAY_REQUESTS)).await, 0);
    assert_eq!(env.queue_depth(&topology.dlq(PAY_REQUESTS)).await, 0, "nothing dead-lettered");
    fleet.stop(Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_queue() {
    let env = TestEnv::new().await;
    let mut fleet = env.fleet("two-workers");
    fleet.spawn(INGRESS, &[]).unwrap();
    fleet.spawn(PAY_WORKER, &[]).unwrap();
    fleet.spawn(PAY_WORKER, &[]).unwrap();
    let api = ApiClient::new(&fleet.ingress_url(Duration::from_secs(20)).await.unwrap());
    api.wait_ready(Duration::from_secs(20)).await.unwrap();
    let topology = Topology::new(&env.settings.broker);
    let queue = topology.queue(PAY_REQUESTS);
    eventually(Duration::from_secs(20), "two consumers on pay.requests", || async {
        consumers(&env, &queue).await == 2
    })
    .await;

    let (user, token) = env.user("0", "100000", "0").await;
    let goods = env.goods("1.00").await;
    let orders = env.orders(user, goods, 120).await;
    let answers =
        futures_util::future::join_all(orders.iter().map(|o| api.pay_integral(&token, o, "10.00", "1.00"))).await;
    assert!(answers.iter().all(|r| r.as_ref().unwrap().status == 200));
    assert_eq!(env.balances(user).await.integral, m("98800.00"));
    env.audit_is_clean().await;
    fleet.stop(Duration::from_secs(15)).await;
}

async fn consumers(env: &TestEnv, queue: &str) -> u32 {
    let conn = payfleet::mq::connect(&env.settings.broker, "test-probe").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let q = channel.queue_declare(queue.into(), options, Default::default()).await.unwrap();
    payfleet::mq::close(&conn, &channel).await;
    q.consumer_count()
}

#[test]
fn binaries_refuse_bad_settings_with_a_message_naming_the_key() {
    let empty = std::env::temp_dir().join(format!("payfleet-no-secrets-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&empty).unwrap();
    let run = |binary: &str, env: &[(&str, &str)]| {
        let path = match binary {
            INGRESS => env!("CARGO_BIN_EXE_payfleet-ingress"),
            _ => env!("CARGO_BIN_EXE_payfleet-pay-worker"),
        };
        // From a directory without development secrets: the repository's own has them once
        // `payctl demo` ran there, and they would fill in what this test leaves out.
        let output = std::process::Command::new(path)
            .current_dir(&empty)
            .env_clear()
            .env("PAYFLEET_CONFIG_DIR", common::config_dir())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{binary} must not start with {env:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let jwt = ("PAYFLEET__AUTH__JWT_SECRET", "0123456789abcdef0123456789abcdef");
    let pepper = ("PAYFLEET__PAY__PASSWORD_PEPPER", "0123456789abcdef");
    let err = run(INGRESS, &[pepper]);
    assert!(err.contains("auth.jwt_secret") && err.contains("PAYFLEET__AUTH__JWT_SECRET"), "{err}");
    let err = run(PAY_WORKER, &[jwt]);
    assert!(err.contains("pay.password_pepper"), "{err}");
    let err = run(INGRESS, &[jwt, pepper]);
    assert!(err.contains("pay.seal_keys") && err.contains("PAYFLEET__PAY__SEAL_KEYS"), "{err}");
    let err = run(PAY_WORKER, &[jwt, pepper, ("PAYFLEET__PAY__SEAL_KEYS", "k1:c2hvcnQ=")]);
    assert!(err.contains("pay.seal_keys") && err.contains("32 bytes"), "{err}");
    let err = run(INGRESS, &[jwt, pepper, ("PAYFLEET__PAY__BCRYPT_COST", "99")]);
    assert!(err.contains("pay.bcrypt_cost"), "{err}");
    let err = run(INGRESS, &[jwt, pepper, ("PAYFLEET__INGRESS__LISTEN", "not-an-address")]);
    assert!(err.contains("ingress.listen"), "{err}");
    let err = run(PAY_WORKER, &[jwt, pepper, ("PAYFLEET__PAY_WORKER__PREFETCH", "lots")]);
    assert!(err.contains("pay_worker.prefetch"), "{err}");
    let _ = std::fs::remove_dir_all(&empty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payctl_topology_shows_each_queues_depth_and_the_queues_nothing_consumes_yet() {
    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (user, token) = env.user("10.00", "0", "0").await;
    let goods = env.goods("5.00").await;
    let order = env.orders(user, goods, 1).await.remove(0);
    assert_eq!(app.api.pay_balance(&token, &order, "5.00", "123456").await.unwrap().status, 200);
    let followup = Topology::new(&env.settings.broker).queue(payfleet::mq::topology::ORDER_FOLLOWUP);
    eventually(Duration::from_secs(10), "the order-paid event relayed", || async {
        env.queue_depth(&followup).await == 1
    })
    .await;
    app.stop().await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_payctl"))
        .arg("topology")
        .env("PAYFLEET_CONFIG_DIR", common::config_dir())
        .envs(&env.env)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find(|l| l.starts_with(&format!("{followup} "))).unwrap_or_else(|| panic!("{stdout}"));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns[1..3], ["1", "0"], "one message, its consumer not running: {line}");
    assert!(!line.contains("no consumer in this version"), "the follow-up worker consumes it: {line}");
    let notify = Topology::new(&env.settings.broker).queue(payfleet::mq::topology::ORDER_NOTIFY);
    let line = stdout.lines().find(|l| l.starts_with(&format!("{notify} "))).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("no consumer in this version"), "{line}");
    let requests = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{} ", Topology::new(&env.settings.broker).queue(PAY_REQUESTS))))
        .unwrap();
    assert!(!requests.contains("no consumer"), "{requests}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_passes_and_payctl_beside_it_uses_its_development_secrets() {
    let env = TestEnv::new().await;
    // As a new user runs it: no secrets in the environment, from a directory of its own.
    let dir = std::env::temp_dir().join(format!("payfleet-demo-{}", env.id));
    std::fs::create_dir_all(&dir).unwrap();
    let payctl = |args: &[&str], profile: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_payctl"));
        command.args(args).current_dir(&dir).env_clear().env("PATH", std::env::var("PATH").unwrap());
        command.env("PAYFLEET_CONFIG_DIR", common::config_dir());
        command.envs(env.env.iter().filter(|(k, _)| !payfleet::config::DEV_SECRET_VARS.contains(&k.as_str())));
        if let Some(profile) = profile {
            command.env("PAYFLEET_ENV", profile);
        }
        command.output().unwrap()
    };
    let demo = payctl(&["demo"], None);
    let stdout = String::from_utf8_lossy(&demo.stdout);
    assert!(demo.status.success(), "the demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&demo.stderr));
    assert!(stdout.contains("demo passed") && stdout.contains("target/payfleet-dev.env"), "{stdout}");
    let secrets = payfleet::config::read_dev_secrets(&dir.join(payfleet::config::DEV_SECRETS_FILE));
    assert_eq!(secrets.len(), payfleet::config::DEV_SECRET_VARS.len(), "{secrets:?}");

    // In another terminal, as the README shows: the same secrets, so the token is the fleet's.
    let created = payctl(&["user", "create", "--money", "1.00", "--pay-password", "123456"], None);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    assert!(String::from_utf8_lossy(&created.stderr).contains("development secrets"), "said at start");
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let jwt = &secrets.iter().find(|(k, _)| k == "PAYFLEET__AUTH__JWT_SECRET").unwrap().1;
    let keys = payfleet::auth::TokenKeys::new(&jwt.clone().into(), Duration::from_secs(60));
    let named = keys.verify(created["token"].as_str().unwrap()).ok();
    assert_eq!(named, created["user_id"].as_i64().map(payfleet::auth::Bearer::User));
    let operator = payctl(&["token", "--operator", "ops.demo"], None);
    assert!(operator.status.success(), "{}", String::from_utf8_lossy(&operator.stderr));
    // Never in production settings.
    let refused = payctl(&["token", "--user", "1"], Some("production"));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("auth.jwt_secret"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_and_users_each_use_only_their_own_routes() {
    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (user, token) = env.user("10.00", "0", "0").await;
    let order = env.orders(user, env.goods("5.00").await, 1).await.remove(0);
    assert_eq!(app.api.pay_balance(&token, &order, "5.00", "123456").await.unwrap().status, 200);

    // An operator token as `payctl token --operator` prints it.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_payctl"))
        .args(["token", "--operator", "ops.alice"])
        .env("PAYFLEET_CONFIG_DIR", common::config_dir())
        .envs(&env.env)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let operator = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let path = format!("/admin/v1/orders/{order}");
    let r = app.api.get(&path, Some(&operator)).await.unwrap();
    assert_eq!((r.status, r.field("status"), r.data()["user_id"].as_i64()), (200, "PAID", Some(user)), "{:?}", r.body);
    assert_eq!(r.data()["payments"][0]["method"], "balance");
    assert!(r.data()["alerts"].as_array().unwrap().is_empty());

    let r = app.api.get(&path, Some(&token)).await.unwrap();
    assert_eq!((r.status, r.code()), (403, "FORBIDDEN"), "a user's token on an operator route: {:?}", r.body);
    assert_eq!(app.api.get(&path, None).await.unwrap().status, 401);
    let r = app.api.status(&operator, &order).await.unwrap();
    assert_eq!((r.status, r.code()), (401, "UNAUTHORIZED"), "an operator's token on a user route: {:?}", r.body);
    assert_eq!(app.api.get("/admin/v1/orders/ORD0", Some(&operator)).await.unwrap().code(), "NOT_FOUND");

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_payctl"))
        .args(["token", "--operator", "Not An Operator"])
        .env("PAYFLEET_CONFIG_DIR", common::config_dir())
        .envs(&env.env)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    app.stop().await;
}
