//! Settling WeChat payments from reported trades, against the real database: only a trade of
//! ours, for our merchant and the order's amount, settles; once; a failed attempt leaves the
//! payment payable; a closed trade closes it.

use crate::common;

use common::trades::{APPID, MCHID, V3, create_request, report};
use common::{TestEnv, m};
use payfleet::channel::TradeState;
use payfleet::domain::payment::AlertKind;
use payfleet::mq::messages::TradeReported;
use payfleet::store::wechat::{Begun, Settlement, begin, settle};
use std::time::Duration;

async fn begun(env: &TestEnv, user: i64, order_no: &str) -> String {
    match begin(&env.admin.db, &create_request(user, order_no), V3, Duration::from_secs(7000)).await.unwrap() {
        Begun::Prepay { pay_no, .. } => pay_no,
        other => panic!("{other:?}"),
    }
}

async fn payment_status(env: &TestEnv, pay_no: &str) -> String {
    sqlx::query_scalar("SELECT status FROM payments WHERE pay_no = $1")
        .bind(pay_no)
        .fetch_one(&env.admin.db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_matching_trade_settles_and_only_once() {
    let env = TestEnv::new().await;
    let (user, _) = env.user("0", "0", "0").await;
    let goods = env.goods("10.00").await;
    let orders = env.orders(user, goods, 2).await;
    let pay_no = begun(&env, user, &orders[0]).await;
    let db = &env.admin.db;

    // A failed attempt: still payable.
    assert_eq!(
        settle(db, &report(&pay_no, TradeState::Payerror, 1000, APPID), APPID, MCHID).await.unwrap(),
        Settlement::Pending
    );
    assert_eq!(payment_status(&env, &pay_no).await, "PAYING");
    // Another merchant's appid, the wrong amount, an unknown trade: alerts, nothing paid.
    let alert = settle(db, &report(&pay_no, TradeState::Success, 1000, "wxother"), APPID, MCHID).await.unwrap();
    assert!(
        matches!(alert, Settlement::Alert(ref a) if a.kind == AlertKind::MerchantMismatch && a.detail.starts_with("merchant_mismatch")),
        "{alert:?}"
    );
    let alert = settle(db, &report(&pay_no, TradeState::Success, 999, APPID), APPID, MCHID).await.unwrap();
    assert!(
        matches!(alert, Settlement::Alert(ref a) if a.kind == AlertKind::AmountMismatch && a.detail.starts_with("amount_mismatch")),
        "{alert:?}"
    );
    let alert = settle(db, &report("WX0000000000404", TradeState::Success, 1000, APPID), APPID, MCHID).await.unwrap();
    assert!(
        matches!(alert, Settlement::Alert(ref a) if a.kind == AlertKind::UnknownTrade && a.detail.starts_with("unknown_trade")),
        "{alert:?}"
    );
    assert_eq!(payment_status(&env, &pay_no).await, "PAYING");
    let kinds: Vec<(String, String)> = payfleet::store::wechat::alerts(db, &orders[0]).await.unwrap();
    assert_eq!(kinds.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["merchant_mismatch", "amount_mismatch"]);

    // The real one settles, once, however often it is reported.
    assert_eq!(
        settle(db, &report(&pay_no, TradeState::Success, 1000, APPID), APPID, MCHID).await.unwrap(),
        Settlement::Settled
    );
    let reports: Vec<TradeReported> = (0..5).map(|_| report(&pay_no, TradeState::Success, 1000, APPID)).collect();
    let again = futures_util::future::join_all(reports.iter().map(|r| settle(db, r, APPID, MCHID))).await;
    assert!(again.into_iter().all(|s| s.unwrap() == Settlement::Duplicate));
    assert_eq!(payment_status(&env, &pay_no).await, "SUCCESS");
    let (status, order_pay_no): (String, String) =
        sqlx::query_as("SELECT status, pay_no FROM orders WHERE order_no = $1")
            .bind(&orders[0])
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!((status.as_str(), order_pay_no.as_str()), ("PAID", pay_no.as_str()));
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE kind = 'order_paid'").fetch_one(db).await.unwrap();
    assert_eq!(events, 1);
    env.audit_is_clean().await;

    // A trade closed at WeChat closes the payment; the order cannot get a new one.
    let closed = begun(&env, user, &orders[1]).await;
    let outcome = settle(db, &report(&closed, TradeState::Closed, 1000, APPID), APPID, MCHID).await.unwrap();
    assert_eq!(outcome, Settlement::RecordedFailure);
    assert_eq!(payment_status(&env, &closed).await, "CLOSED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_wechat_payment_keeps_other_methods_out() {
    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (user, token) = env.user("100.00", "1000", "0").await;
    let goods = env.goods("10.00").await;
    let order = env.orders(user, goods, 1).await.remove(0);
    let pay_no = begun(&env, user, &order).await;
    let r = app.api.pay_integral(&token, &order, "100.00", "10.00").await.unwrap();
    assert_eq!((r.status, r.code()), (409, "ORDER_PAYING"), "{:?}", r.body);
    assert_eq!(env.balances(user).await.integral, m("1000"));
    // Once WeChat closed it, another method may pay.
    settle(&env.admin.db, &report(&pay_no, TradeState::Closed, 1000, APPID), APPID, MCHID).await.unwrap();
    let r = app.api.pay_integral(&token, &order, "100.00", "10.00").await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_reported_after_the_refund_never_pays_the_order() {
    let env = TestEnv::new().await;
    let (user, _) = env.user("0", "0", "0").await;
    let goods = env.goods("10.00").await;
    let order = env.orders(user, goods, 1).await.remove(0);
    let pay_no = begun(&env, user, &order).await;
    let db = &env.admin.db;
    // Paid, the notify lost, refunded in the merchant platform: the query finds REFUND.
    let refunded = settle(db, &report(&pay_no, TradeState::Refund, 1000, APPID), APPID, MCHID).await.unwrap();
    assert!(
        matches!(refunded, Settlement::Alert(ref a) if a.kind == AlertKind::RefundedUnsettled && a.detail.starts_with("refunded_unsettled")),
        "{refunded:?}"
    );
    assert_eq!(payment_status(&env, &pay_no).await, "REFUNDED");
    // Then WeChat's retry of the original SUCCESS notify arrives, genuine and late.
    let late = settle(db, &report(&pay_no, TradeState::Success, 1000, APPID), APPID, MCHID).await.unwrap();
    assert!(
        matches!(late, Settlement::Alert(ref a) if a.kind == AlertKind::SuccessAfterRefund && a.detail.starts_with("success_after_refund")),
        "{late:?}"
    );
    assert_eq!(payment_status(&env, &pay_no).await, "REFUNDED");
    let status: String =
        sqlx::query_scalar("SELECT status FROM orders WHERE order_no = $1").bind(&order).fetch_one(db).await.unwrap();
    assert_eq!(status, "UNPAID");
    let (profit, events): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM profit_pay WHERE order_no = $1), (SELECT count(*) FROM outbox WHERE kind = 'order_paid')",
    )
    .bind(&order)
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!((profit, events), (0, 0), "no money recorded, no follow-up");
    env.audit_is_clean().await;
}
