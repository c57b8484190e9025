//! The follow-up worker: paid lottery orders draw their prizes once, an ichiban box never issues
//! more than it holds, and an order the box cannot serve is refunded in full. With the real
//! binaries, and with the interleavings forced where two transactions race.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TestEnv, eventually, m, until_waiting_on_locks};
use payfleet::ctl::client::ApiClient;
use payfleet::ctl::fleet::{FOLLOWUP_WORKER, Fleet, INGRESS, PAY_WORKER};
use payfleet::domain::{GoodsKind, Money, PayMethod, PayType};
use payfleet::mq::messages::OrderPaid;
use payfleet::mq::topology::ORDER_FOLLOWUP;
use payfleet::store::followups::{self, Followed};

/// The ingress and pay-worker binaries, and the API once it is ready.
async fn paying_fleet(env: &TestEnv, test: &str) -> (Fleet, ApiClient) {
    let mut fleet = env.fleet(test);
    fleet.spawn(INGRESS, &[]).unwrap();
    fleet.spawn(PAY_WORKER, &[]).unwrap();
    let api = ApiClient::new(&fleet.ingress_url(Duration::from_secs(20)).await.unwrap());
    api.wait_ready(Duration::from_secs(20)).await.unwrap();
    (fleet, api)
}

/// Creates an order of `num` × goods and pays it with money2; answers its number.
async fn paid_order(api: &ApiClient, token: &str, goods: i64, num: i64) -> String {
    let r = api.create_order(token, goods, num).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let order_no = r.field("order_no").to_owned();
    let amount = r.field("amount").to_owned();
    let r = api.pay_money2(token, &order_no, &amount).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    order_no
}

/// How many orders have their follow-up done.
async fn followed(db: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM followups").fetch_one(db).await.unwrap()
}

/// Every prize of the goods: what the box held equals what is left plus what was drawn, and
/// nothing is left below zero (the schema refuses it, this reads it back).
async fn stock_adds_up(db: &sqlx::PgPool, goods: i64) -> (i64, i64) {
    let rows: Vec<(String, i32, i32, i64)> = sqlx::query_as(
        "SELECT p.name, p.quantity, p.remaining, (SELECT count(*) FROM draws d WHERE d.prize_id = p.id)
         FROM prizes p WHERE p.goods_id = $1 ORDER BY p.id",
    )
    .bind(goods)
    .fetch_all(db)
    .await
    .unwrap();
    for (name, quantity, remaining, drawn) in &rows {
        assert!(*remaining >= 0, "{name}: {remaining} left");
        assert_eq!(
            i64::from(*quantity),
            i64::from(*remaining) + drawn,
            "{name}: held {quantity}, {remaining} left, {drawn} drawn"
        );
    }
    let left = rows.iter().map(|r| i64::from(r.2)).sum();
    let drawn = rows.iter().map(|r| r.3).sum();
    (left, drawn)
}

/// Every order served has exactly its `num` draws at positions 1…num; every order refunded has
/// none and its refund gave back the whole order.
async fn each_order_served_once(db: &sqlx::PgPool) {
    #[derive(sqlx::FromRow)]
    struct Row {
        order_no: String,
        outcome: String,
        num: i32,
        draws: i64,
        first: Option<i32>,
        last: Option<i32>,
        amount: Money,
        refunded: Money,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT f.order_no, f.outcome, o.num,
                (SELECT count(*) FROM draws d WHERE d.order_no = f.order_no) AS draws,
                (SELECT min(position) FROM draws d WHERE d.order_no = f.order_no) AS first,
                (SELECT max(position) FROM draws d WHERE d.order_no = f.order_no) AS last,
                o.amount, o.refunded
         FROM followups f JOIN orders o ON o.order_no = f.order_no",
    )
    .fetch_all(db)
    .await
    .unwrap();
    for Row { order_no, outcome, num, draws, first, last, amount, refunded } in rows {
        match outcome.as_str() {
            "SERVED" => {
                assert_eq!((draws, first, last), (i64::from(num), Some(1), Some(num)), "{order_no}: draws");
                assert_eq!(refunded, Money::ZERO, "{order_no}");
            }
            "REFUNDED" => {
                assert_eq!(draws, 0, "{order_no}: an unserved order draws nothing");
                assert_eq!(refunded, amount, "{order_no}: refunded in full");
            }
            other => panic!("{order_no}: outcome {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_ichiban_order_draws_its_prizes_and_the_stock_falls() {
    let env = TestEnv::new().await;
    let (mut fleet, api) = paying_fleet(&env, "ichiban-draws").await;
    fleet.spawn(FOLLOWUP_WORKER, &[]).unwrap();
    let (_, token) = env.user("0", "0", "100.00").await;
    let goods = env.lottery(GoodsKind::Ichiban, "2.00", &["A賞:2", "B賞:3"]).await;
    let order_no = paid_order(&api, &token, goods, 3).await;

    eventually(Duration::from_secs(20), "the order shows its draws", || async {
        api.order(&token, &order_no).await.unwrap().data()["followup"]["outcome"] == "SERVED"
    })
    .await;
    let r = api.order(&token, &order_no).await.unwrap();
    assert_eq!((r.field("status"), r.field("kind"), r.data()["num"].as_i64()), ("PAID", "ichiban", Some(3)));
    let draws = r.data()["draws"].as_array().unwrap();
    let positions: Vec<i64> = draws.iter().map(|d| d["position"].as_i64().unwrap()).collect();
    assert_eq!(positions, [1, 2, 3]);
    assert!(draws.iter().all(|d| matches!(d["prize"].as_str(), Some("A賞" | "B賞")) && d["drawn_at"].is_string()));
    assert_eq!(r.data()["payment_details"][0]["method"], "money2");
    assert_eq!(stock_adds_up(&env.admin.db, goods).await, (2, 3), "five in the box, three drawn");

    // Someone else sees nothing of it.
    let (_, stranger) = env.user("0", "0", "0").await;
    assert_eq!(api.order(&stranger, &order_no).await.unwrap().status, 404);
    fleet.stop(Duration::from_secs(15)).await;
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_orders_on_a_short_box_never_overdraw_and_the_unserved_are_refunded() {
    let env = TestEnv::new().await;
    let (mut fleet, api) = paying_fleet(&env, "short-box").await;
    // Two copies: the orders race for the box from two processes.
    fleet.spawn(FOLLOWUP_WORKER, &[]).unwrap();
    fleet.spawn(FOLLOWUP_WORKER, &[]).unwrap();
    let goods = env.lottery(GoodsKind::Ichiban, "1.00", &["A:5", "B:10", "C:15"]).await;
    let mut users = Vec::new();
    for _ in 0..5 {
        users.push(env.user("0", "0", "100.00").await);
    }
    // 50 orders asking 75 tickets of a box of 30.
    let mut paying = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (api, token) = (api.clone(), users[i % 5].1.clone());
        paying.spawn(async move { paid_order(&api, &token, goods, 1 + (i as i64 % 2)).await });
    }
    while let Some(paid) = paying.join_next().await {
        paid.unwrap();
    }
    let db = &env.admin.db;
    eventually(Duration::from_secs(60), "all 50 orders followed up", || async { followed(db).await == 50 }).await;
    each_order_served_once(db).await;
    let (left, drawn) = stock_adds_up(db, goods).await;
    assert!(left <= 1, "an order of one ticket takes the last but one: {left} left");
    let refunded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM followups WHERE outcome = 'REFUNDED'").fetch_one(db).await.unwrap();
    assert!(refunded >= 20, "{refunded} refunded: 75 asked of 30");
    // What the users paid for is exactly what was drawn (one yuan a ticket).
    let mut spent = Money::ZERO;
    for (user, _) in &users {
        spent = spent.checked_add(m("100.00").checked_sub(env.balances(*user).await.money2).unwrap()).unwrap();
    }
    assert_eq!(spent, Money::parse(&format!("{drawn}.00")).unwrap(), "{drawn} tickets drawn");
    fleet.stop(Duration::from_secs(15)).await;
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_order_paid_delivered_three_times_draws_once() {
    let env = TestEnv::new().await;
    let (mut fleet, api) = paying_fleet(&env, "paid-thrice").await;
    let (_, token) = env.user("0", "0", "100.00").await;
    let goods = env.lottery(GoodsKind::Infinite, "1.00", &["R:9", "SR:1"]).await;
    let order_no = paid_order(&api, &token, goods, 4).await;
    // The relay's own copy, and two more as a relay that crashed before marking it sent would.
    let db = &env.admin.db;
    let payload: String =
        sqlx::query_scalar("SELECT payload::text FROM outbox WHERE kind = 'order_paid'").fetch_one(db).await.unwrap();
    env.publish(ORDER_FOLLOWUP, "order_paid", payload.as_bytes()).await;
    env.publish(ORDER_FOLLOWUP, "order_paid", payload.as_bytes()).await;
    let queue = payfleet::mq::topology::Topology::new(&env.settings.broker).queue(ORDER_FOLLOWUP);
    eventually(Duration::from_secs(10), "three copies wait", || async { env.queue_depth(&queue).await == 3 }).await;

    fleet.spawn(FOLLOWUP_WORKER, &[]).unwrap();
    eventually(Duration::from_secs(20), "every copy consumed", || async { env.queue_depth(&queue).await == 0 }).await;
    let r = api.order(&token, &order_no).await.unwrap();
    assert_eq!(r.data()["draws"].as_array().unwrap().len(), 4, "{:?}", r.body);
    let draws: i64 = sqlx::query_scalar("SELECT count(*) FROM draws").fetch_one(db).await.unwrap();
    assert_eq!(draws, 4);
    let dlq = payfleet::mq::topology::Topology::new(&env.settings.broker).dlq(ORDER_FOLLOWUP);
    assert_eq!(env.queue_depth(&dlq).await, 0, "a duplicate is done with, not dead-lettered");
    fleet.stop(Duration::from_secs(15)).await;
}

/// An event for `order_no` as the paying transaction writes it (the draw reads the order row).
fn paid_event(order_no: &str, goods: i64) -> OrderPaid {
    OrderPaid {
        order_no: order_no.to_owned(),
        user_id: 0,
        goods_id: goods,
        kind: GoodsKind::Ichiban,
        num: 1,
        amount: m("1.00"),
        pay_no: String::new(),
        pay_type: PayType::Single(PayMethod::Money2),
        paid_at: time::OffsetDateTime::now_utc(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deliveries_racing_for_one_order_draw_once() {
    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (_, token) = env.user("0", "0", "10.00").await;
    let goods = env.lottery(GoodsKind::Ichiban, "1.00", &["A:3"]).await;
    let order_no = paid_order(&app.api, &token, goods, 1).await;

    // Both deliveries wait on the order's lock, then run one after the other.
    let racers = sqlx::PgPool::connect(&env.env["PAYFLEET__DATABASE__URL"]).await.unwrap();
    let mut holder = env.admin.db.begin().await.unwrap();
    payfleet::store::orders::lock_one(&mut holder, &order_no).await.unwrap();
    let event = paid_event(&order_no, goods);
    let (one, two) = (racers.clone(), racers.clone());
    let (e1, e2) = (event.clone(), event.clone());
    let first = tokio::spawn(async move { followups::draw(&one, &e1).await.unwrap() });
    let second = tokio::spawn(async move { followups::draw(&two, &e2).await.unwrap() });
    until_waiting_on_locks(&env.admin.db, 2).await;
    holder.rollback().await.unwrap();
    let mut outcomes = vec![first.await.unwrap(), second.await.unwrap()];
    outcomes.sort_by_key(|f| format!("{f:?}"));
    assert_eq!(outcomes, [Followed::Already, Followed::Drawn(1)]);
    assert_eq!(stock_adds_up(&env.admin.db, goods).await, (2, 1));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orders_racing_for_the_last_prize_serve_one_and_refund_the_other() {
    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (user, token) = env.user("0", "0", "10.00").await;
    let goods = env.lottery(GoodsKind::Ichiban, "1.00", &["last:1"]).await;
    let a = paid_order(&app.api, &token, goods, 1).await;
    let b = paid_order(&app.api, &token, goods, 1).await;

    // Both orders have counted nothing yet: each waits for the box, held here.
    let racers = sqlx::PgPool::connect(&env.env["PAYFLEET__DATABASE__URL"]).await.unwrap();
    let mut holder = env.admin.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM prizes WHERE goods_id = $1 FOR UPDATE")
        .bind(goods)
        .fetch_all(&mut *holder)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for order_no in [&a, &b] {
        let (db, event) = (racers.clone(), paid_event(order_no, goods));
        tasks.push(tokio::spawn(async move { followups::draw(&db, &event).await.unwrap() }));
    }
    until_waiting_on_locks(&env.admin.db, 2).await;
    holder.rollback().await.unwrap();
    let mut drawn = 0;
    let mut refunded = 0;
    for task in tasks {
        match task.await.unwrap() {
            Followed::Drawn(1) => drawn += 1,
            Followed::Refunded { refund_no, why } => {
                assert!(refund_no.starts_with("UNSERVED-ORD"), "{refund_no}");
                assert!(why.contains("0 prizes are left"), "{why}");
                refunded += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((drawn, refunded), (1, 1));
    assert_eq!(stock_adds_up(&env.admin.db, goods).await, (0, 1));
    assert_eq!(env.balances(user).await.money2, m("9.00"), "the unserved order's yuan is back");
    each_order_served_once(&env.admin.db).await;
    app.stop().await;
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followup_worker_killed_mid_batch_loses_nothing_and_draws_nothing_twice() {
    let env = TestEnv::new().await;
    let (mut fleet, api) = paying_fleet(&env, "kill-followup").await;
    let (_, token) = env.user("0", "0", "1000.00").await;
    let boxed = env.lottery(GoodsKind::Ichiban, "1.00", &["A:50", "B:50"]).await;
    let pool = env.lottery(GoodsKind::Infinite, "1.00", &["R:3", "SR:1"]).await;
    let mut nums = HashMap::new();
    for i in 0..20i64 {
        let goods = if i % 2 == 0 { boxed } else { pool };
        nums.insert(paid_order(&api, &token, goods, 1 + i % 3).await, 1 + i % 3);
    }
    // The box is held, so the worker's batches stop at its first ichiban order, mid-batch.
    let db = &env.admin.db;
    let mut holder = db.begin().await.unwrap();
    sqlx::query("SELECT id FROM prizes WHERE goods_id = $1 FOR UPDATE")
        .bind(boxed)
        .fetch_all(&mut *holder)
        .await
        .unwrap();
    fleet.spawn(FOLLOWUP_WORKER, &[]).unwrap();
    until_waiting_on_locks(db, 1).await;
    fleet.kill(FOLLOWUP_WORKER).await;
    holder.rollback().await.unwrap();
    let before = followed(db).await;
    assert!(before < 20, "the kill came mid-way: {before} of 20 done");

    fleet.spawn(FOLLOWUP_WORKER, &[]).unwrap();
    eventually(Duration::from_secs(60), "every order followed up", || async { followed(db).await == 20 }).await;
    each_order_served_once(db).await;
    let drawn: i64 = sqlx::query_scalar("SELECT count(*) FROM draws").fetch_one(db).await.unwrap();
    assert_eq!(drawn, nums.values().sum::<i64>(), "each order drew its num, once");
    let (left, in_box) = stock_adds_up(db, boxed).await;
    assert_eq!(left + in_box, 100);
    fleet.stop(Duration::from_secs(15)).await;
    env.audit_is_clean().await;
}
