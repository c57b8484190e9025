//! Refunds by operators: split over the parts in the written order, idempotent by refund_no,
//! never more than was paid (the database refuses it, whatever runs at once), with their ledger,
//! profit_pay rows and order-refunded events.

use crate::common;

use std::time::Duration;

use common::trades::{APPID, MCHID, V3, create_request, integral_payment, report};
use common::{TestEnv, m, until_waiting_on_locks};
use payfleet::channel::{ChannelRefund, RefundState, TradeState};
use payfleet::domain::{Code, Money, PayMethod};
use payfleet::store::refunds::{self, RefundRequest, RefundSettled, Refunded};
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

/// A user with a WeChat-paid order of 10.00 (settled from a confirmed report); its pay_no.
async fn a_wechat_paid_order(env: &TestEnv) -> (i64, String, String) {
    let db = &env.admin.db;
    let (user, _) = env.user("0", "0", "0").await;
    let order = env.orders(user, env.goods("10.00").await, 1).await.remove(0);
    let Begun::Prepay { pay_no, .. } =
        wechat::begin(db, &create_request(user, &order), V3, Duration::from_secs(7000)).await.unwrap()
    else {
        panic!("a prepay")
    };
    let settled = wechat::settle(db, &report(&pay_no, TradeState::Success, 1000, APPID), APPID, MCHID).await.unwrap();
    assert_eq!(settled, Settlement::Settled);
    (user, order, pay_no)
}

/// What WeChat would report of a refund part.
fn channel_refund(pay_no: &str, part_no: &str, fen: i64, state: RefundState) -> ChannelRefund {
    ChannelRefund {
        out_trade_no: pay_no.to_owned(),
        out_refund_no: part_no.to_owned(),
        refund_id: Some(format!("5030{part_no}")),
        state,
        refund_fen: fen,
        success_time: None,
    }
}

/// The part numbers the outbox holds requests to WeChat for.
async fn requested_parts(db: &PgPool, order_no: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT o.payload->>'part_no' FROM outbox o JOIN refund_parts rp ON rp.part_no = o.payload->>'part_no'
         JOIN refunds r USING (refund_no) WHERE o.kind = 'wechat_refund' AND r.order_no = $1 ORDER BY o.id",
    )
    .bind(order_no)
    .fetch_all(db)
    .await
    .unwrap()
}

async fn refunded_events(db: &PgPool, order_no: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE kind = 'order_refunded' AND payload->>'order_no' = $1")
        .bind(order_no)
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_order_has_nothing_to_refund() {
    let env = TestEnv::new().await;
    let (user, _) = env.user("0", "0", "0").await;
    let unpaid = env.orders(user, env.goods("10.00").await, 1).await.remove(0);
    match refunds::create(&env.admin.db, &request(&unpaid, "U", None)).await.unwrap() {
        Refunded::Refused(refusal) => assert!(refusal.message.contains("not paid"), "{refusal:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(order_state(&env.admin.db, &unpaid).await, ("UNPAID".into(), m("0")));
}

/// A WeChat part counts as given back from its request on (no refund meanwhile can take it
/// again), settles once whatever WeChat reports twice, and a part WeChat closed stops counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wechat_part_waits_for_wechat_and_settles_once() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (_, order, pay_no) = a_wechat_paid_order(&env).await;
    let Refunded::Made(made) = refunds::create(db, &request(&order, "W1", Some(m("3.00")))).await.unwrap() else {
        panic!("made")
    };
    assert_eq!(made.status, "PROCESSING");
    let part = &made.parts[0];
    assert_eq!(
        (part.method, part.status.as_str(), part.pay_no.as_str()),
        (PayMethod::Wechat, "PROCESSING", pay_no.as_str())
    );
    assert_eq!(order_state(db, &order).await, ("PARTIALLY_REFUNDED".into(), m("3.00")));
    assert_eq!(
        requested_parts(db, &order).await,
        std::slice::from_ref(&part.part_no),
        "asked of WeChat through the outbox"
    );
    assert_eq!(refunded_events(db, &order).await, 0, "nothing went back yet");
    env.audit_is_clean().await;
    // Only 7.00 is left to ask for while it waits.
    let over = refunds::create(db, &request(&order, "W2", Some(m("7.01")))).await.unwrap();
    assert!(matches!(over, Refunded::Refused(ref r) if r.message.contains("only 7.00")), "{over:?}");

    let processing = channel_refund(&pay_no, &part.part_no, 300, RefundState::Processing);
    assert_eq!(refunds::settle_wechat(db, &processing, "{}", None).await.unwrap(), RefundSettled::Waiting);
    let success = channel_refund(&pay_no, &part.part_no, 300, RefundState::Success);
    let settled = refunds::settle_wechat(db, &success, "{}", None).await.unwrap();
    assert_eq!(settled, RefundSettled::Moved(RefundState::Success));
    let again = refunds::settle_wechat(db, &success, "{}", None).await.unwrap();
    assert_eq!(again, RefundSettled::Unchanged("SUCCESS".into()), "a second notify changes nothing");
    let closed_late = channel_refund(&pay_no, &part.part_no, 300, RefundState::Closed);
    assert_eq!(
        refunds::settle_wechat(db, &closed_late, "{}", None).await.unwrap(),
        RefundSettled::Unchanged("SUCCESS".into())
    );
    let listed = refunds::list(db, &order).await.unwrap();
    assert_eq!((listed[0].status.as_str(), listed[0].parts[0].status.as_str()), ("SUCCESS", "SUCCESS"));
    assert_eq!(refunded_events(db, &order).await, 1);
    env.audit_is_clean().await;

    // The rest, closed by WeChat: it no longer counts, and operators are told.
    let Refunded::Made(rest) = refunds::create(db, &request(&order, "W3", None)).await.unwrap() else { panic!() };
    assert_eq!(order_state(db, &order).await, ("REFUNDED".into(), m("10.00")));
    let closed = channel_refund(&pay_no, &rest.parts[0].part_no, 700, RefundState::Closed);
    assert_eq!(
        refunds::settle_wechat(db, &closed, "{}", None).await.unwrap(),
        RefundSettled::Moved(RefundState::Closed)
    );
    assert_eq!(order_state(db, &order).await, ("PARTIALLY_REFUNDED".into(), m("3.00")));
    let alerts = wechat::alerts(db, &order).await.unwrap();
    assert!(alerts.iter().any(|(kind, _)| kind == "refund_closed"), "{alerts:?}");
    assert_eq!(refunded_events(db, &order).await, 1, "a refund that gave nothing back is no event");
    env.audit_is_clean().await;

    // A report of another amount, or of a refund that is not ours, settles nothing.
    let Refunded::Made(third) = refunds::create(db, &request(&order, "W4", Some(m("1.00")))).await.unwrap() else {
        panic!()
    };
    let wrong = channel_refund(&pay_no, &third.parts[0].part_no, 999, RefundState::Success);
    assert!(matches!(refunds::settle_wechat(db, &wrong, "{}", None).await.unwrap(), RefundSettled::Alert(_)));
    let stranger = channel_refund(&pay_no, "RF-NOT-OURS", 100, RefundState::Success);
    assert!(matches!(refunds::settle_wechat(db, &stranger, "{}", None).await.unwrap(), RefundSettled::Alert(_)));
    assert_eq!(refunds::list(db, &order).await.unwrap()[2].status, "PROCESSING");
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abnormal_refund_stays_counted_and_is_surfaced() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (_, order, pay_no) = a_wechat_paid_order(&env).await;
    let Refunded::Made(made) = refunds::create(db, &request(&order, "A1", None)).await.unwrap() else { panic!() };
    let part_no = &made.parts[0].part_no;
    let abnormal = channel_refund(&pay_no, part_no, 1000, RefundState::Abnormal);
    assert_eq!(
        refunds::settle_wechat(db, &abnormal, "{}", None).await.unwrap(),
        RefundSettled::Moved(RefundState::Abnormal)
    );
    assert_eq!(refunds::list(db, &order).await.unwrap()[0].status, "ABNORMAL");
    // The money left the merchant: no second refund can be asked for it.
    assert_eq!(order_state(db, &order).await, ("REFUNDED".into(), m("10.00")));
    assert!(matches!(refunds::create(db, &request(&order, "A2", None)).await.unwrap(), Refunded::Refused(_)));
    assert!(wechat::alerts(db, &order).await.unwrap().iter().any(|(kind, _)| kind == "refund_abnormal"));
    assert_eq!(refunded_events(db, &order).await, 0);
    env.audit_is_clean().await;
    // Seen to at WeChat (sent to another account): WeChat reports it SUCCESS at last.
    let success = channel_refund(&pay_no, part_no, 1000, RefundState::Success);
    assert_eq!(
        refunds::settle_wechat(db, &success, "{}", None).await.unwrap(),
        RefundSettled::Moved(RefundState::Success)
    );
    assert_eq!(refunded_events(db, &order).await, 1);
    env.audit_is_clean().await;
}

/// Paid twice: its WeChat trade reported closed (the order payable again), paid with integral,
/// then WeChat took the money after all. That payment goes back in full by itself; the order
/// stays paid by integral, and its own refund gives back the integral.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_taken_twice_is_refunded_by_itself_and_the_order_stays_paid() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, _) = env.user("0", "100", "0").await;
    let twice = env.orders(user, env.goods("10.00").await, 1).await.remove(0);
    let Begun::Prepay { pay_no, .. } =
        wechat::begin(db, &create_request(user, &twice), V3, Duration::from_secs(7000)).await.unwrap()
    else {
        panic!("a prepay")
    };
    wechat::settle(db, &report(&pay_no, TradeState::Closed, 1000, APPID), APPID, MCHID).await.unwrap();
    payfleet::store::payments::apply(db, &[integral_payment(user, &twice)]).await.unwrap();
    for _ in 0..2 {
        wechat::settle(db, &report(&pay_no, TradeState::Success, 1000, APPID), APPID, MCHID).await.unwrap();
    }
    let refunds_made = refunds::list(db, &twice).await.unwrap();
    assert_eq!(refunds_made.len(), 1, "one refund, however often WeChat reports it: {refunds_made:?}");
    let auto = &refunds_made[0];
    assert_eq!(
        (auto.refund_no.clone(), auto.amount, auto.operator.as_str()),
        (format!("AUTO-{pay_no}"), m("10.00"), "payfleet")
    );
    assert_eq!(auto.parts[0].pay_no, pay_no);
    assert_eq!(order_state(db, &twice).await, ("PAID".into(), m("0")), "the order is as it was");
    let alerts = wechat::alerts(db, &twice).await.unwrap();
    assert!(alerts.iter().any(|(kind, detail)| kind == "double_payment" && detail.contains("AUTO-")), "{alerts:?}");
    assert_eq!(requested_parts(db, &twice).await.len(), 1);
    // A query answering REFUND later is our own refund: nothing more.
    let refunded = wechat::settle(db, &report(&pay_no, TradeState::Refund, 1000, APPID), APPID, MCHID).await.unwrap();
    assert_eq!(refunded, Settlement::Duplicate);
    env.audit_is_clean().await;

    let Refunded::Made(own) = refunds::create(db, &request(&twice, "T", None)).await.unwrap() else { panic!() };
    assert_eq!(own.parts.iter().map(|p| p.method).collect::<Vec<_>>(), [PayMethod::Integral]);
    assert_eq!(env.balances(user).await.integral, m("100"), "the integral back");
    env.audit_is_clean().await;
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

/// The expiry check and WeChat's late SUCCESS notify of a single WeChat payment race for the
/// order's lock, which the test holds: expiry first closes the order and the late payment goes
/// back in full, once; the notify first pays the order and expiry changes nothing.
async fn expiry_against_a_late_notify(expiry_first: bool) {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, _) = env.user("0", "0", "0").await;
    let order = env.orders(user, env.goods("10.00").await, 1).await.remove(0);
    let Begun::Prepay { pay_no, .. } =
        wechat::begin(db, &create_request(user, &order), V3, Duration::from_secs(7000)).await.unwrap()
    else {
        panic!("a prepay")
    };
    let (racers, holder) = env.hold_expired_order(&order).await;
    let expire = {
        let (db, order, pay_no) = (racers.clone(), order.clone(), pay_no.clone());
        move || tokio::spawn(async move { format!("{:?}", wechat::expire(&db, &order, Some(&pay_no)).await.unwrap()) })
    };
    let notify = {
        let (db, pay_no) = (racers.clone(), pay_no.clone());
        move || {
            tokio::spawn(async move {
                let r = report(&pay_no, TradeState::Success, 1000, APPID);
                format!("{:?}", wechat::settle(&db, &r, APPID, MCHID).await.unwrap())
            })
        }
    };
    let (start_first, start_second): (Box<dyn FnOnce() -> _>, Box<dyn FnOnce() -> _>) =
        if expiry_first { (Box::new(expire), Box::new(notify)) } else { (Box::new(notify), Box::new(expire)) };
    let first = start_first();
    until_waiting_on_locks(db, 1).await;
    let second = start_second();
    until_waiting_on_locks(db, 2).await;
    holder.commit().await.unwrap();
    let outcomes = (first.await.unwrap(), second.await.unwrap());
    racers.close().await;

    let payment: (String, Money) = sqlx::query_as("SELECT status, refunded FROM payments WHERE pay_no = $1")
        .bind(&pay_no)
        .fetch_one(db)
        .await
        .unwrap();
    let listed = refunds::list(db, &order).await.unwrap();
    let alerts = wechat::alerts(db, &order).await.unwrap();
    if expiry_first {
        assert_eq!(order_state(db, &order).await, ("CLOSED".into(), m("0")), "{outcomes:?}");
        assert_eq!(payment, ("REFUNDED".into(), m("10.00")));
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!((listed[0].amount, listed[0].parts[0].method), (m("10.00"), PayMethod::Wechat));
        assert_eq!(requested_parts(db, &order).await.len(), 1, "asked of WeChat once");
        assert!(
            alerts.iter().any(|(kind, detail)| kind == "paid_after_close" && detail.contains("AUTO-")),
            "{alerts:?}"
        );
        // WeChat's notify again (its retries), or a query: the same payment, refunded once.
        wechat::settle(db, &report(&pay_no, TradeState::Success, 1000, APPID), APPID, MCHID).await.unwrap();
        assert_eq!(refunds::list(db, &order).await.unwrap().len(), 1);
    } else {
        assert_eq!(order_state(db, &order).await, ("PAID".into(), m("0")), "{outcomes:?}");
        assert_eq!(payment, ("SUCCESS".into(), m("0")));
        assert!(listed.is_empty(), "{listed:?}");
        assert!(outcomes.1.contains("Unchanged"), "{outcomes:?}");
    }
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_as_the_order_expired_is_refunded_once_and_the_order_stays_closed() {
    expiry_against_a_late_notify(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_before_the_expiry_check_pays_the_order_and_refunds_nothing() {
    expiry_against_a_late_notify(false).await;
}
