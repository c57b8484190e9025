//! WeChat Pay end to end, for API v3 and v2: the real binaries (ingress, pay-worker,
//! notify-worker, wechat-sim), paying through HTTP, WeChat notifying — genuinely, twice, late,
//! never, with the wrong amount, forged — orders running out of pay time, and refunds through
//! WeChat settling by the refund notify or, when none comes, by query.

use crate::common;

use std::time::Duration;

use common::cutter::Cutter;
use common::sim::{SimControl, fleet_env, state_dir};
use common::{TestEnv, eventually, m};
use futures_util::StreamExt;
use payfleet::channel::{Trade, TradeState};
use payfleet::ctl::client::{ApiClient, ApiResponse};
use payfleet::ctl::fleet::{Fleet, INGRESS, NOTIFY_WORKER, PAY_WORKER, WECHAT_SIM};
use payfleet::mq::messages::{TradeReported, TradeSource};
use payfleet::mq::topology::{PAY_REQUESTS, Topology, WECHAT_NOTIFY};
use payfleet::wechat::SignedNotify;
use payfleet::wechat::v3::crypto::SignedHeaders;
use serde_json::json;

/// A fleet with WeChat Pay pointed at its own wechat-sim.
struct WechatFleet {
    env: TestEnv,
    fleet: Fleet,
    api: ApiClient,
    sim: SimControl,
    sim_dir: std::path::PathBuf,
    token: String,
    goods: i64,
}

impl WechatFleet {
    /// `only`: settings for one binary only, as (binary, key, value) (e.g. the ingress's broker
    /// through a cutter).
    async fn start(test: &str, version: &str, settings: &[(&str, &str)], only: &[(&str, &str, &str)]) -> WechatFleet {
        let mut overrides =
            vec![("PAYFLEET__WECHAT__API_VERSION", version), ("PAYFLEET__INGRESS__REPLY_TIMEOUT_MS", "5000")];
        overrides.extend_from_slice(settings);
        let dir = state_dir();
        let env = TestEnv::with(&overrides).await;
        let mut fleet = env.fleet(test);
        // The simulator first: the fleet's WeChat settings come from the keys it writes.
        let dir_arg = dir.display().to_string();
        let args = ["--listen", "127.0.0.1:0", "--state-dir", &dir_arg, "--notify-schedule-ms", "300,600,1200,2400"];
        fleet.spawn_with_args(WECHAT_SIM, &args.map(str::to_owned), &[]).unwrap();
        let sim_url = fleet.url_of(WECHAT_SIM, Duration::from_secs(60)).await.unwrap();
        let sim = SimControl::new(&sim_url);
        sim.wait_ready().await;
        for (k, v) in fleet_env(&dir, &sim_url) {
            fleet.set_env(&k, &v);
        }
        for (k, v) in &overrides {
            fleet.set_env(k, v);
        }
        let for_binary = |binary: &str| -> Vec<(&str, &str)> {
            only.iter().filter(|(b, _, _)| *b == binary).map(|(_, k, v)| (*k, *v)).collect()
        };
        fleet.spawn(INGRESS, &for_binary(INGRESS)).unwrap();
        let url = fleet.ingress_url(Duration::from_secs(30)).await.unwrap();
        let notify_url = format!("{url}/api/v1/payment/wechat/notify");
        let mut pay_env = for_binary(PAY_WORKER);
        pay_env.push(("PAYFLEET__WECHAT__NOTIFY_URL", &notify_url));
        fleet.spawn(PAY_WORKER, &pay_env).unwrap();
        let refund_notify_url = format!("{url}/api/v1/payment/wechat/refund-notify");
        let mut notify_env = for_binary(NOTIFY_WORKER);
        notify_env.push(("PAYFLEET__WECHAT__REFUND_NOTIFY_URL", &refund_notify_url));
        fleet.spawn(NOTIFY_WORKER, &notify_env).unwrap();
        let api = ApiClient::new(&url);
        api.wait_ready(Duration::from_secs(30)).await.unwrap();
        let (_, token) = env.user("0", "0", "0").await;
        let goods = env.goods("10.00").await;
        WechatFleet { env, fleet, api, sim, sim_dir: dir, token, goods }
    }

    async fn order(&self) -> String {
        self.api.create_order(&self.token, self.goods, 1).await.unwrap().field("order_no").to_owned()
    }

    async fn create(&self, order_no: &str) -> ApiResponse {
        let body = json!({
            "order_no": order_no, "amount": "10.00", "description": "一番赏 ticket",
            "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "client_ip": "127.0.0.1", "trade_type": "JSAPI",
        });
        self.api.post("/api/v1/payment/wechat/create", Some(&self.token), &body).await.unwrap()
    }

    /// Creates the WeChat payment of a fresh order; answers (order_no, pay_no).
    async fn created(&self) -> (String, String) {
        let order_no = self.order().await;
        let r = self.create(&order_no).await;
        assert_eq!((r.status, r.code()), (200, "SUCCESS"), "{:?}", r.body);
        (order_no, r.field("pay_no").to_owned())
    }

    async fn status(&self, order_no: &str) -> String {
        self.api.status(&self.token, order_no).await.unwrap().field("pay_status").to_owned()
    }

    async fn count(&self, sql: &str, bind: &str) -> i64 {
        sqlx::query_scalar(sql).bind(bind).fetch_one(&self.env.admin.db).await.unwrap()
    }

    async fn stop(mut self) {
        self.fleet.stop(Duration::from_secs(15)).await;
        self.env.audit_is_clean().await;
        let _ = std::fs::remove_dir_all(&self.sim_dir);
    }
}

async fn create_pay_notify_settle(version: &str) {
    let w = WechatFleet::start(&format!("wechat-pay-{version}"), version, &[], &[]).await;
    let order_no = w.order().await;
    let r = w.create(&order_no).await;
    assert_eq!((r.status, r.code()), (200, "SUCCESS"), "{:?}", r.body);
    for field in ["appId", "timeStamp", "nonceStr", "package", "signType", "paySign"] {
        assert!(!r.field(field).is_empty(), "{field}: {:?}", r.body);
    }
    assert_eq!(r.data()["is_weixin"], 1);
    assert_eq!(r.field("signType"), if version == "v3" { "RSA" } else { "HMAC-SHA256" });
    let pay_no = r.field("pay_no").to_owned();
    assert_eq!(w.status(&order_no).await, "PAYING");

    // A second create reuses the prepay; retry gives fresh params for it.
    let again = w.create(&order_no).await;
    assert_eq!((again.field("package"), again.field("pay_no")), (r.field("package"), pay_no.as_str()));
    let retry = w.api.post(&format!("/api/v1/payment/{order_no}/retry"), Some(&w.token), &json!({})).await.unwrap();
    assert_eq!(retry.status, 200, "{:?}", retry.body);
    assert_eq!(retry.data()["new_pay_info"]["package"], r.data()["package"]);
    assert_ne!(retry.data()["new_pay_info"]["nonceStr"], r.data()["nonceStr"], "freshly signed");
    // The prepay is bound to its payer: another openid cannot take it over.
    let other = json!({ "order_no": order_no, "amount": "10.00", "openid": "oSomeoneElse", "trade_type": "JSAPI" });
    let r2 = w.api.post("/api/v1/payment/wechat/create", Some(&w.token), &other).await.unwrap();
    assert_eq!((r2.status, r2.code()), (422, "VALIDATION"), "{:?}", r2.body);

    assert_eq!(w.sim.pay(&pay_no, None).await.status(), 200);
    eventually(Duration::from_secs(20), "the notify settles the order", || async {
        w.status(&order_no).await == "SUCCESS"
    })
    .await;
    let status = w.api.status(&w.token, &order_no).await.unwrap();
    assert_eq!((status.field("pay_type"), status.field("pay_no")), ("WECHAT", pay_no.as_str()));
    let notifies = w.sim.notifies(&pay_no).await;
    assert_eq!(notifies.first().map(|n| n.0), Some(200), "answered success at once: {notifies:?}");
    let (transaction_id, raw): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT third_party_no, notify_raw FROM payments WHERE pay_no = $1")
            .bind(&pay_no)
            .fetch_one(&w.env.admin.db)
            .await
            .unwrap();
    let transaction_id = transaction_id.expect("the transaction id is kept");
    assert!(transaction_id.starts_with("4200") && raw.is_some(), "transaction id and raw notify kept");
    assert_eq!(Some(transaction_id.as_str()), w.sim.order(&pay_no).await.unwrap()["transaction_id"].as_str());
    // WeChat's number, the one on the payer's bill, in the status and in the payment's detail.
    assert_eq!(status.field("transaction_id"), transaction_id);
    assert_eq!(
        status.data()["payment_details"],
        json!([{
            "method": "wechat", "amount": "10.00", "status": "SUCCESS", "transaction_id": transaction_id, "pay_no": pay_no,
        }])
    );
    let r = w.create(&order_no).await;
    assert_eq!((r.status, r.code()), (409, "ORDERPAID"));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_create_pay_notify_settle() {
    create_pay_notify_settle("v3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_create_pay_notify_settle() {
    create_pay_notify_settle("v2").await;
}

async fn duplicates_forgeries_and_wrong_amounts(version: &str) {
    let w = WechatFleet::start(&format!("wechat-faults-{version}"), version, &[], &[]).await;

    // Two notifies at once: one state change. A v3 duplicate is signed afresh and queued like the
    // first; a v2 duplicate is the same bytes as the first: queued too when both arrive before
    // either is queued, answered without being queued when it comes after.
    let (dup_order, dup_pay) = w.created().await;
    w.sim.pay(&dup_pay, Some("duplicate")).await;
    eventually(Duration::from_secs(20), "settled", || async { w.status(&dup_order).await == "SUCCESS" }).await;
    eventually(Duration::from_secs(20), "both notifies answered success", || async {
        w.sim.notifies(&dup_pay).await.iter().filter(|(status, _)| *status == 200).count() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queued = w.count("SELECT count(*) FROM wechat_notifies WHERE out_trade_no = $1", &dup_pay).await;
    assert!(if version == "v3" { queued == 2 } else { (1..=2).contains(&queued) }, "{queued} processed");
    assert_eq!(
        w.count("SELECT count(*) FROM wechat_notifies WHERE out_trade_no = $1 AND outcome = 'settled'", &dup_pay).await,
        1
    );
    assert_eq!(w.count("SELECT count(*) FROM profit_pay WHERE pay_no = $1", &dup_pay).await, 1);
    assert_eq!(
        w.count("SELECT count(*) FROM outbox WHERE payload->>'pay_no' = $1", &dup_pay).await,
        1,
        "one order-paid event"
    );

    // Forged: refused, never queued, the order untouched (it was never paid at WeChat).
    let (forged_order, forged_pay) = w.created().await;
    assert_eq!(w.sim.forge(&forged_pay, "bad_signature").await, 401);
    if version == "v3" {
        assert_eq!(w.sim.forge(&forged_pay, "stale_timestamp").await, 401);
        // A genuine notify replayed with its nonce: refused too; the paid order stays paid once.
        assert_eq!(w.sim.forge(&dup_pay, "replay_nonce").await, 401);
    } else {
        // Signed with the real key, but MD5 where the payment was made with HMAC-SHA256.
        assert_eq!(w.sim.forge(&forged_pay, "downgrade_md5").await, 401);
        // A genuine notify replayed: answered as the duplicate it looks like, never queued again.
        assert_eq!(w.sim.forge(&dup_pay, "replay_nonce").await, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        w.count("SELECT count(*) FROM wechat_notifies WHERE out_trade_no = $1", &forged_pay).await,
        0,
        "never reached the queue"
    );
    assert_eq!(w.status(&forged_order).await, "PAYING");
    assert_eq!(w.count("SELECT count(*) FROM wechat_notifies WHERE out_trade_no = $1", &dup_pay).await, queued);

    // The user paid a different amount than the order: not paid, an alert for an operator.
    let (wrong_order, wrong_pay) = w.created().await;
    w.sim.pay(&wrong_pay, Some("wrong_amount")).await;
    eventually(Duration::from_secs(20), "the alert", || async {
        w.count("SELECT count(*) FROM payment_alerts WHERE order_no = $1 AND kind = 'amount_mismatch'", &wrong_order)
            .await
            >= 1
    })
    .await;
    assert_eq!(w.status(&wrong_order).await, "PAYING", "not paid");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_duplicates_forgeries_and_wrong_amounts() {
    duplicates_forgeries_and_wrong_amounts("v3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_duplicates_forgeries_and_wrong_amounts() {
    duplicates_forgeries_and_wrong_amounts("v2").await;
}

async fn lost_notifies_and_expiring_orders(version: &str) {
    let settings = [("PAYFLEET__WECHAT__QUERY_AFTER_SECS", "1"), ("PAYFLEET__PAY__ORDER_TTL_SECS", "6")];
    let w = WechatFleet::start(&format!("wechat-sync-{version}"), version, &settings, &[]).await;

    // Paid at WeChat, notify never sent: reading the status asks WeChat and settles.
    let (silent_order, silent_pay) = w.created().await;
    w.sim.pay(&silent_pay, Some("never")).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    eventually(Duration::from_secs(20), "the status sync settles it", || async {
        w.status(&silent_order).await == "SUCCESS"
    })
    .await;
    assert!(w.sim.notifies(&silent_pay).await.is_empty(), "no notify was involved");

    // Never paid: when the pay time runs out the order is closed at WeChat and here.
    let (idle_order, idle_pay) = w.created().await;
    eventually(Duration::from_secs(30), "closed locally", || async {
        w.count("SELECT count(*) FROM orders WHERE order_no = $1 AND status = 'CLOSED'", &idle_order).await == 1
    })
    .await;
    assert_eq!(w.sim.order(&idle_pay).await.unwrap()["state"], "CLOSED", "closed at WeChat");
    assert_eq!(w.count("SELECT count(*) FROM payments WHERE pay_no = $1 AND status = 'CLOSED'", &idle_pay).await, 1);
    let r = w.create(&idle_order).await;
    assert_eq!((r.status, r.code()), (409, "ORDERCLOSED"));

    // Paid, notify lost, and nobody looked at the status: the expiry check finds it paid.
    let (late_order, late_pay) = w.created().await;
    w.sim.pay(&late_pay, Some("never")).await;
    eventually(Duration::from_secs(30), "the expiry check settles it", || async {
        w.count("SELECT count(*) FROM orders WHERE order_no = $1 AND status = 'PAID'", &late_order).await == 1
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trade_paid_and_refunded_before_it_settled_never_pays_the_order() {
    let settings = [("PAYFLEET__WECHAT__QUERY_AFTER_SECS", "1")];
    let w = WechatFleet::start("wechat-refunded", "v3", &settings, &[]).await;
    let (order_no, pay_no) = w.created().await;
    // Paid at WeChat, the notify lost, then refunded in the merchant platform; WeChat's refund
    // notify goes to the pay-notify URL (a merchant's misconfiguration).
    w.sim.pay(&pay_no, Some("never")).await;
    let pay_notify_url = format!("{}/api/v1/payment/wechat/notify", w.api.base());
    assert_eq!(w.sim.refund(&pay_no, &pay_notify_url).await.status(), 200);
    eventually(Duration::from_secs(10), "the refund notify answered", || async {
        !w.sim.notifies(&pay_no).await.is_empty()
    })
    .await;
    // Genuine, so not a forgery (401, retried by WeChat for a day); not a payment either.
    let notifies = w.sim.notifies(&pay_no).await;
    assert_eq!(notifies.iter().map(|n| n.0).collect::<Vec<_>>(), [200], "{notifies:?}");

    // The status read asks WeChat, which says REFUND: recorded with an alert, never settled.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    eventually(Duration::from_secs(20), "the refunded trade recorded", || async {
        w.status(&order_no).await;
        w.count("SELECT count(*) FROM payment_alerts WHERE order_no = $1 AND kind = 'refunded_unsettled'", &order_no)
            .await
            == 1
    })
    .await;
    let status = w.api.status(&w.token, &order_no).await.unwrap();
    assert_eq!(status.field("pay_status"), "PENDING", "unpaid, and payable another way: {:?}", status.body);
    assert_eq!(status.data()["payment_details"][0]["status"], "REFUNDED");
    assert_eq!(w.count("SELECT count(*) FROM profit_pay WHERE order_no = $1", &order_no).await, 0);
    assert_eq!(
        w.count("SELECT count(*) FROM outbox WHERE kind = 'order_paid' AND payload->>'order_no' = $1", &order_no).await,
        0
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_lost_notifies_and_expiring_orders() {
    lost_notifies_and_expiring_orders("v3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_lost_notifies_and_expiring_orders() {
    lost_notifies_and_expiring_orders("v2").await;
}

async fn a_notify_arriving_while_the_broker_is_away_is_refused_then_lands(version: &str) {
    let rabbit = Cutter::start("127.0.0.1:5672").await;
    let broker = format!("amqp://guest:guest@127.0.0.1:{}/%2f", rabbit.port);
    let test = format!("wechat-broker-down-{version}");
    let w = WechatFleet::start(&test, version, &[], &[(INGRESS, "PAYFLEET__BROKER__URL", &broker)]).await;
    let (order_no, pay_no) = w.created().await;
    rabbit.cut();
    eventually(Duration::from_secs(10), "the ingress reports the broker down", || async {
        w.api.get("/readyz", None).await.unwrap().status == 503
    })
    .await;
    w.sim.pay(&pay_no, None).await;
    // v3 takes a 5xx as failure; v2, FAIL in the answer (the status is 503 too).
    eventually(Duration::from_secs(10), "WeChat got a failure", || async {
        w.sim.notifies(&pay_no).await.iter().any(|(status, _)| *status >= 500)
    })
    .await;
    rabbit.restore();
    eventually(Duration::from_secs(30), "a retry lands and settles", || async {
        w.status(&order_no).await == "SUCCESS"
    })
    .await;
    let notifies = w.sim.notifies(&pay_no).await;
    assert_eq!(notifies.last().map(|n| n.0), Some(200), "{notifies:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_a_notify_arriving_while_the_broker_is_away_is_refused_then_lands() {
    a_notify_arriving_while_the_broker_is_away_is_refused_then_lands("v3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_a_notify_arriving_while_the_broker_is_away_is_refused_then_lands() {
    a_notify_arriving_while_the_broker_is_away_is_refused_then_lands("v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pay_workers_never_let_wechat_and_balance_both_pay_one_order() {
    let w = WechatFleet::start("wechat-vs-balance", "v3", &[("PAYFLEET__PAY_WORKER__CONCURRENCY", "2")], &[]).await;
    let mut fleet = w.fleet;
    let notify_url = format!("{}/api/v1/payment/wechat/notify", w.api.base());
    fleet.spawn(PAY_WORKER, &[("PAYFLEET__WECHAT__NOTIFY_URL", &notify_url)]).unwrap();
    let (user, token) = w.env.user("5000.00", "0", "0").await;
    const ORDERS: usize = 200;
    let mut orders = Vec::with_capacity(ORDERS);
    for _ in 0..ORDERS {
        orders.push(w.api.create_order(&token, w.goods, 1).await.unwrap().field("order_no").to_owned());
    }
    // For every order, a WeChat create and a balance pay sent at the same moment, 16 orders at once.
    let body = |order_no: &str| json!({ "order_no": order_no, "amount": "10.00", "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "trade_type": "JSAPI" });
    let answers: Vec<(u16, u16)> = futures_util::stream::iter(&orders)
        .map(|order_no| {
            let (api, token) = (&w.api, &token);
            async move {
                let create = body(order_no);
                let (created, paid) = tokio::join!(
                    api.post("/api/v1/payment/wechat/create", Some(token), &create),
                    api.pay_balance(token, order_no, "10.00", "123456"),
                );
                (created.unwrap().status, paid.unwrap().status)
            }
        })
        .buffered(16)
        .collect()
        .await;
    let queue = Topology::new(&w.env.settings.broker).queue(PAY_REQUESTS);
    eventually(Duration::from_secs(60), "every request handled", || async { w.env.queue_depth(&queue).await == 0 })
        .await;
    assert!(answers.iter().all(|(c, p)| !(*c == 200 && *p == 200)), "both answered paid for an order: {answers:?}");

    // In the database: each order is paid by balance, or waits for its WeChat payment; never both.
    let (by_balance, by_wechat, both): (i64, i64, i64) = sqlx::query_as(
        "WITH o AS (
             SELECT EXISTS (SELECT 1 FROM payments p WHERE p.order_no = o.order_no AND p.method = 'balance' AND p.status = 'SUCCESS') AS b,
                    EXISTS (SELECT 1 FROM payments p WHERE p.order_no = o.order_no AND p.method = 'wechat'
                                                     AND p.prepaid IS NOT NULL AND p.status <> 'CLOSED') AS w
             FROM orders o WHERE o.user_id = $1
         )
         SELECT count(*) FILTER (WHERE b), count(*) FILTER (WHERE w), count(*) FILTER (WHERE b AND w) FROM o",
    )
    .bind(user)
    .fetch_one(&w.env.admin.db)
    .await
    .unwrap();
    eprintln!("{by_balance} orders paid by balance, {by_wechat} waiting for WeChat, {both} both");
    assert_eq!(both, 0, "an order paid by balance has a live WeChat payment");
    assert_eq!(by_balance + by_wechat, ORDERS as i64, "every order went one way or the other");
    let spent = m("10.00").checked_mul(by_balance).unwrap();
    assert_eq!(w.env.balances(user).await.money, m("5000.00").checked_sub(spent).unwrap());
    // WeChat holds no trade a payer could still pay for an order paid by balance.
    for order_no in &orders {
        let pay_no: Option<String> = sqlx::query_scalar(
            "SELECT p.pay_no FROM payments p JOIN orders o ON o.order_no = p.order_no
             WHERE p.order_no = $1 AND p.method = 'wechat' AND o.status = 'PAID'",
        )
        .bind(order_no)
        .fetch_optional(&w.env.admin.db)
        .await
        .unwrap();
        if let Some(trade) = match pay_no {
            Some(pay_no) => w.sim.order(&pay_no).await,
            None => None,
        } {
            assert_ne!(trade["state"], "NOTPAY", "an open WeChat trade for an order paid by balance: {trade}");
        }
    }
    fleet.stop(Duration::from_secs(15)).await;
    w.env.audit_is_clean().await;
    let _ = std::fs::remove_dir_all(&w.sim_dir);
}

async fn a_report_published_by_someone_else_settles_nothing(version: &str) {
    let w = WechatFleet::start(&format!("wechat-forged-report-{version}"), version, &[], &[]).await;
    let publisher = {
        let conn = payfleet::mq::connect(&w.env.settings.broker, "test-intruder").await.unwrap();
        payfleet::mq::publisher::Publisher::open(&conn, Duration::from_secs(5)).await.unwrap()
    };
    let queue = Topology::new(&w.env.settings.broker).queue(WECHAT_NOTIFY);
    let publish = |report: TradeReported| {
        let (publisher, queue) = (&publisher, &queue);
        async move {
            let body = serde_json::to_vec(&report).unwrap();
            let id = uuid::Uuid::new_v4().to_string();
            let properties = payfleet::mq::envelope::properties(&id, "trade_reported", "00-0-0-01");
            publisher.publish(queue, &body, properties).await.unwrap();
        }
    };
    // Someone who may publish on the vhost claims that three orders were paid: with no
    // signature, with a made-up one, and with a signature of the right shape for the other
    // API generation.
    let mut claims = Vec::new();
    for forgery in ["unsigned", "bad_signature", "bad_v2_sign"] {
        let (order_no, pay_no) = w.created().await;
        let trade = Trade {
            appid: "wxd930ea5d5a258f4f".into(),
            mchid: "1900000109".into(),
            out_trade_no: pay_no.clone(),
            transaction_id: Some("4200000000000000000000000001".into()),
            trade_state: TradeState::Success,
            total_fen: Some(1000),
            success_time: Some(time::OffsetDateTime::now_utc()),
            payer_openid: Some("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into()),
        };
        let signed = match forgery {
            "unsigned" => None,
            "bad_signature" => Some(SignedNotify::V3 {
                headers: SignedHeaders {
                    timestamp: Some(time::OffsetDateTime::now_utc().unix_timestamp().to_string()),
                    nonce: Some("forged-nonce".into()),
                    signature: Some("Zm9yZ2Vk".into()),
                    serial: Some("PUB_KEY_ID_0000".into()),
                },
                body: "{}".into(),
            }),
            _ => Some(SignedNotify::V2 {
                body: format!(
                    "<xml><return_code>SUCCESS</return_code><result_code>SUCCESS</result_code><appid>wxd930ea5d5a258f4f</appid><mch_id>1900000109</mch_id><out_trade_no>{pay_no}</out_trade_no><transaction_id>4200000000000000000000000001</transaction_id><total_fee>1000</total_fee><nonce_str>abc</nonce_str><sign>0123456789ABCDEF0123456789ABCDEF</sign></xml>"
                ),
            }),
        };
        let source = TradeSource::Notify;
        let raw = "forged".to_owned();
        publish(TradeReported {
            source,
            report_id: format!("forged-{forgery}"),
            event_type: "TRANSACTION.SUCCESS".into(),
            trade,
            raw,
            signed,
        })
        .await;
        claims.push((forgery, order_no, pay_no));
    }
    for (forgery, order_no, pay_no) in &claims {
        eventually(Duration::from_secs(20), "the claim handled", || async {
            w.count("SELECT count(*) FROM wechat_notifies WHERE out_trade_no = $1", pay_no).await == 1
        })
        .await;
        assert_eq!(w.status(order_no).await, "PAYING", "{forgery}: not paid");
        let outcome: (String, String) =
            sqlx::query_as("SELECT trade_state, outcome FROM wechat_notifies WHERE out_trade_no = $1")
                .bind(pay_no)
                .fetch_one(&w.env.admin.db)
                .await
                .unwrap();
        if *forgery == "unsigned" {
            // Asked WeChat instead, which says the trade is not paid.
            assert_eq!(outcome, ("NOTPAY".to_owned(), "pending".to_owned()), "{forgery}");
        } else {
            assert_eq!(outcome, ("UNCONFIRMED".to_owned(), "alert".to_owned()), "{forgery}");
            let alerts = w
                .count("SELECT count(*) FROM payment_alerts WHERE pay_no = $1 AND kind = 'unconfirmed_report'", pay_no)
                .await;
            assert_eq!(alerts, 1, "{forgery}");
        }
    }
    // And a genuine payment still settles.
    let (order_no, pay_no) = w.created().await;
    w.sim.pay(&pay_no, None).await;
    eventually(Duration::from_secs(20), "settled", || async { w.status(&order_no).await == "SUCCESS" }).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_a_report_published_by_someone_else_settles_nothing() {
    a_report_published_by_someone_else_settles_nothing("v3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_a_report_published_by_someone_else_settles_nothing() {
    a_report_published_by_someone_else_settles_nothing("v2").await;
}

/// A broker user for one test, removed when dropped; made with the broker's own `rabbitmqctl`.
struct BrokerUser {
    name: String,
    password: String,
}

fn rabbitmqctl(args: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl").args(args).output().unwrap_or_else(|e| {
        panic!("this test makes broker users with rabbitmqctl (RabbitMQ's CLI), which did not run: {e}")
    });
    assert!(output.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

impl BrokerUser {
    /// A user with these permissions on the vhost `/` (configure, write, read: regexes).
    fn new(name: String, configure: &str, write: &str, read: &str) -> BrokerUser {
        let password = uuid::Uuid::new_v4().simple().to_string();
        rabbitmqctl(&["add_user", &name, &password]);
        rabbitmqctl(&["set_permissions", "-p", "/", &name, configure, write, read]);
        BrokerUser { name, password }
    }

    fn url(&self) -> String {
        format!("amqp://{}:{}@127.0.0.1:5672/%2f", self.name, self.password)
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl").args(["delete_user", &self.name]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binary_works_with_a_broker_user_of_its_own_least_privileges() {
    // The users of the README's "Broker users", scoped to this test's queue namespace; the
    // queues are declared beforehand by an administrator, as `payctl topology` does.
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let ns = format!("lp{id}.");
    let default_exchange = "^amq\\.default$";
    let ingress = BrokerUser::new(format!("pf-ingress-{id}"), "^$", default_exchange, "^$");
    let pay_queues = format!("^lp{id}\\.(pay\\.requests|pay\\.timeout)$");
    let pay = BrokerUser::new(format!("pf-pay-{id}"), "^$", default_exchange, &pay_queues);
    let notify_queues = format!("^lp{id}\\.(wechat\\.notify|wechat\\.refund)$");
    let notify = BrokerUser::new(format!("pf-notify-{id}"), "^$", default_exchange, &notify_queues);
    let settings = [("PAYFLEET__BROKER__NAMESPACE", ns.as_str()), ("PAYFLEET__BROKER__DECLARE_TOPOLOGY", "false")];
    let (ingress_url, pay_url, notify_url) = (ingress.url(), pay.url(), notify.url());
    let only = [
        (INGRESS, "PAYFLEET__BROKER__URL", ingress_url.as_str()),
        (PAY_WORKER, "PAYFLEET__BROKER__URL", pay_url.as_str()),
        (NOTIFY_WORKER, "PAYFLEET__BROKER__URL", notify_url.as_str()),
    ];
    let w = WechatFleet::start("least-privilege", "v3", &settings, &only).await;

    // Balance pay: the ingress publishes and takes the reply, the pay-worker consumes, replies
    // and relays the outbox.
    let (user, token) = w.env.user("10.00", "0", "0").await;
    let order_no = w.api.create_order(&token, w.goods, 1).await.unwrap().field("order_no").to_owned();
    let r = w.api.pay_balance(&token, &order_no, "10.00", "123456").await.unwrap();
    assert_eq!((r.status, r.field("remaining_balance")), (200, "0.00"), "{:?}", r.body);
    // WeChat: the notify goes through the ingress to the notify-worker, which settles it.
    let (wechat_order, pay_no) = w.created().await;
    w.sim.pay(&pay_no, None).await;
    eventually(Duration::from_secs(20), "settled", || async { w.status(&wechat_order).await == "SUCCESS" }).await;
    eventually(Duration::from_secs(10), "the outbox relayed", || async {
        payfleet::store::outbox::unsent_count(&w.env.admin.db).await.unwrap() == 0
    })
    .await;
    assert_eq!(w.env.balances(user).await.money, m("0.00"));
    // A refund through WeChat: the notify-worker asks WeChat, the ingress queues the refund
    // notify, the notify-worker settles it.
    let operator = w.env.admin.tokens().unwrap().issue_operator("ops").unwrap();
    let path = format!("/admin/v1/orders/{wechat_order}/refunds");
    let r = w.api.post(&path, Some(&operator), &json!({ "refund_no": "LP1", "reason": "test" })).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    eventually(Duration::from_secs(20), "refunded", || async { w.status(&wechat_order).await == "REFUNDED" }).await;
    eventually(Duration::from_secs(20), "the refund settled", || async {
        w.count("SELECT count(*) FROM refunds WHERE refund_no = $1 AND status = 'SUCCESS'", "LP1").await == 1
    })
    .await;

    // And no more than that: the ingress's user can neither take pay requests nor make queues.
    let mut broker = w.env.settings.broker.clone();
    broker.url = ingress_url.clone().into();
    let conn = payfleet::mq::connect(&broker, "test-ingress-user").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let pay_requests = Topology::new(&broker).queue(PAY_REQUESTS);
    let taken = channel.basic_get(pay_requests.as_str().into(), Default::default()).await;
    assert!(taken.is_err_and(|e| e.to_string().contains("ACCESS_REFUSED")), "the ingress read pay.requests");
    let channel = conn.create_channel().await.unwrap();
    let made =
        channel.queue_declare(format!("{ns}stolen").as_str().into(), Default::default(), Default::default()).await;
    assert!(made.is_err_and(|e| e.to_string().contains("ACCESS_REFUSED")), "the ingress made a queue");
    let _ = conn.close(200, "bye".into()).await;
    w.stop().await;
}

/// A mixed payment with a WeChat part through the real binaries: balance and integral held, the
/// WeChat part paid at wechat-sim and settled by its notify; a second order expires with its
/// holds and gets them back; a third is cancelled by its owner, closed at WeChat first.
async fn mixed_payments_with_a_wechat_part(version: &str) {
    let settings = [("PAYFLEET__PAY__ORDER_TTL_SECS", "8")];
    let w = WechatFleet::start(&format!("wechat-mixed-{version}"), version, &settings, &[]).await;
    let (user, token) = w.env.user("30.00", "300", "0").await;
    let mixed = |order_no: &str| {
        json!({
            "order_no": order_no, "total_amount": "10.00", "pay_password": "123456",
            "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "trade_type": "JSAPI",
            "payment_methods": [
                { "type": "balance", "amount": "3.00" },
                { "type": "integral", "amount": "20", "money_equivalent": "2.00" },
                { "type": "wechat", "amount": "5.00" },
            ],
        })
    };
    let order_for_user =
        || async { w.api.create_order(&token, w.goods, 1).await.unwrap().field("order_no").to_owned() };
    let status_of = |order_no: String| {
        let (api, token) = (w.api.clone(), token.clone());
        async move { api.status(&token, &order_no).await.unwrap() }
    };

    // Paid: the holds become final when the notify settles the WeChat part.
    let paid_order = order_for_user().await;
    let r = w.api.post("/api/v1/payment/mixed/pay", Some(&token), &mixed(&paid_order)).await.unwrap();
    assert_eq!((r.status, r.code(), r.field("pay_status")), (200, "SUCCESS", "PAYING"), "{:?}", r.body);
    assert_eq!(
        (r.field("balance_paid"), r.field("integral_paid"), r.field("wechat_amount")),
        ("3.00", "20.00", "5.00")
    );
    assert!(!r.data()["wechat_pay_info"]["paySign"].as_str().unwrap_or("").is_empty(), "{:?}", r.body);
    let mixed_no = r.field("pay_no").to_owned();
    assert_eq!(w.env.balances(user).await.money, m("27.00"), "held at once");
    let status = status_of(paid_order.clone()).await;
    assert_eq!((status.field("pay_status"), status.field("pay_type")), ("PAYING", "MIXED"));
    let wechat_part = status.data()["payment_details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["method"] == "wechat")
        .map(|d| d["pay_no"].as_str().unwrap().to_owned())
        .unwrap();
    let held: Vec<&str> =
        status.data()["payment_details"].as_array().unwrap().iter().filter_map(|d| d["status"].as_str()).collect();
    assert_eq!(held, ["HELD", "HELD", "PAYING"]);
    assert_eq!(w.sim.order(&wechat_part).await.unwrap()["total"], 500, "WeChat is asked for its part only");
    assert_eq!(w.sim.pay(&wechat_part, None).await.status(), 200);
    eventually(Duration::from_secs(20), "the notify settles the mixed payment", || async {
        status_of(paid_order.clone()).await.field("pay_status") == "SUCCESS"
    })
    .await;
    let status = status_of(paid_order.clone()).await;
    assert_eq!((status.field("pay_type"), status.field("pay_no")), ("MIXED", mixed_no.as_str()));
    assert!(status.field("transaction_id").starts_with("4200"), "the WeChat part's number: {:?}", status.body);
    let statuses: Vec<&str> =
        status.data()["payment_details"].as_array().unwrap().iter().filter_map(|d| d["status"].as_str()).collect();
    assert_eq!(statuses, ["SUCCESS", "SUCCESS", "SUCCESS"]);

    // Expired: the expiry check closes the trade at WeChat and returns the holds.
    let idle_order = order_for_user().await;
    let r = w.api.post("/api/v1/payment/mixed/pay", Some(&token), &mixed(&idle_order)).await.unwrap();
    assert_eq!(r.field("pay_status"), "PAYING", "{:?}", r.body);
    assert_eq!(w.env.balances(user).await.money, m("24.00"));
    eventually(Duration::from_secs(40), "the expiry check closes the order", || async {
        status_of(idle_order.clone()).await.field("pay_status") == "CLOSED"
    })
    .await;
    assert_eq!(w.env.balances(user).await.money, m("27.00"), "the balance part came back");
    assert_eq!(w.env.balances(user).await.integral, m("280"), "the integral part came back");
    let statuses: Vec<String> = status_of(idle_order.clone()).await.data()["payment_details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["RETURNED", "RETURNED", "CLOSED"]);

    // Cancelled by its owner: closed at WeChat, then the holds returned.
    let cancelled_order = order_for_user().await;
    let r = w.api.post("/api/v1/payment/mixed/pay", Some(&token), &mixed(&cancelled_order)).await.unwrap();
    assert_eq!(r.field("pay_status"), "PAYING", "{:?}", r.body);
    let details = status_of(cancelled_order.clone()).await.data()["payment_details"].clone();
    let trade = details.as_array().unwrap().iter().find(|d| d["method"] == "wechat").unwrap()["pay_no"].clone();
    let r = w.api.post(&format!("/api/v1/payment/{cancelled_order}/cancel"), Some(&token), &json!({})).await.unwrap();
    assert_eq!((r.status, r.field("status")), (200, "CLOSED"), "{:?}", r.body);
    assert_eq!(w.sim.order(trade.as_str().unwrap()).await.unwrap()["state"], "CLOSED", "closed at WeChat first");
    assert_eq!(w.env.balances(user).await.money, m("27.00"));
    assert_eq!(w.env.balances(user).await.integral, m("280"));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_mixed_payments_with_a_wechat_part() {
    mixed_payments_with_a_wechat_part("v3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_mixed_payments_with_a_wechat_part() {
    mixed_payments_with_a_wechat_part("v2").await;
}

/// An operator's refunds of a WeChat-paid order: asked of WeChat by the notify-worker, settled
/// by WeChat's refund notify (v3 signed, v2 with its encrypted req_info) or, when none comes, by
/// querying; an ABNORMAL refund is surfaced and never asked for again.
async fn refunds_through_wechat(version: &str) {
    // Refunds are queried on the notice tiers: quick ones here.
    let quick = [("PAYFLEET__BROKER__NOTICE_RETRY_DELAYS_MS", "300,600,1200,2400,4800")];
    let w = WechatFleet::start(&format!("wechat-refunds-{version}"), version, &quick, &[]).await;
    let operator = w.env.admin.tokens().unwrap().issue_operator("ops.alice").unwrap();
    let (order_no, pay_no) = w.created().await;
    assert_eq!(w.sim.pay(&pay_no, None).await.status(), 200);
    eventually(Duration::from_secs(20), "the order paid", || async { w.status(&order_no).await == "SUCCESS" }).await;
    let path = format!("/admin/v1/orders/{order_no}/refunds");
    let refund = |body: serde_json::Value| {
        let (api, path, operator) = (w.api.clone(), path.clone(), operator.clone());
        async move { api.post(&path, Some(&operator), &body).await.unwrap() }
    };
    let refund_status = |refund_no: &'static str| {
        let (api, path, operator) = (w.api.clone(), path.clone(), operator.clone());
        async move {
            let listed = api.get(&path, Some(&operator)).await.unwrap();
            listed.data()["refunds"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["refund_no"] == refund_no)
                .map(|r| r["status"].as_str().unwrap().to_owned())
        }
    };

    // 3.00 back: asked of WeChat, settled by its refund notify. WeChat takes a second to pay it
    // out: the notify-worker's queries at 0.3 s and 0.9 s find it processing, its next one
    // comes at 2.1 s, and the notify at 1 s settles it.
    w.sim.refund_fault(&pay_no, Some("delay"), Some(1000)).await;
    let r = refund(json!({ "refund_no": "R1", "amount": "3.00", "reason": "a prize was missing" })).await;
    assert_eq!((r.status, r.field("status")), (200, "PROCESSING"), "{:?}", r.body);
    eventually(Duration::from_secs(20), "R1 settled by the refund notify", || async {
        refund_status("R1").await.as_deref() == Some("SUCCESS")
    })
    .await;
    let notified: Vec<(u16, String)> =
        w.sim.notifies(&pay_no).await.into_iter().filter(|(_, d)| d.starts_with("refund")).collect();
    assert!(notified.iter().any(|(status, _)| *status == 200), "the refund notify was answered: {notified:?}");
    let settled_by: String = sqlx::query_scalar(
        "SELECT rp.report_raw FROM refund_parts rp WHERE rp.refund_no = 'R1' AND rp.method = 'wechat'",
    )
    .fetch_one(&w.env.admin.db)
    .await
    .unwrap();
    let notify_marker = if version == "v3" { "REFUND.SUCCESS" } else { "req_info" };
    assert!(settled_by.contains(notify_marker), "settled by the notify, not a query: {settled_by}");
    let status = w.api.status(&w.token, &order_no).await.unwrap();
    assert_eq!(status.field("pay_status"), "PARTIALLY_REFUNDED", "{:?}", status.body);
    // Sent again, the same refund.
    let again = refund(json!({ "refund_no": "R1", "amount": "3.00", "reason": "a prize was missing" })).await;
    assert_eq!((again.status, again.field("status")), (200, "SUCCESS"), "{:?}", again.body);

    // The rest, with WeChat never notifying: the notify-worker's queries settle it.
    w.sim.refund_fault(&pay_no, Some("never"), None).await;
    let r = refund(json!({ "refund_no": "R2", "reason": "the box sold out" })).await;
    assert_eq!((r.status, r.field("status")), (200, "PROCESSING"), "{:?}", r.body);
    eventually(Duration::from_secs(30), "R2 settled by query", || async {
        refund_status("R2").await.as_deref() == Some("SUCCESS")
    })
    .await;
    let status = w.api.status(&w.token, &order_no).await.unwrap();
    assert_eq!(status.field("pay_status"), "REFUNDED", "{:?}", status.body);
    let asked = w.sim.refund_requests(&pay_no).await;
    assert_eq!(asked.len(), 2, "each part asked of WeChat once: {asked:?}");
    let refunded: i64 = w
        .count("SELECT count(*) FROM profit_pay WHERE order_no = $1 AND pay_type = 1 AND change_money > 0", &order_no)
        .await;
    assert_eq!(refunded, 2, "a profit_pay row per settled WeChat part");

    // ABNORMAL: surfaced to operators, never asked for again.
    let (abnormal_order, abnormal_pay) = w.created().await;
    assert_eq!(w.sim.pay(&abnormal_pay, None).await.status(), 200);
    eventually(Duration::from_secs(20), "the second order paid", || async {
        w.status(&abnormal_order).await == "SUCCESS"
    })
    .await;
    w.sim.refund_fault(&abnormal_pay, Some("abnormal"), None).await;
    let path = format!("/admin/v1/orders/{abnormal_order}/refunds");
    let r = w.api.post(&path, Some(&operator), &json!({ "refund_no": "R3", "reason": "changed mind" })).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    eventually(Duration::from_secs(20), "the abnormal refund surfaced", || async {
        w.count("SELECT count(*) FROM payment_alerts WHERE order_no = $1 AND kind = 'refund_abnormal'", &abnormal_order)
            .await
            == 1
    })
    .await;
    let listed = w.api.get(&path, Some(&operator)).await.unwrap();
    assert_eq!(listed.data()["refunds"][0]["status"], "ABNORMAL", "{:?}", listed.body);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.sim.refund_requests(&abnormal_pay).await.len(), 1, "asked once, never again");

    // Refused by WeChat, which holds no refund of that number: the part is given up and alerted,
    // and the order is as paid as before.
    let (refused_order, refused_pay) = w.created().await;
    assert_eq!(w.sim.pay(&refused_pay, None).await.status(), 200);
    eventually(Duration::from_secs(20), "the third order paid", || async {
        w.status(&refused_order).await == "SUCCESS"
    })
    .await;
    w.sim.refund_fault(&refused_pay, Some("refuse"), None).await;
    let path = format!("/admin/v1/orders/{refused_order}/refunds");
    let r = w.api.post(&path, Some(&operator), &json!({ "refund_no": "R4", "reason": "refused" })).await.unwrap();
    assert_eq!((r.status, r.field("status")), (200, "PROCESSING"), "{:?}", r.body);
    eventually(Duration::from_secs(20), "the refused refund given up", || async {
        w.count("SELECT count(*) FROM refunds WHERE refund_no = $1 AND status = 'CLOSED'", "R4").await == 1
    })
    .await;
    assert_eq!(w.status(&refused_order).await, "SUCCESS", "nothing counts as given back");
    let alerts = payfleet::store::wechat::alerts(&w.env.admin.db, &refused_order).await.unwrap();
    assert!(alerts.iter().any(|(kind, detail)| kind == "refund_closed" && detail.contains("refused")), "{alerts:?}");

    // Paid as the order closed: the expiry check closed it here, its close at WeChat lost on the
    // way, and the payer paid. The money goes back in full by itself, once; the order stays closed.
    let (late_order, late_pay) = w.created().await;
    let db = &w.env.admin.db;
    sqlx::query("UPDATE orders SET expires_at = now() - interval '1 second' WHERE order_no = $1")
        .bind(&late_order)
        .execute(db)
        .await
        .unwrap();
    let closed = payfleet::store::wechat::expire(db, &late_order, Some(&late_pay)).await.unwrap();
    assert_eq!(closed, payfleet::store::wechat::Expiry::Closed);
    assert_eq!(w.sim.pay(&late_pay, None).await.status(), 200);
    let auto = format!("AUTO-{late_pay}");
    eventually(Duration::from_secs(30), "the late payment refunded", || async {
        w.count("SELECT count(*) FROM refunds WHERE refund_no = $1 AND status = 'SUCCESS'", &auto).await == 1
    })
    .await;
    assert_eq!(w.status(&late_order).await, "CLOSED");
    assert_eq!(
        w.sim.refund_requests(&late_pay).await,
        [format!("refund {}", {
            let part: String = sqlx::query_scalar("SELECT part_no FROM refund_parts WHERE refund_no = $1")
                .bind(&auto)
                .fetch_one(db)
                .await
                .unwrap();
            part
        })]
    );
    let alerts = payfleet::store::wechat::alerts(db, &late_order).await.unwrap();
    assert!(alerts.iter().any(|(kind, _)| kind == "paid_after_close"), "{alerts:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_through_wechat_v3() {
    refunds_through_wechat("v3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_through_wechat_v2() {
    refunds_through_wechat("v2").await;
}
