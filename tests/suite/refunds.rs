//! Refunds by operators: split over the parts in the written order, idempotent by refund_no,
//! never more than was paid (the database refuses it, whatever runs at once), with their ledger,
//! profit_pay rows and order-refunded events.

use crate::common;

use std::time::Duration;

use common::trades::{APPID, MCHID, V3, create_request, integral_payment, report};
use common::{TestEnv, m, until_waiting_on_locks};
use payfleet::channel::TradeState;
use payfleet::domain::{Code, Money};
use payfleet::store::refunds::{self, RefundRequest, Refunded};
use payfleet::store::users::Balances;
use payfleet::store::wechat::{self, Begun, Settlement};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::json;
use sqlx::PgPool;

fn request<'a>(order_no: &'a str, refund_no: &'a str, amount: Option<Money>) -> RefundRequest<'a> {
    RefundRequest { order_no, refund_no, amount, reason: "test", operator: "ops" }
}

async fn order_state(db: &PgPool, order_no: &str) -> (String, Money) {
    sqlx::query_as("SELECT status, refunded FROM orders WHERE order_no = $1")
        .bind(order_no)
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_refunds_a_mixed_order_in_parts_in_the_written_order() {
    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (user, token) = env.user("10.00", "100", "10.00").await;
    let goods = env.goods("10.00").await;
    let order = app.api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();
    let body = json!({
        "order_no": order, "total_amount": "10.00", "pay_password": "123456",
        "payment_methods": [
            { "type": "balance", "amount": "4.00" },
            { "type": "integral", "amount": "30", "money_equivalent": "3.00" },
            { "type": "money2", "amount": "3.00" },
        ],
    });
    let paid = app.api.post("/api/v1/payment/mixed/pay", Some(&token), &body).await.unwrap();
    assert_eq!(paid.field("pay_status"), "SUCCESS", "{:?}", paid.body);
    let operator = env.admin.tokens().unwrap().issue_operator("ops.bob").unwrap();
    let path = format!("/admin/v1/orders/{order}/refunds");
    let post = |b: serde_json::Value| {
        let (api, path, operator) = (app.api.clone(), path.clone(), operator.clone());
        async move { api.post(&path, Some(&operator), &b).await.unwrap() }
    };

    // 4.00: money2 first (3.00), then 1.00 of integral (10 points).
    let r = post(json!({ "refund_no": "R1", "amount": "4.00", "reason": "one prize missing" })).await;
    assert_eq!((r.status, r.field("status")), (200, "SUCCESS"), "{:?}", r.body);
    let parts: Vec<(String, String, String)> = r.data()["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["method"].as_str().unwrap().into(),
                p["amount"].as_str().unwrap().into(),
                p["asset_amount"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        [("money2".into(), "3.00".into(), "3.00".into()), ("integral".into(), "1.00".into(), "10.00".into())]
    );
    assert_eq!(env.balances(user).await, Balances { money: m("6.00"), integral: m("80"), money2: m("10.00") });
    let status = app.api.status(&token, &order).await.unwrap();
    assert_eq!((status.field("pay_status"), status.field("refunded_amount")), ("PARTIALLY_REFUNDED", "4.00"));
    let statuses: Vec<&str> =
        status.data()["payment_details"].as_array().unwrap().iter().map(|d| d["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["SUCCESS", "PARTIALLY_REFUNDED", "REFUNDED"]);

    // The same request again is the same refund; the same number for another is refused.
    let again = post(json!({ "refund_no": "R1", "amount": "4.00", "reason": "one prize missing" })).await;
    assert_eq!((again.status, again.data()["parts"].clone()), (200, r.data()["parts"].clone()));
    let other = post(json!({ "refund_no": "R1", "amount": "5.00", "reason": "one prize missing" })).await;
    assert_eq!((other.status, other.code()), (409, "IDEMPOTENCY_CONFLICT"), "{:?}", other.body);
    let too_much = post(json!({ "refund_no": "R2", "amount": "6.01", "reason": "everything" })).await;
    assert_eq!(too_much.code(), "VALIDATION", "{:?}", too_much.body);
    assert!(too_much.body["msg"].as_str().unwrap().contains("only 6.00"), "{:?}", too_much.body);

    // The rest (no amount): integral 2.00 (20 points), then balance 4.00.
    let rest = post(json!({ "refund_no": "R2", "reason": "order cancelled by the shop" })).await;
    assert_eq!((rest.status, rest.field("amount")), (200, "6.00"), "{:?}", rest.body);
    assert_eq!(env.balances(user).await, Balances { money: m("10.00"), integral: m("100"), money2: m("10.00") });
    assert_eq!(app.api.status(&token, &order).await.unwrap().field("pay_status"), "REFUNDED");
    let none_left = post(json!({ "refund_no": "R3", "reason": "again" })).await;
    assert_eq!(none_left.code(), "VALIDATION", "{:?}", none_left.body);

    let listed = app.api.get(&path, Some(&operator)).await.unwrap();
    let numbers: Vec<&str> =
        listed.data()["refunds"].as_array().unwrap().iter().map(|r| r["refund_no"].as_str().unwrap()).collect();
    assert_eq!(numbers, ["R1", "R2"]);
    assert_eq!(app.api.get(&path, Some(&token)).await.unwrap().code(), "FORBIDDEN", "users do not refund");
    let db = &env.admin.db;
    let profit: Vec<rust_decimal::Decimal> =
        sqlx::query_scalar("SELECT change_money FROM profit_pay WHERE order_no = $1 AND change_money > 0 ORDER BY id")
            .bind(&order)
            .fetch_all(db)
            .await
            .unwrap();
    assert_eq!(profit.len(), 4, "a profit_pay row per refund part: {profit:?}");
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE kind = 'order_refunded'").fetch_one(db).await.unwrap();
    assert_eq!(events, 2);
    env.audit_is_clean().await;
    app.stop().await;
}

/// A user with an integral-paid order of 10.00.
async fn a_paid_order(env: &TestEnv) -> (i64, String) {
    let (user, _) = env.user("0", "100", "0").await;
    let order = env.orders(user, env.goods("10.00").await, 1).await.remove(0);
    payfleet::store::payments::apply(&env.admin.db, &[integral_payment(user, &order)]).await.unwrap();
    (user, order)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_waiting_for_another_sees_what_that_one_gave_back() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, order) = a_paid_order(&env).await;

    // The first refund's transaction, held open after it gave 7.00 back.
    let mut first = db.begin().await.unwrap();
    let made = refunds::create_in(&mut first, &request(&order, "A", Some(m("7.00")))).await.unwrap();
    assert!(matches!(made, Refunded::Made(_)), "{made:?}");
    // The second asks for 7.00 too, and waits for the order's lock.
    let (pool, order2) = (db.clone(), order.clone());
    let second =
        tokio::spawn(async move { refunds::create(&pool, &request(&order2, "B", Some(m("7.00")))).await.unwrap() });
    until_waiting_on_locks(db, 1).await;
    first.commit().await.unwrap();
    match second.await.unwrap() {
        Refunded::Refused(refusal) => {
            assert_eq!(refusal.code, Code::Validation);
            assert!(refusal.message.contains("only 3.00"), "{}", refusal.message);
        }
        other => panic!("7.00 + 7.00 of a 10.00 order: {other:?}"),
    }
    assert_eq!(order_state(db, &order).await, ("PARTIALLY_REFUNDED".into(), m("7.00")));
    assert_eq!(env.balances(user).await.integral, m("70"));

    // Behind the check, the database: no statement gives back more than was paid.
    let over =
        sqlx::query("UPDATE payments SET refunded = amount + 0.01 WHERE order_no = $1").bind(&order).execute(db).await;
    assert!(over.is_err(), "the CHECK refuses it");
    let over =
        sqlx::query("UPDATE orders SET refunded = amount + 0.01 WHERE order_no = $1").bind(&order).execute(db).await;
    assert!(over.is_err(), "the CHECK refuses it");
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_of_an_unpaid_or_wechat_paid_order_are_refused_and_change_nothing() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, _) = env.user("0", "0", "0").await;
    let goods = env.goods("10.00").await;
    let unpaid = env.orders(user, goods, 1).await.remove(0);
    match refunds::create(db, &request(&unpaid, "U", None)).await.unwrap() {
        Refunded::Refused(refusal) => assert!(refusal.message.contains("not paid"), "{refusal:?}"),
        other => panic!("{other:?}"),
    }
    let order = env.orders(user, goods, 1).await.remove(0);
    let Begun::Prepay { pay_no, .. } =
        wechat::begin(db, &create_request(user, &order), V3, Duration::from_secs(7000)).await.unwrap()
    else {
        panic!("a prepay")
    };
    let settled = wechat::settle(db, &report(&pay_no, TradeState::Success, 1000, APPID), APPID, MCHID).await.unwrap();
    assert_eq!(settled, Settlement::Settled);
    match refunds::create(db, &request(&order, "W", Some(m("1.00")))).await.unwrap() {
        Refunded::Refused(refusal) => assert!(refusal.message.contains("not available yet"), "{refusal:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(order_state(db, &order).await, ("PAID".into(), m("0")));
    env.audit_is_clean().await;

    // Paid twice: its WeChat trade reported closed (the order payable again), paid with
    // integral, then WeChat took the money after all. Refunding "the order" would give back the
    // wrong payment: refused, with what to do.
    let (user, _) = env.user("0", "100", "0").await;
    let twice = env.orders(user, goods, 1).await.remove(0);
    let Begun::Prepay { pay_no, .. } =
        wechat::begin(db, &create_request(user, &twice), V3, Duration::from_secs(7000)).await.unwrap()
    else {
        panic!("a prepay")
    };
    wechat::settle(db, &report(&pay_no, TradeState::Closed, 1000, APPID), APPID, MCHID).await.unwrap();
    payfleet::store::payments::apply(db, &[integral_payment(user, &twice)]).await.unwrap();
    wechat::settle(db, &report(&pay_no, TradeState::Success, 1000, APPID), APPID, MCHID).await.unwrap();
    match refunds::create(db, &request(&twice, "T", None)).await.unwrap() {
        Refunded::Refused(refusal) => assert!(refusal.message.contains("more than once"), "{refusal:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(env.balances(user).await.integral, m("0"), "nothing given back");
}

proptest! {
    #![proptest_config(Config { cases: 8, ..Config::default() })]

    /// Refunds of one order running at once never give back more than was paid, and every one
    /// that answers made is in the books.
    #[test]
    fn concurrent_refunds_never_over_refund(asks in proptest::collection::vec(1i64..=600, 2..6)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let env = TestEnv::new().await;
            let db = env.admin.db.clone();
            let (user, order) = a_paid_order(&env).await;
            let tasks: Vec<_> = asks
                .iter()
                .enumerate()
                .map(|(i, fen)| {
                    let (db, order) = (db.clone(), order.clone());
                    let amount = Money::from_fen(*fen).unwrap();
                    tokio::spawn(async move {
                        let refund_no = format!("P{i}");
                        match refunds::create(&db, &request(&order, &refund_no, Some(amount))).await.unwrap() {
                            Refunded::Made(made) => made.amount.to_fen(),
                            _ => 0,
                        }
                    })
                })
                .collect();
            let mut given = 0;
            for task in tasks {
                given += task.await.unwrap();
            }
            assert!(given <= 1000, "{given} fen given back of 1000");
            let (_, refunded) = order_state(&db, &order).await;
            assert_eq!(refunded.to_fen(), given);
            assert_eq!(env.balances(user).await.integral.to_fen(), given * 10, "10 points per yuan back");
            env.audit_is_clean().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refund_no_for_two_orders_at_once_is_one_refund_and_one_conflict() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (_, first_order) = a_paid_order(&env).await;
    let (_, second_order) = a_paid_order(&env).await;
    let mut first = db.begin().await.unwrap();
    let made = refunds::create_in(&mut first, &request(&first_order, "SAME", Some(m("1.00")))).await.unwrap();
    assert!(matches!(made, Refunded::Made(_)), "{made:?}");
    // The same number for another order, meanwhile: it waits on the number, not on an order.
    let (pool, order) = (db.clone(), second_order.clone());
    let second = tokio::spawn(async move { refunds::create(&pool, &request(&order, "SAME", Some(m("1.00")))).await });
    until_waiting_on_locks(db, 1).await;
    first.commit().await.unwrap();
    match second.await.unwrap() {
        Ok(Refunded::Refused(refusal)) => assert_eq!(refusal.code, Code::IdempotencyConflict),
        other => panic!("a conflict, not an error or a second refund: {other:?}"),
    }
    assert_eq!(order_state(db, &second_order).await, ("PAID".into(), m("0")));
    env.audit_is_clean().await;
}
