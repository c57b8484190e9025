//! The interleavings that once let an order be paid twice, or two transactions deadlock, forced
//! with two connections: one transaction held open at the point of the race while the other
//! starts and waits on it.

use crate::common;

use std::time::Duration;

use common::trades::{APPID, MCHID, V3, create_request, integral_payment, report};
use common::{TestEnv, m, until_waiting_on_locks};
use payfleet::channel::{Prepaid, TradeState};
use payfleet::domain::{Code, PayMethod};
use payfleet::store::payments::{self, Applied, AssetPayment};
use payfleet::store::wechat::{self, Begun, Expiry, Recorded, Settlement};
use sqlx::PgPool;

const VALID: Duration = Duration::from_secs(7000);

/// Applies one payment in a transaction of its own, in the background (it will wait on a lock
/// the test holds).
fn apply_meanwhile(db: &PgPool, payment: AssetPayment) -> tokio::task::JoinHandle<Applied> {
    let pool = db.clone();
    tokio::spawn(async move { payments::apply(&pool, std::slice::from_ref(&payment)).await.unwrap().remove(0) })
}

/// A user with this much integral, and an unpaid order of theirs for 10.00.
async fn a_user_and_an_order(env: &TestEnv, integral: &str) -> (i64, String) {
    let (user, _) = env.user("0", integral, "0").await;
    let goods = env.goods("10.00").await;
    (user, env.orders(user, goods, 1).await.remove(0))
}

async fn order_status(db: &PgPool, order_no: &str) -> (String, Option<String>) {
    sqlx::query_as("SELECT status, coalesce(pay_no, paying_pay_no) FROM orders WHERE order_no = $1")
        .bind(order_no)
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wechat_create_holding_the_order_keeps_an_asset_payment_started_meanwhile_out() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, order) = a_user_and_an_order(&env, "1000").await;

    // The create's transaction, held open right after it began the WeChat payment.
    let mut create = db.begin().await.unwrap();
    let begun = wechat::begin_in(&mut create, &create_request(user, &order), V3, VALID).await.unwrap();
    let Begun::Prepay { pay_no, .. } = begun else { panic!("{begun:?}") };
    // The asset payment starts meanwhile and waits for the order's lock.
    let asset = apply_meanwhile(db, integral_payment(user, &order));
    until_waiting_on_locks(db, 1).await;
    create.commit().await.unwrap();

    match asset.await.unwrap() {
        Applied::Refused(refusal) => assert_eq!(refusal.code, Code::OrderPaying, "{refusal:?}"),
        other => panic!("the asset payment must not pay an order a WeChat payment holds: {other:?}"),
    }
    assert_eq!(env.balances(user).await.integral, m("1000"), "nothing deducted");
    assert_eq!(order_status(db, &order).await, ("PAYING".to_owned(), Some(pay_no)));
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asset_payment_holding_the_order_keeps_a_wechat_create_started_meanwhile_out() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, order) = a_user_and_an_order(&env, "1000").await;

    // The asset payment's transaction, held open after it paid.
    let mut asset = db.begin().await.unwrap();
    let payment = integral_payment(user, &order);
    let applied = payments::apply_in(&mut asset, &[&payment]).await.unwrap().remove(0);
    let Applied::Paid(receipt) = applied else { panic!("{applied:?}") };
    // The WeChat create starts meanwhile and waits for the order's lock.
    let (pool, request) = (db.clone(), create_request(user, &order));
    let create = tokio::spawn(async move { wechat::begin(&pool, &request, V3, VALID).await.unwrap() });
    until_waiting_on_locks(db, 1).await;
    asset.commit().await.unwrap();

    match create.await.unwrap() {
        Begun::Refused(refusal) => {
            assert_eq!((refusal.code, refusal.pay_no.as_deref()), (Code::OrderPaid, Some(receipt.pay_no.as_str())))
        }
        other => panic!("no WeChat payment may begin for a paid order: {other:?}"),
    }
    let wechat_payments: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE order_no = $1 AND method = 'wechat'")
            .bind(&order)
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!(wechat_payments, 0);
    assert_eq!(order_status(db, &order).await, ("PAID".to_owned(), Some(receipt.pay_no)));
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepay_for_an_order_that_stopped_waiting_for_it_is_not_kept() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, order) = a_user_and_an_order(&env, "0").await;
    let Begun::Prepay { pay_no, .. } = wechat::begin(db, &create_request(user, &order), V3, VALID).await.unwrap()
    else {
        panic!("a new WeChat payment")
    };
    // While WeChat answers the prepay, the order's pay time runs out and the expiry closes it.
    sqlx::query("UPDATE orders SET expires_at = now() WHERE order_no = $1").bind(&order).execute(db).await.unwrap();
    assert_eq!(wechat::expire(db, &order, None).await.unwrap(), Expiry::Unchecked, "its payment was not checked");
    assert_eq!(wechat::expire(db, &order, Some(&pay_no)).await.unwrap(), Expiry::Closed);
    let prepaid = Prepaid::Jsapi { prepay_id: "wx-late".into() };
    match wechat::record_prepaid(db, &pay_no, &prepaid).await.unwrap() {
        Recorded::Refused(refusal) => assert_eq!(refusal.code, Code::OrderClosed, "{refusal:?}"),
        Recorded::Kept => panic!("pay params for an order that no longer waits for the payment"),
    }
    let kept: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT prepaid FROM payments WHERE pay_no = $1").bind(&pay_no).fetch_one(db).await.unwrap();
    assert_eq!(kept, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_takes_the_order_before_the_payment_so_it_never_deadlocks_with_the_expiry() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, order) = a_user_and_an_order(&env, "0").await;
    let Begun::Prepay { pay_no, .. } = wechat::begin(db, &create_request(user, &order), V3, VALID).await.unwrap()
    else {
        panic!("a new WeChat payment")
    };

    // An expiry-like transaction holds the order, as every order-first locker does.
    let mut expiry = db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orders WHERE order_no = $1 FOR UPDATE")
        .bind(&order)
        .execute(&mut *expiry)
        .await
        .unwrap();
    // The notify settles meanwhile: it must wait for the order without holding the payment.
    let (pool, report) = (db.clone(), report(&pay_no, TradeState::Success, 1000, APPID));
    let settle = tokio::spawn(async move { wechat::settle(&pool, &report, APPID, MCHID).await });
    until_waiting_on_locks(db, 1).await;
    // So the holder takes the payment next without waiting (a deadlock would end one of them).
    sqlx::query("SET LOCAL lock_timeout = '3s'").execute(&mut *expiry).await.unwrap();
    sqlx::query("SELECT 1 FROM payments WHERE pay_no = $1 FOR UPDATE")
        .bind(&pay_no)
        .execute(&mut *expiry)
        .await
        .expect("the payment is free: settling did not lock it before the order");
    expiry.commit().await.unwrap();

    assert_eq!(settle.await.unwrap().expect("settled, not a deadlock victim"), Settlement::Settled);
    assert_eq!(order_status(db, &order).await, ("PAID".to_owned(), Some(pay_no)));
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_balance_payments_that_together_pass_the_daily_limit_cannot_both_pay() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, _) = env.user("100.00", "0", "0").await;
    let goods = env.goods("6.00").await;
    let orders = env.orders(user, goods, 2).await;
    let hash = payfleet::store::users::pay_password_hashes(db, &[user]).await.unwrap().remove(0).1;
    let balance_payment = |order_no: &str| AssetPayment {
        method: PayMethod::Balance,
        amount: m("6.00"),
        asset_amount: m("6.00"),
        verified_hash: Some(hash.clone()),
        password_required: true,
        daily_limit: Some(m("10.00")),
        ..integral_payment(user, order_no)
    };

    // The first payment's transaction, held open after it paid (the user's row locked).
    let mut first = db.begin().await.unwrap();
    let applied = payments::apply_in(&mut first, &[&balance_payment(&orders[0])]).await.unwrap().remove(0);
    assert!(matches!(applied, Applied::Paid(_)), "{applied:?}");
    // The second, for another order, starts meanwhile: 6.00 + 6.00 passes the 10.00 a day.
    let second = apply_meanwhile(db, balance_payment(&orders[1]));
    until_waiting_on_locks(db, 1).await;
    first.commit().await.unwrap();

    match second.await.unwrap() {
        Applied::Refused(refusal) => assert_eq!(refusal.code, Code::DailyLimit, "{refusal:?}"),
        other => panic!("the day's limit counts the payment that committed meanwhile: {other:?}"),
    }
    assert_eq!(env.balances(user).await.money, m("94.00"), "one payment deducted");
    assert_eq!(order_status(db, &orders[1]).await, ("UNPAID".to_owned(), None));
    env.audit_is_clean().await;
}
