//! Seed 001's correctness properties, checked with generated inputs through the HTTP API, the
//! broker and the pay-worker against the real database:
//! - property 4: balance after a payment = balance before − amount, exactly;
//! - property 5: every successful payment has its profit_pay row (order_no, amount, pay type);
//! - concurrent payments of one order deduct once;
//! - concurrent payments of different orders by one user never overdraw.

use crate::common;

use std::collections::HashMap;

use common::{InProcess, TestEnv};
use payfleet::domain::Money;
use proptest::prelude::*;
use proptest::test_runner::Config;
use rust_decimal::Decimal;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn yuan(fen: i64) -> String {
    Money::from_fen(fen).unwrap().to_string()
}

#[derive(Clone, Copy, Debug)]
enum Method {
    Balance,
    Integral,
    Money2,
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![Just(Method::Balance), Just(Method::Integral), Just(Method::Money2)]
}

/// Pays an order and answers (HTTP status, code, remaining, pay_no).
async fn pay(app: &InProcess, token: &str, order: &str, method: Method, fen: i64) -> (u16, String, String, String) {
    let r = match method {
        Method::Balance => app.api.pay_balance(token, order, &yuan(fen), "123456").await,
        Method::Integral => app.api.pay_integral(token, order, &yuan(fen * 10), &yuan(fen)).await,
        Method::Money2 => app.api.pay_money2(token, order, &yuan(fen)).await,
    }
    .unwrap();
    let remaining = ["remaining_balance", "remaining_integral", "remaining_money2"]
        .iter()
        .map(|k| r.field(k))
        .find(|v| !v.is_empty())
        .unwrap_or("")
        .to_owned();
    (r.status, r.code().to_owned(), remaining, r.field("pay_no").to_owned())
}

#[test]
fn balance_after_is_balance_before_minus_amount_and_every_payment_is_recorded() {
    let rt = runtime();
    let (env, app) = rt.block_on(async {
        let env = TestEnv::new().await;
        let app = env.start_in_process().await;
        (env, app)
    });
    let strategy = (0i64..30_000, proptest::collection::vec((100i64..=10_000, method()), 1..6));
    proptest!(Config::with_cases(24), |((opening, payments) in strategy)| {
        rt.block_on(async {
            // Integral is held in points, ten per yuan.
            let (user, token) = env.user(&yuan(opening), &yuan(opening * 10), &yuan(opening)).await;
            let mut left = HashMap::from([("balance", opening), ("integral", opening * 10), ("money2", opening)]);
            let mut paid: Vec<(String, String, i64, i16)> = Vec::new();
            for (fen, method) in payments {
                // Integral is spent in whole points: at ten per yuan, prices in whole jiao.
                let fen = if matches!(method, Method::Integral) { fen - fen % 10 } else { fen };
                let goods = env.goods(&yuan(fen)).await;
                let order = env.orders(user, goods, 1).await.remove(0);
                let (key, cost, pay_type) = match method {
                    Method::Balance => ("balance", fen, 2),
                    Method::Integral => ("integral", fen * 10, 3),
                    Method::Money2 => ("money2", fen, 4),
                };
                let (status, code, remaining, pay_no) = pay(&app, &token, &order, method, fen).await;
                let before = left[key];
                if cost <= before {
                    assert_eq!((status, code.as_str()), (200, "SUCCESS"), "{method:?} {fen} with {before} left");
                    left.insert(key, before - cost);
                    assert_eq!(remaining, yuan(before - cost), "balance after = balance before − amount");
                    paid.push((pay_no, order, fen, pay_type));
                } else {
                    assert_eq!((status, code.as_str()), (409, "NOTENOUGH"), "{method:?} {fen} with {before} left");
                }
            }
            let now = env.balances(user).await;
            assert_eq!(now.money, Money::from_fen(left["balance"]).unwrap());
            assert_eq!(now.integral, Money::from_fen(left["integral"]).unwrap());
            assert_eq!(now.money2, Money::from_fen(left["money2"]).unwrap());
            for (pay_no, order, fen, pay_type) in paid {
                let row: (String, Decimal, i16) =
                    sqlx::query_as("SELECT order_no, change_money, pay_type FROM profit_pay WHERE pay_no = $1")
                        .bind(&pay_no)
                        .fetch_one(&env.admin.db)
                        .await
                        .expect("every successful payment has its profit_pay row");
                assert_eq!(row, (order, -Money::from_fen(fen).unwrap().as_decimal(), pay_type));
            }
            env.audit_is_clean().await;
        });
    });
    rt.block_on(app.stop());
}

#[test]
fn concurrent_payments_of_one_order_deduct_once() {
    let rt = runtime();
    let (env, app) = rt.block_on(async {
        let env = TestEnv::new().await;
        let app = env.start_in_process().await;
        (env, app)
    });
    proptest!(Config::with_cases(8), |(n in 2usize..16, methods in proptest::collection::vec(method(), 16))| {
        rt.block_on(async {
            let (user, token) = env.user("100.00", "1000", "100.00").await;
            let goods = env.goods("10.00").await;
            let order = env.orders(user, goods, 1).await.remove(0);
            let attempts = methods.iter().take(n).map(|m| pay(&app, &token, &order, *m, 1000));
            let answers = futures_util::future::join_all(attempts).await;
            let successes = answers.iter().filter(|a| a.0 == 200).count();
            let refused = answers.iter().filter(|a| a.0 == 409 && a.1 == "ORDERPAID").count();
            assert_eq!((successes, refused), (1, n - 1), "{answers:?}");
            let b = env.balances(user).await;
            let spent = [b.money != common::m("100.00"), b.integral != common::m("1000"), b.money2 != common::m("100.00")];
            assert_eq!(spent.iter().filter(|s| **s).count(), 1, "exactly one asset was charged: {b:?}");
            let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE order_no = $1")
                .bind(&order)
                .fetch_one(&env.admin.db)
                .await
                .unwrap();
            assert_eq!(payments, 1);
        });
    });
    rt.block_on(async {
        env.audit_is_clean().await;
        app.stop().await;
    });
}

#[test]
fn concurrent_payments_by_one_user_never_overdraw() {
    let rt = runtime();
    let (env, app) = rt.block_on(async {
        let env = TestEnv::new().await;
        let app = env.start_in_process().await;
        (env, app)
    });
    proptest!(Config::with_cases(8), |(orders in 2usize..24, price in 100i64..2_000, opening in 0i64..20_000)| {
        rt.block_on(async {
            let (user, token) = env.user(&yuan(opening), "0", "0").await;
            let goods = env.goods(&yuan(price)).await;
            let order_nos = env.orders(user, goods, orders as i64).await;
            let attempts = order_nos.iter().map(|o| pay(&app, &token, o, Method::Balance, price));
            let answers = futures_util::future::join_all(attempts).await;
            let fits = ((opening / price) as usize).min(orders);
            let successes = answers.iter().filter(|a| a.0 == 200).count();
            let refused = answers.iter().filter(|a| a.0 == 409 && a.1 == "NOTENOUGH").count();
            assert_eq!((successes, refused), (fits, orders - fits), "{answers:?}");
            assert_eq!(env.balances(user).await.money, Money::from_fen(opening - fits as i64 * price).unwrap());
        });
    });
    rt.block_on(async {
        env.audit_is_clean().await;
        app.stop().await;
    });
}
