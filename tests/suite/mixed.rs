//! Mixed payments (seed 000 §6.4) at the store's level and through the HTTP API: every internal
//! part taken in one transaction or none; holds made final by the WeChat part or returned
//! exactly once, however the expiry check, a cancel and a late notify race.

use crate::common;

use common::trades::{APPID, MCHID, V3, report};
use common::{TestEnv, m, until_waiting_on_locks};
use payfleet::channel::{TradeState, TradeType};
use payfleet::domain::mixed::MixedPart;
use payfleet::domain::{Code, Money, PayMethod, PaymentStatus};
use payfleet::mq::messages::WechatPayer;
use payfleet::store::mixed::{self, MixedApplied, MixedPayment};
use payfleet::store::users::Balances;
use payfleet::store::wechat::{self, Cancelled, Expiry, Settlement};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::json;
use sqlx::PgPool;

fn part(method: PayMethod, yuan: &str) -> MixedPart {
    let amount = m(yuan);
    let asset_amount = if method == PayMethod::Integral { amount.checked_mul(10).unwrap() } else { amount };
    MixedPart { method, amount, asset_amount }
}

fn payer() -> WechatPayer {
    WechatPayer { trade_type: TradeType::Jsapi, openid: Some("oPayer".into()), client_ip: "127.0.0.1".into() }
}

/// A mixed payment of these parts, by `user`; a balance part is verified against `hash`.
fn mixed_payment<'a>(
    user: i64,
    order_no: &'a str,
    parts: &'a [MixedPart],
    hash: Option<String>,
    wechat: Option<&'a WechatPayer>,
) -> MixedPayment<'a> {
    let total = parts.iter().fold(Money::ZERO, |sum, p| sum.checked_add(p.amount).unwrap());
    MixedPayment {
        request_id: uuid::Uuid::new_v4(),
        user_id: user,
        order_no,
        total,
        parts,
        password_required: parts.iter().any(|p| p.method == PayMethod::Balance),
        verified_hash: hash,
        daily_limit: None,
        wechat: wechat.map(|payer| (payer, V3)),
    }
}

async fn hash_of(db: &PgPool, user: i64) -> Option<String> {
    sqlx::query_scalar("SELECT pay_password_hash FROM users WHERE id = $1").bind(user).fetch_one(db).await.unwrap()
}

async fn order_row(db: &PgPool, order_no: &str) -> (String, Option<String>, Option<String>) {
    sqlx::query_as("SELECT status, pay_type, coalesce(pay_no, paying_pay_no) FROM orders WHERE order_no = $1")
        .bind(order_no)
        .fetch_one(db)
        .await
        .unwrap()
}

/// (method, status) of every payment of an order, in the order they were written.
async fn parts_of(db: &PgPool, order_no: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT method, status FROM payments WHERE order_no = $1 ORDER BY id")
        .bind(order_no)
        .fetch_all(db)
        .await
        .unwrap()
}

async fn ledger_reasons(db: &PgPool, order_no: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT asset, reason FROM asset_ledger WHERE order_no = $1 ORDER BY id")
        .bind(order_no)
        .fetch_all(db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_internal_combination_pays_at_once_with_its_records() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, _) = env.user("100.00", "1000", "100.00").await;
    let hash = hash_of(db, user).await;
    let goods = env.goods("10.00").await;
    let combinations: [&[PayMethod]; 4] = [
        &[PayMethod::Balance, PayMethod::Integral],
        &[PayMethod::Balance, PayMethod::Money2],
        &[PayMethod::Integral, PayMethod::Money2],
        &[PayMethod::Balance, PayMethod::Integral, PayMethod::Money2],
    ];
    let mut expected = env.balances(user).await;
    for methods in combinations {
        let order = env.orders(user, goods, 1).await.remove(0);
        // 10.00 split: the last part takes what the others leave.
        let share = if methods.len() == 2 { ["4.00", "6.00", ""] } else { ["2.50", "3.00", "4.50"] };
        let parts: Vec<MixedPart> = methods.iter().zip(share).map(|(method, yuan)| part(*method, yuan)).collect();
        let applied = mixed::pay(db, &mixed_payment(user, &order, &parts, hash.clone(), None)).await.unwrap();
        let MixedApplied::Made(receipt) = applied else { panic!("{methods:?}: {applied:?}") };
        assert_eq!(receipt.status, PaymentStatus::Success, "{methods:?}");
        assert!(receipt.mixed_no.starts_with("MIX"));
        for p in &parts {
            match p.method {
                PayMethod::Balance => expected.money = expected.money.checked_sub(p.asset_amount).unwrap(),
                PayMethod::Integral => expected.integral = expected.integral.checked_sub(p.asset_amount).unwrap(),
                PayMethod::Money2 => expected.money2 = expected.money2.checked_sub(p.asset_amount).unwrap(),
                PayMethod::Wechat => unreachable!(),
            }
        }
        assert_eq!(env.balances(user).await, expected, "{methods:?}: each part left its asset exactly");
        let remaining: Vec<Money> = receipt.parts.iter().filter_map(|p| p.remaining).collect();
        assert_eq!(remaining.len(), parts.len(), "every internal part says what is left");
        assert_eq!(order_row(db, &order).await, ("PAID".into(), Some("mixed".into()), Some(receipt.mixed_no.clone())));
        let statuses = parts_of(db, &order).await;
        assert!(statuses.iter().all(|(_, s)| s == "SUCCESS"), "{statuses:?}");
        let profit: i64 = sqlx::query_scalar("SELECT count(*) FROM profit_pay WHERE order_no = $1")
            .bind(&order)
            .fetch_one(db)
            .await
            .unwrap();
        assert_eq!(profit as usize, parts.len(), "one profit_pay row per part");
        let event: serde_json::Value =
            sqlx::query_scalar("SELECT payload FROM outbox WHERE kind = 'order_paid' AND payload->>'order_no' = $1")
                .bind(&order)
                .fetch_one(db)
                .await
                .unwrap();
        assert_eq!((event["pay_type"].as_str(), event["amount"].as_str()), (Some("mixed"), Some("10.00")));
        assert_eq!(event["pay_no"].as_str(), Some(receipt.mixed_no.as_str()));
    }
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_that_does_not_fit_takes_nothing_from_the_others() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, _) = env.user("3.00", "1000", "0").await;
    let hash = hash_of(db, user).await;
    let order = env.orders(user, env.goods("10.00").await, 1).await.remove(0);
    let before = env.balances(user).await;

    let parts = [part(PayMethod::Integral, "5.00"), part(PayMethod::Balance, "5.00")];
    match mixed::pay(db, &mixed_payment(user, &order, &parts, hash.clone(), None)).await.unwrap() {
        MixedApplied::Refused(refusal) => assert_eq!(refusal.code, Code::NotEnough, "{refusal:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(env.balances(user).await, before, "the integral part was not taken either");
    assert!(parts_of(db, &order).await.is_empty());
    // Another amount than the order's, and a balance part whose password was not verified.
    let short = [part(PayMethod::Integral, "5.00"), part(PayMethod::Balance, "1.00")];
    match mixed::pay(db, &mixed_payment(user, &order, &short, hash, None)).await.unwrap() {
        MixedApplied::Refused(refusal) => assert_eq!(refusal.code, Code::AmountMismatch, "{refusal:?}"),
        other => panic!("{other:?}"),
    }
    let fits = [part(PayMethod::Integral, "8.00"), part(PayMethod::Balance, "2.00")];
    assert_eq!(mixed::pay(db, &mixed_payment(user, &order, &fits, None, None)).await.unwrap(), MixedApplied::Stale);
    assert_eq!(env.balances(user).await, before);
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_mixed_request_is_answered_from_its_first_delivery() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, _) = env.user("0", "1000", "10.00").await;
    let order = env.orders(user, env.goods("10.00").await, 1).await.remove(0);
    let parts = [part(PayMethod::Integral, "5.00"), part(PayMethod::Money2, "5.00")];
    let payment = mixed_payment(user, &order, &parts, None, None);
    let first = mixed::pay(db, &payment).await.unwrap();
    let again = mixed::pay(db, &payment).await.unwrap();
    let (MixedApplied::Made(a), MixedApplied::Made(b)) = (&first, &again) else { panic!("{first:?} {again:?}") };
    assert_eq!((&a.mixed_no, &a.parts), (&b.mixed_no, &b.parts), "the same payment, with what was left then");
    assert_eq!(env.balances(user).await, Balances { money: m("0"), integral: m("950"), money2: m("5.00") });
    env.audit_is_clean().await;
}

/// A 10.00 order held by a mixed payment: balance 3.00 and integral 2.00 (20 points) held,
/// WeChat 5.00 waiting. Answers (user, order, WeChat part's pay_no).
async fn a_held_order(env: &TestEnv) -> (i64, String, String) {
    let db = &env.admin.db;
    let (user, _) = env.user("10.00", "100", "0").await;
    let order = env.orders(user, env.goods("10.00").await, 1).await.remove(0);
    let parts = [part(PayMethod::Balance, "3.00"), part(PayMethod::Integral, "2.00"), part(PayMethod::Wechat, "5.00")];
    let payer = payer();
    let applied =
        mixed::pay(db, &mixed_payment(user, &order, &parts, hash_of(db, user).await, Some(&payer))).await.unwrap();
    let MixedApplied::Made(receipt) = applied else { panic!("{applied:?}") };
    assert_eq!(receipt.status, PaymentStatus::Paying);
    assert_eq!(env.balances(user).await, Balances { money: m("7.00"), integral: m("80"), money2: m("0") }, "held");
    let wechat_part = receipt.wechat().unwrap().pay_no.clone();
    assert_eq!(order_row(db, &order).await, ("PAYING".into(), Some("mixed".into()), Some(wechat_part.clone())));
    (user, order, wechat_part)
}

/// What the user of `a_held_order` had before the holds.
fn opening() -> Balances {
    Balances { money: m("10.00"), integral: m("100"), money2: m("0") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wechat_part_settling_makes_the_holds_final() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, order, pay_no) = a_held_order(&env).await;
    let settled = wechat::settle(db, &report(&pay_no, TradeState::Success, 500, APPID), APPID, MCHID).await.unwrap();
    assert_eq!(settled, Settlement::Settled);
    let (status, pay_type, mixed_no) = order_row(db, &order).await;
    assert_eq!((status.as_str(), pay_type.as_deref()), ("PAID", Some("mixed")));
    assert!(mixed_no.unwrap().starts_with("MIX"));
    assert!(parts_of(db, &order).await.iter().all(|(_, s)| s == "SUCCESS"));
    assert_eq!(env.balances(user).await, Balances { money: m("7.00"), integral: m("80"), money2: m("0") });
    let profit: Vec<rust_decimal::Decimal> =
        sqlx::query_scalar("SELECT change_money FROM profit_pay WHERE order_no = $1 ORDER BY change_money")
            .bind(&order)
            .fetch_all(db)
            .await
            .unwrap();
    assert_eq!(profit, ["-5.00", "-3.00", "-2.00"].map(|s| s.parse().unwrap()));
    // A second report of the same trade changes nothing.
    let again = wechat::settle(db, &report(&pay_no, TradeState::Success, 500, APPID), APPID, MCHID).await.unwrap();
    assert_eq!(again, Settlement::Duplicate);
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wechat_trade_closed_before_expiry_reopens_the_order_and_returns_the_holds() {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, order, pay_no) = a_held_order(&env).await;
    let closed = wechat::settle(db, &report(&pay_no, TradeState::Closed, 500, APPID), APPID, MCHID).await.unwrap();
    assert_eq!(closed, Settlement::RecordedFailure);
    assert_eq!(order_row(db, &order).await.0, "UNPAID");
    assert_eq!(env.balances(user).await, opening());
    // Payable again with the methods the holds used: a returned hold is no payment.
    let parts = [part(PayMethod::Balance, "5.00"), part(PayMethod::Integral, "5.00")];
    let applied = mixed::pay(db, &mixed_payment(user, &order, &parts, hash_of(db, user).await, None)).await.unwrap();
    assert!(matches!(applied, MixedApplied::Made(ref r) if r.status == PaymentStatus::Success), "{applied:?}");
    env.audit_is_clean().await;
}

/// Who reaches the held order first.
#[derive(Clone, Copy, Debug)]
enum First {
    Expiry,
    Cancel,
    LateNotify,
}

/// The expiry check, the owner's cancel and WeChat's late SUCCESS notify all wait on the
/// order's lock, which the test holds, and get it in the order they asked: whoever comes first
/// decides, and the holds are returned (or made final) exactly once.
async fn race(first: First) {
    let env = TestEnv::new().await;
    let db = &env.admin.db;
    let (user, order, pay_no) = a_held_order(&env).await;
    // Its pay time ran out; the three racers on a pool of their own, beside the test's (which
    // holds the lock and watches them wait).
    let (racers, holder) = env.hold_expired_order(&order).await;
    let expire = {
        let (db, order, pay_no) = (racers.clone(), order.clone(), pay_no.clone());
        move || tokio::spawn(async move { Outcome::Expiry(wechat::expire(&db, &order, Some(&pay_no)).await.unwrap()) })
    };
    let cancel = {
        let (db, order, pay_no) = (racers.clone(), order.clone(), pay_no.clone());
        move || {
            tokio::spawn(
                async move { Outcome::Cancel(wechat::cancel(&db, &order, user, Some(&pay_no)).await.unwrap()) },
            )
        }
    };
    let notify = {
        let (db, pay_no) = (racers.clone(), pay_no.clone());
        move || {
            tokio::spawn(async move {
                let r = report(&pay_no, TradeState::Success, 500, APPID);
                Outcome::Notify(wechat::settle(&db, &r, APPID, MCHID).await.unwrap())
            })
        }
    };
    let mut starters: Vec<Box<dyn FnOnce() -> tokio::task::JoinHandle<Outcome> + Send>> = match first {
        First::Expiry => vec![Box::new(expire), Box::new(cancel), Box::new(notify)],
        First::Cancel => vec![Box::new(cancel), Box::new(notify), Box::new(expire)],
        First::LateNotify => vec![Box::new(notify), Box::new(expire), Box::new(cancel)],
    };
    let mut tasks = Vec::new();
    for (n, start) in starters.drain(..).enumerate() {
        tasks.push(start());
        // Each waits on the order's lock before the next asks: PostgreSQL grants it in that order.
        until_waiting_on_locks(db, n as i64 + 1).await;
    }
    holder.commit().await.unwrap();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    racers.close().await;

    let returns: i64 =
        sqlx::query_scalar("SELECT count(*) FROM asset_ledger WHERE order_no = $1 AND reason = 'return'")
            .bind(&order)
            .fetch_one(db)
            .await
            .unwrap();
    let alerts = wechat::alerts(db, &order).await.unwrap();
    match first {
        First::Expiry | First::Cancel => {
            assert_eq!(order_row(db, &order).await.0, "CLOSED", "{outcomes:?}");
            assert_eq!(env.balances(user).await, opening(), "every hold back, once: {outcomes:?}");
            assert_eq!(returns, 2, "one return row per held part");
            let rows = ledger_reasons(db, &order).await;
            let expected = [("money", "hold"), ("integral", "hold"), ("money", "return"), ("integral", "return")];
            assert_eq!(rows, expected.map(|(a, r)| (a.to_owned(), r.to_owned())));
            // The late notify is money WeChat took: recorded, alerted, refunded in full by
            // itself, and the order stays closed.
            assert!(alerts.iter().any(|(kind, _)| kind == "paid_after_close"), "{alerts:?}");
            let wechat: (String, Money) = sqlx::query_as("SELECT status, refunded FROM payments WHERE pay_no = $1")
                .bind(&pay_no)
                .fetch_one(db)
                .await
                .unwrap();
            assert_eq!(wechat, ("REFUNDED".to_owned(), m("5.00")));
            let refunds = payfleet::store::refunds::list(db, &order).await.unwrap();
            assert_eq!(refunds.len(), 1, "{refunds:?}");
            assert_eq!(
                (refunds[0].refund_no.clone(), refunds[0].parts[0].pay_no.clone()),
                (format!("AUTO-{pay_no}"), pay_no.clone())
            );
        }
        First::LateNotify => {
            assert_eq!(order_row(db, &order).await.0, "PAID", "{outcomes:?}");
            assert_eq!(env.balances(user).await, Balances { money: m("7.00"), integral: m("80"), money2: m("0") });
            assert_eq!(returns, 0);
            assert!(outcomes.iter().any(|o| matches!(o, Outcome::Expiry(Expiry::Unchanged))), "{outcomes:?}");
            assert!(
                outcomes
                    .iter()
                    .any(|o| matches!(o, Outcome::Cancel(Cancelled::Refused(r)) if r.code == Code::OrderPaid)),
                "{outcomes:?}"
            );
        }
    }
    env.audit_is_clean().await;
}

#[derive(Debug)]
#[allow(dead_code)]
enum Outcome {
    Expiry(Expiry),
    Cancel(Cancelled),
    Notify(Settlement),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_first_returns_the_holds_once_and_the_late_notify_leaves_the_order_closed() {
    race(First::Expiry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_first_returns_the_holds_once_and_the_late_notify_leaves_the_order_closed() {
    race(First::Cancel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notify_first_makes_the_holds_final_and_expiry_and_cancel_change_nothing() {
    race(First::LateNotify).await;
}

/// The tables the mixed transaction writes, in the order it writes them; a trigger that raises
/// on one of them is a failure injected at that step.
const STEPS: [&str; 7] =
    ["mixed_payments", "users", "payments", "asset_ledger", "balance_daily", "profit_pay", "outbox"];

proptest! {
    #![proptest_config(Config { cases: 24, ..Config::default() })]

    /// Seed 001 property 3 for mixed payments: whatever the split, and whichever step fails,
    /// every asset ends exactly as before or exactly as paid, never between.
    #[test]
    fn a_failure_at_any_step_leaves_every_asset_as_before_or_as_paid(
        balance_fen in 1i64..=2000,
        integral_fen in 1i64..=2000,
        money2_fen in 0i64..=2000,
        step in proptest::option::of(0usize..STEPS.len()),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let env = TestEnv::new().await;
            let db = &env.admin.db;
            let (user, _) = env.user("30.00", "300", "30.00").await;
            let hash = hash_of(db, user).await;
            let total = balance_fen + integral_fen + money2_fen;
            let goods = env.goods(&Money::from_fen(total).unwrap().to_string()).await;
            let order = env.orders(user, goods, 1).await.remove(0);
            let fen = |f: i64| Money::from_fen(f).unwrap();
            let mut parts = vec![
                MixedPart { method: PayMethod::Balance, amount: fen(balance_fen), asset_amount: fen(balance_fen) },
                MixedPart { method: PayMethod::Integral, amount: fen(integral_fen), asset_amount: fen(integral_fen * 10) },
            ];
            if money2_fen > 0 {
                parts.push(MixedPart { method: PayMethod::Money2, amount: fen(money2_fen), asset_amount: fen(money2_fen) });
            }
            let before = env.balances(user).await;
            if let Some(step) = step {
                sqlx::query("CREATE FUNCTION injected_failure() RETURNS trigger LANGUAGE plpgsql AS $$
                             BEGIN RAISE EXCEPTION 'injected failure'; END $$").execute(db).await.unwrap();
                sqlx::query(&format!("CREATE TRIGGER injected BEFORE INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION injected_failure()", STEPS[step]))
                    .execute(db).await.unwrap();
            }
            let applied = mixed::pay(db, &mixed_payment(user, &order, &parts, hash, None)).await;
            let after = env.balances(user).await;
            let paid = Balances {
                money: before.money.checked_sub(fen(balance_fen)).unwrap(),
                integral: before.integral.checked_sub(fen(integral_fen * 10)).unwrap(),
                money2: before.money2.checked_sub(fen(money2_fen)).unwrap(),
            };
            match (step, applied) {
                (None, Ok(MixedApplied::Made(receipt))) => {
                    assert_eq!(receipt.status, PaymentStatus::Success);
                    assert_eq!(after, paid);
                }
                (Some(_), Err(_)) => {
                    assert_eq!(after, before, "a failure at {:?} took something", step.map(|s| STEPS[s]));
                    assert!(parts_of(db, &order).await.is_empty());
                    assert_eq!(order_row(db, &order).await.0, "UNPAID");
                    sqlx::query(&format!("DROP TRIGGER injected ON {}", STEPS[step.unwrap()])).execute(db).await.unwrap();
                }
                (step, other) => panic!("step {step:?}: {other:?}"),
            }
            env.audit_is_clean().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_payments_over_http_pay_refuse_and_show_their_parts() {
    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (user, token) = env.user("50.00", "1000", "0").await;
    let goods = env.goods("30.00").await;
    let order = app.api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();
    let body = |methods: serde_json::Value, password: &str| json!({ "order_no": order, "total_amount": "30.00", "payment_methods": methods, "pay_password": password });
    let post = |b: serde_json::Value| {
        let api = app.api.clone();
        let token = token.clone();
        async move { api.post("/api/v1/payment/mixed/pay", Some(&token), &b).await.unwrap() }
    };

    // What does not add up is named.
    let r = post(body(
        json!([{ "type": "balance", "amount": "10.00" }, { "type": "integral", "amount": "100", "money_equivalent": "10.00" }]),
        "123456",
    ))
    .await;
    assert_eq!((r.status, r.code()), (422, "VALIDATION"), "{:?}", r.body);
    assert!(r.body["msg"].as_str().unwrap().contains("add up to 20.00, not total_amount 30.00"), "{:?}", r.body);
    let r = post(body(
        json!([{ "type": "balance", "amount": "15.00" }, { "type": "balance", "amount": "15.00" }]),
        "123456",
    ))
    .await;
    assert_eq!(r.code(), "VALIDATION", "a method twice: {:?}", r.body);
    let r = post(body(
        json!([{ "type": "balance", "amount": "20.00" }, { "type": "integral", "amount": "100" }]),
        "123456",
    ))
    .await;
    assert_eq!(r.code(), "VALIDATION", "integral without money_equivalent: {:?}", r.body);
    // A wrong pay password takes nothing from any part.
    let split = json!([
        { "type": "balance", "amount": "20.00" },
        { "type": "integral", "amount": "100.00", "money_equivalent": "10.00" },
    ]);
    let r = post(body(split.clone(), "654321")).await;
    assert_eq!(r.code(), "PASSWORD_WRONG", "{:?}", r.body);
    assert_eq!(env.balances(user).await, Balances { money: m("50.00"), integral: m("1000"), money2: m("0") });

    let r = post(body(split, "123456")).await;
    assert_eq!((r.status, r.code()), (200, "SUCCESS"), "{:?}", r.body);
    assert_eq!(
        (r.field("balance_paid"), r.field("integral_paid"), r.field("pay_status")),
        ("20.00", "100.00", "SUCCESS")
    );
    assert_eq!((r.field("remaining_balance"), r.field("remaining_integral")), ("30.00", "900.00"));
    let mixed_no = r.field("pay_no").to_owned();
    assert!(mixed_no.starts_with("MIX"));

    let status = app.api.status(&token, &order).await.unwrap();
    assert_eq!((status.field("pay_status"), status.field("pay_type")), ("SUCCESS", "MIXED"));
    assert_eq!(status.field("pay_no"), mixed_no);
    let details = status.data()["payment_details"].as_array().unwrap().clone();
    let shown: Vec<(&str, &str, &str)> = details
        .iter()
        .map(|d| (d["method"].as_str().unwrap(), d["amount"].as_str().unwrap(), d["status"].as_str().unwrap()))
        .collect();
    assert_eq!(shown, [("balance", "20.00", "SUCCESS"), ("integral", "10.00", "SUCCESS")]);
    assert_eq!(details[1]["points"], "100.00");

    // Paid: no second payment, and no cancel.
    let r = app.api.post(&format!("/api/v1/payment/{order}/cancel"), Some(&token), &json!({})).await.unwrap();
    assert_eq!(r.code(), "ORDERPAID", "{:?}", r.body);
    env.audit_is_clean().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_cancels_an_unpaid_order_and_only_the_owner() {
    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (_, token) = env.user("50.00", "0", "0").await;
    let (_, intruder) = env.user("50.00", "0", "0").await;
    let goods = env.goods("10.00").await;
    let order = app.api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();
    let cancel = |t: &str| {
        let (api, t, path) = (app.api.clone(), t.to_owned(), format!("/api/v1/payment/{order}/cancel"));
        async move { api.post(&path, Some(&t), &json!({})).await.unwrap() }
    };
    assert_eq!(cancel(&intruder).await.code(), "NOT_FOUND");
    let r = cancel(&token).await;
    assert_eq!((r.status, r.field("status")), (200, "CLOSED"), "{:?}", r.body);
    assert_eq!(cancel(&token).await.status, 200, "cancelling twice is the same cancel");
    let r = app.api.pay_balance(&token, &order, "10.00", "123456").await.unwrap();
    assert_eq!(r.code(), "ORDERCLOSED", "{:?}", r.body);
    assert_eq!(app.api.status(&token, &order).await.unwrap().field("pay_status"), "CLOSED");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_mixed_request_is_answered_from_what_it_made_whatever_this_worker_allows() {
    use payfleet::mq::messages::{MixedPayRequested, PayReplied, PayRequested};

    let env = TestEnv::new().await;
    let mut app = env.start_in_process().await;
    let (user, token) = env.user("0", "100", "10.00").await;
    let order = env.orders(user, env.goods("10.00").await, 1).await.remove(0);
    let body = json!({
        "order_no": order, "total_amount": "10.00",
        "payment_methods": [{ "type": "integral", "amount": "50", "money_equivalent": "5.00" }, { "type": "money2", "amount": "5.00" }],
    });
    let paid = app.api.post("/api/v1/payment/mixed/pay", Some(&token), &body).await.unwrap();
    assert_eq!((paid.status, paid.field("pay_status")), (200, "SUCCESS"), "{:?}", paid.body);

    // A worker configured otherwise (integral switched off, as in a rolling change) gets the
    // same request again.
    app.stop_worker().await;
    app.start_worker(env.settings_with(&[("PAYFLEET__PAY__INTEGRAL__ENABLED", "false".into())]));
    let request = PayRequested::Mixed(MixedPayRequested {
        request_id: paid.request_id.parse().unwrap(),
        user_id: user,
        order_no: order.clone(),
        total: m("10.00"),
        parts: vec![part(PayMethod::Integral, "5.00"), part(PayMethod::Money2, "5.00")],
        sealed_password: None,
        wechat: None,
        requested_at: time::OffsetDateTime::now_utc(),
    });
    match env.redeliver(&request).await {
        PayReplied::Mixed(receipt) => assert_eq!(receipt.mixed_no, paid.field("pay_no")),
        other => panic!("a paid request answered as refused: {other:?}"),
    }
    assert_eq!(env.balances(user).await, Balances { money: m("0"), integral: m("50"), money2: m("5.00") });
    app.stop().await;
}
