//! Outages of PostgreSQL, Redis and RabbitMQ, one component at a time (through a TCP proxy the
//! test cuts): the fleet reports not-ready, loses nothing, charges nothing twice, and resumes by
//! itself.

use crate::common;

use std::time::Duration;

use common::cutter::Cutter;
use common::{TestEnv, eventually, m};
use payfleet::ctl::client::ApiClient;
use payfleet::mq::topology::{PAY_REQUESTS, Topology};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn paid_orders(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PAID'").fetch_one(&env.admin.db).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_delays_payments_and_loses_none() {
    let env = TestEnv::with(&[("PAYFLEET__INGRESS__REPLY_TIMEOUT_MS", "500")]).await;
    let pg = Cutter::start("127.0.0.1:5432").await;
    let health = free_port();
    let worker = env.settings_with(&[
        ("PAYFLEET__DATABASE__URL", format!("postgres://postgres@127.0.0.1:{}/payfleet_t_{}", pg.port, env.id)),
        ("PAYFLEET__DATABASE__ACQUIRE_TIMEOUT_MS", "500".into()),
        ("PAYFLEET__PAY_WORKER__HEALTH_LISTEN", format!("127.0.0.1:{health}")),
    ]);
    let app = env.start_in_process_with(env.settings.clone(), worker).await;
    let worker_health = ApiClient::new(&format!("http://127.0.0.1:{health}"));
    let (user, token) = env.user("100.00", "1000", "0").await;
    let goods = env.goods("1.00").await;
    let orders = env.orders(user, goods, 7).await;
    assert_eq!(app.api.pay_integral(&token, &orders[0], "10.00", "1.00").await.unwrap().status, 200);
    worker_health.wait_ready(Duration::from_secs(10)).await.unwrap();

    pg.cut();
    let answers = futures_util::future::join_all(orders[1..].iter().enumerate().map(|(i, o)| {
        let (api, token) = (&app.api, &token);
        async move {
            if i % 2 == 0 {
                api.pay_integral(token, o, "10.00", "1.00").await
            } else {
                api.pay_balance(token, o, "1.00", "123456").await
            }
        }
    }))
    .await;
    for r in &answers {
        let r = r.as_ref().unwrap();
        assert_eq!((r.status, r.code()), (202, "PROCESSING"), "{:?}", r.body);
    }
    let ready = worker_health.get("/readyz", None).await.unwrap();
    assert_eq!((ready.status, &ready.body["database"]), (503, &serde_json::json!(false)), "{:?}", ready.body);

    pg.restore();
    eventually(Duration::from_secs(30), "the held payments settle", || async { paid_orders(&env).await == 7 }).await;
    worker_health.wait_ready(Duration::from_secs(10)).await.unwrap();
    let b = env.balances(user).await;
    assert_eq!((b.money, b.integral), (m("97.00"), m("960.00")), "each order charged exactly once");
    let topology = Topology::new(&env.settings.broker);
    assert_eq!(env.queue_depth(&topology.dlq(PAY_REQUESTS)).await, 0, "no retries were burnt into the DLQ");
    env.audit_is_clean().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_holds_balance_payments_only() {
    let env = TestEnv::with(&[("PAYFLEET__INGRESS__REPLY_TIMEOUT_MS", "500")]).await;
    let redis = Cutter::start("127.0.0.1:6379").await;
    let worker = env.settings_with(&[("PAYFLEET__REDIS__URL", format!("redis://127.0.0.1:{}/0", redis.port))]);
    let app = env.start_in_process_with(env.settings.clone(), worker).await;
    let (user, token) = env.user("10.00", "100", "0").await;
    let goods = env.goods("1.00").await;
    let orders = env.orders(user, goods, 2).await;

    redis.cut();
    // Integral pay needs no Redis; balance pay (password attempts) waits for it.
    let r = app.api.pay_integral(&token, &orders[0], "10.00", "1.00").await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app.api.pay_balance(&token, &orders[1], "1.00", "123456").await.unwrap();
    assert_eq!((r.status, r.code()), (202, "PROCESSING"), "{:?}", r.body);
    redis.restore();
    eventually(Duration::from_secs(30), "the balance payment settles", || async { paid_orders(&env).await == 2 }).await;
    assert_eq!(env.balances(user).await.money, m("9.00"));
    env.audit_is_clean().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_refuses_cleanly_while_the_broker_is_away_and_reconnects() {
    let env = TestEnv::new().await;
    let rabbit = Cutter::start("127.0.0.1:5672").await;
    let ingress =
        env.settings_with(&[("PAYFLEET__BROKER__URL", format!("amqp://guest:guest@127.0.0.1:{}/%2f", rabbit.port))]);
    let app = env.start_in_process_with(ingress, env.settings.clone()).await;
    let (user, token) = env.user("0", "100", "0").await;
    let goods = env.goods("1.00").await;
    let orders = env.orders(user, goods, 2).await;

    rabbit.cut();
    eventually(Duration::from_secs(10), "readyz reports the broker down", || async {
        let r = app.api.get("/readyz", None).await.unwrap();
        r.status == 503 && r.body["broker"] == false
    })
    .await;
    let r = app.api.pay_integral(&token, &orders[0], "10.00", "1.00").await.unwrap();
    assert_eq!((r.status, r.code()), (503, "SYSTEMERROR"), "{:?}", r.body);
    assert!(r.body["msg"].as_str().unwrap().contains("nothing was charged"));
    assert_eq!(env.balances(user).await.integral, m("100"), "a refused request charges nothing");

    rabbit.restore();
    app.api.wait_ready(Duration::from_secs(30)).await.unwrap();
    for order in &orders {
        let r = app.api.pay_integral(&token, order, "10.00", "1.00").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(env.balances(user).await.integral, m("80.00"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_from_the_broker_reconnects_and_settles_what_queued() {
    let env = TestEnv::with(&[("PAYFLEET__INGRESS__REPLY_TIMEOUT_MS", "300")]).await;
    let rabbit = Cutter::start("127.0.0.1:5672").await;
    let worker =
        env.settings_with(&[("PAYFLEET__BROKER__URL", format!("amqp://guest:guest@127.0.0.1:{}/%2f", rabbit.port))]);
    let app = env.start_in_process_with(env.settings.clone(), worker).await;
    let (user, token) = env.user("0", "1000", "0").await;
    let goods = env.goods("1.00").await;
    let orders = env.orders(user, goods, 20).await;
    for order in &orders[..5] {
        assert_eq!(app.api.pay_integral(&token, order, "10.00", "1.00").await.unwrap().status, 200);
    }

    rabbit.cut();
    let answers =
        futures_util::future::join_all(orders[5..].iter().map(|o| app.api.pay_integral(&token, o, "10.00", "1.00")))
            .await;
    assert!(answers.iter().all(|r| r.as_ref().unwrap().status == 202), "queued while the worker is away");
    rabbit.restore();
    eventually(Duration::from_secs(30), "the queued payments settle", || async { paid_orders(&env).await == 20 }).await;
    assert_eq!(env.balances(user).await.integral, m("800.00"));
    env.audit_is_clean().await;
    app.stop().await;
}
