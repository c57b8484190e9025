//! Paying through the HTTP API with the ingress and pay-worker running in-process against the
//! real PostgreSQL, RabbitMQ and Redis.

use crate::common;

use std::time::Duration;

use common::{TestEnv, eventually, m};
use payfleet::ctl::client::ApiClient;
use payfleet::store::users::Balances;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_asset_pays_and_leaves_its_records() {
    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (user, token) = env.user("100.00", "1000", "20.00").await;
    let goods = env.goods("10.00").await;

    let order = app.api.create_order(&token, goods, 2).await.unwrap();
    assert_eq!((order.status, order.code()), (200, "SUCCESS"), "{:?}", order.body);
    assert_eq!(order.field("amount"), "20.00", "price × num, computed by the server");
    let balance_order = order.field("order_no").to_owned();
    let r = app.api.pay_balance(&token, &balance_order, "20.00", "123456").await.unwrap();
    assert_eq!((r.status, r.code()), (200, "SUCCESS"), "{:?}", r.body);
    let balance_request = r.request_id.clone();
    assert_eq!(r.field("remaining_balance"), "80.00");
    assert!(r.field("pay_no").starts_with("BAL"));
    assert!(r.field("pay_time").ends_with('Z'));

    let integral_order = app.api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();
    let r = app.api.pay_integral(&token, &integral_order, "100.00", "10.00").await.unwrap();
    assert_eq!((r.status, r.code()), (200, "SUCCESS"), "{:?}", r.body);
    assert_eq!(r.field("remaining_integral"), "900.00");

    let money2_order = app.api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();
    let r = app.api.pay_money2(&token, &money2_order, "10.00").await.unwrap();
    assert_eq!((r.status, r.code()), (200, "SUCCESS"), "{:?}", r.body);
    assert_eq!(r.field("remaining_money2"), "10.00");

    assert_eq!(env.balances(user).await, Balances { money: m("80.00"), integral: m("900.00"), money2: m("10.00") });
    let profit: Vec<(String, rust_decimal::Decimal, i16, String)> =
        sqlx::query_as("SELECT order_no, change_money, pay_type, content FROM profit_pay ORDER BY id")
            .fetch_all(&env.admin.db)
            .await
            .unwrap();
    assert_eq!(
        profit,
        vec![
            (balance_order.clone(), "-20.00".parse().unwrap(), 2, "余额支付".to_owned()),
            (integral_order.clone(), "-10.00".parse().unwrap(), 3, "积分支付".to_owned()),
            (money2_order.clone(), "-10.00".parse().unwrap(), 4, "哈尼券支付".to_owned()),
        ]
    );
    env.audit_is_clean().await;

    let status = app.api.status(&token, &integral_order).await.unwrap();
    assert_eq!(status.field("pay_status"), "SUCCESS");
    assert_eq!(status.field("pay_type"), "INTEGRAL");
    let pay_no = status.field("pay_no");
    assert_eq!(
        status.data()["payment_details"],
        json!([{ "method": "integral", "amount": "10.00", "points": "100.00", "status": "SUCCESS", "pay_no": pay_no }])
    );

    // The outbox relay publishes one order-paid event per payment to order.followup.
    let followup = env.settings.broker.namespace.clone() + "order.followup";
    eventually(Duration::from_secs(10), "three events on order.followup", || async {
        env.queue_depth(&followup).await == 3
    })
    .await;
    // Each carries the HTTP request's id as correlation id: one id from the request to the
    // follow-up.
    let conn = payfleet::mq::connect(&env.settings.broker, "test-reader").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut events = std::collections::HashMap::new();
    while let Some(m) = channel.basic_get(followup.as_str().into(), Default::default()).await.unwrap() {
        let event: payfleet::mq::messages::OrderPaid = serde_json::from_slice(&m.delivery.data).unwrap();
        let correlation = m.delivery.properties.correlation_id().as_ref().map(|c| c.to_string()).unwrap_or_default();
        events.insert(event.order_no.clone(), (event, correlation));
    }
    let (event, correlation) = &events[&balance_order];
    assert_eq!(correlation, &balance_request);
    assert_eq!((event.amount, event.num, event.user_id), (m("20.00"), 2, user));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let env = TestEnv::with(&[("PAYFLEET__PAY__MAX_AMOUNT", "500.00")]).await;
    let app = env.start_in_process().await;
    let api = &app.api;
    let (user, token) = env.user("15.00", "1000", "5.00").await;
    let (_, other_token) = env.user("100.00", "0", "0").await;
    let goods = env.goods("10.00").await;
    let order = api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();
    let expect = |r: payfleet::ctl::client::ApiResponse, status: u16, code: &str| {
        assert_eq!((r.status, r.code()), (status, code), "{:?}", r.body);
        assert_eq!(r.body["status"], if code == "SUCCESS" { 1 } else { 0 }, "{:?}", r.body);
        assert!(!r.body["msg"].as_str().unwrap_or("").is_empty(), "a message a person can act on");
        r
    };

    expect(api.pay_balance(&token, "ORD404", "10.00", "123456").await.unwrap(), 404, "NOT_FOUND");
    expect(api.pay_balance(&other_token, &order, "10.00", "123456").await.unwrap(), 404, "NOT_FOUND");
    expect(api.status(&other_token, &order).await.unwrap(), 404, "NOT_FOUND");
    expect(api.pay_balance(&token, &order, "9.99", "123456").await.unwrap(), 422, "AMOUNT_MISMATCH");
    for bad in ["10.001", "-10.00", "0", "0.00", "ten", "1e1", "600.00"] {
        expect(api.pay_balance(&token, &order, bad, "123456").await.unwrap(), 422, "VALIDATION");
        expect(api.pay_money2(&token, &order, bad).await.unwrap(), 422, "VALIDATION");
    }
    expect(api.pay_balance(&token, &order, "10.00", "12345").await.unwrap(), 422, "VALIDATION");
    expect(api.pay_integral(&token, &order, "99.00", "10.00").await.unwrap(), 422, "VALIDATION");
    expect(api.pay_integral(&token, &order, "5.00", "0.50").await.unwrap(), 422, "VALIDATION");
    expect(api.pay_integral(&token, &order, "1010.00", "101.00").await.unwrap(), 422, "VALIDATION");
    expect(api.pay_integral(&token, &order, "10.50", "1.05").await.unwrap(), 422, "VALIDATION");
    expect(api.pay_money2(&token, &order, "10.00").await.unwrap(), 409, "NOTENOUGH");
    expect(api.pay_balance("", &order, "10.00", "123456").await.unwrap(), 401, "UNAUTHORIZED");
    let r = api.post("/api/v1/payment/balance/pay", None, &json!({"order_no": order})).await.unwrap();
    expect(r, 401, "UNAUTHORIZED");
    expect(
        api.post_raw("/api/v1/payment/balance/pay", Some(&token), "{\"order_no\":").await.unwrap(),
        400,
        "VALIDATION",
    );
    expect(
        api.post("/api/v1/payment/balance/pay", Some(&token), &json!({"order_no": order})).await.unwrap(),
        422,
        "VALIDATION",
    );
    let r = api
        .post("/api/v1/payment/money2/pay", Some(&token), &json!({"order_no": order, "amount": 10.0}))
        .await
        .unwrap();
    expect(r, 422, "VALIDATION");

    // Wrong passwords count down, then lock; the right one is refused while locked.
    for left in (1..=4).rev() {
        let r = expect(api.pay_balance(&token, &order, "10.00", "000000").await.unwrap(), 403, "PASSWORD_WRONG");
        assert_eq!(r.data()["tries_left"], left);
    }
    expect(api.pay_balance(&token, &order, "10.00", "000000").await.unwrap(), 429, "PASSWORD_LOCKED");
    expect(api.pay_balance(&token, &order, "10.00", "123456").await.unwrap(), 429, "PASSWORD_LOCKED");
    assert_eq!(env.balances(user).await, Balances { money: m("15.00"), integral: m("1000"), money2: m("5.00") });

    // A new pay password (proven by SMS) unlocks; then the order pays once.
    let code = env.admin.issue_sms_code(user).await.unwrap();
    expect(api.set_pay_password(&token, "246810", &code).await.unwrap(), 200, "SUCCESS");
    let paid = expect(api.pay_balance(&token, &order, "10.00", "246810").await.unwrap(), 200, "SUCCESS");
    let r = expect(api.pay_balance(&token, &order, "10.00", "246810").await.unwrap(), 409, "ORDERPAID");
    assert_eq!(r.field("pay_no"), paid.field("pay_no"), "ORDERPAID names the original payment");
    expect(api.pay_integral(&token, &order, "100.00", "10.00").await.unwrap(), 409, "ORDERPAID");

    // Closed and expired orders cannot be paid.
    let closed = api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();
    sqlx::query("UPDATE orders SET status = 'CLOSED' WHERE order_no = $1")
        .bind(&closed)
        .execute(&env.admin.db)
        .await
        .unwrap();
    expect(api.pay_integral(&token, &closed, "100.00", "10.00").await.unwrap(), 409, "ORDERCLOSED");
    let expired = api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();
    sqlx::query("UPDATE orders SET expires_at = now() - interval '1 second' WHERE order_no = $1")
        .bind(&expired)
        .execute(&env.admin.db)
        .await
        .unwrap();
    expect(api.pay_integral(&token, &expired, "100.00", "10.00").await.unwrap(), 409, "ORDERCLOSED");
    assert_eq!(api.status(&token, &expired).await.unwrap().field("pay_status"), "CLOSED");

    // Only the one payment moved money.
    assert_eq!(env.balances(user).await, Balances { money: m("5.00"), integral: m("1000"), money2: m("5.00") });
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&env.admin.db).await.unwrap();
    assert_eq!(payments, 1);
    env.audit_is_clean().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_password_needs_a_fresh_sms_code() {
    let env = TestEnv::with(&[("PAYFLEET__PAY__SMS_CODE_MAX_ATTEMPTS", "3")]).await;
    let app = env.start_in_process().await;
    let api = &app.api;
    let opening = Balances { money: m("50.00"), integral: m("0"), money2: m("0") };
    let (user, token) = env.admin.create_user("no-password", &opening, None).await.unwrap();
    let goods = env.goods("5.00").await;
    let order = api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();

    let r = api.pay_balance(&token, &order, "5.00", "123456").await.unwrap();
    assert_eq!((r.status, r.code()), (403, "PASSWORD_NOT_SET"), "{:?}", r.body);
    let r = api.set_pay_password(&token, "123456", "000000").await.unwrap();
    assert_eq!((r.status, r.code()), (422, "SMS_CODE_INVALID"), "no code was ever sent");

    let code = env.admin.issue_sms_code(user).await.unwrap();
    let wrong = if code == "111111" { "222222" } else { "111111" };
    let r = api
        .post(
            "/api/v1/user/payment-password",
            Some(&token),
            &json!({"password": "123456", "confirm_password": "123457", "sms_code": code}),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (422, "VALIDATION"), "{:?}", r.body);
    for _ in 0..2 {
        assert_eq!(api.set_pay_password(&token, "123456", wrong).await.unwrap().code(), "SMS_CODE_INVALID");
    }
    assert_eq!(api.set_pay_password(&token, "123456", &code).await.unwrap().code(), "SUCCESS");
    assert_eq!(api.set_pay_password(&token, "123456", &code).await.unwrap().code(), "SMS_CODE_INVALID", "single use");

    // Three wrong guesses burn a code.
    let code = env.admin.issue_sms_code(user).await.unwrap();
    let wrong = if code == "111111" { "222222" } else { "111111" };
    for _ in 0..3 {
        assert_eq!(api.set_pay_password(&token, "654321", wrong).await.unwrap().code(), "SMS_CODE_INVALID");
    }
    assert_eq!(api.set_pay_password(&token, "654321", &code).await.unwrap().code(), "SMS_CODE_INVALID", "burnt");

    let r = api.pay_balance(&token, &order, "5.00", "123456").await.unwrap();
    assert_eq!((r.status, r.field("remaining_balance")), (200, "45.00"), "{:?}", r.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_priced_by_the_server() {
    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (_, token) = env.user("0", "0", "0").await;
    let goods = env.goods("19.99").await;
    let r = app.api.create_order(&token, goods, 3).await.unwrap();
    assert_eq!((r.status, r.field("amount"), r.field("status")), (200, "59.97", "UNPAID"), "{:?}", r.body);
    assert!(r.field("order_no").starts_with("ORD"));
    let r = app.api.create_order(&token, goods, 0).await.unwrap();
    assert_eq!((r.status, r.code()), (422, "VALIDATION"));
    let r = app.api.create_order(&token, 999_999, 1).await.unwrap();
    assert_eq!((r.status, r.code()), (404, "NOT_FOUND"));
    let r = app
        .api
        .post("/api/v1/orders", Some(&token), &json!({"goods_id": goods, "num": 1, "amount": "0.01"}))
        .await
        .unwrap();
    assert_eq!(r.field("amount"), "19.99", "a client-sent amount is ignored");
    // A valid token of a user that no longer exists.
    let (gone, gone_token) = env.user("0", "0", "0").await;
    sqlx::query("DELETE FROM users WHERE id = $1").bind(gone).execute(&env.admin.db).await.unwrap();
    let r = app.api.create_order(&gone_token, goods, 1).await.unwrap();
    assert_eq!((r.status, r.code()), (401, "UNAUTHORIZED"), "{:?}", r.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_means_202_and_the_payment_still_completes() {
    let env = TestEnv::with(&[("PAYFLEET__INGRESS__REPLY_TIMEOUT_MS", "300")]).await;
    let mut app = env.start_in_process().await;
    let (user, token) = env.user("30.00", "0", "0").await;
    let goods = env.goods("10.00").await;
    let order = app.api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();

    app.stop_worker().await;
    let r = app.api.pay_balance(&token, &order, "10.00", "123456").await.unwrap();
    assert_eq!((r.status, r.code(), r.field("pay_status")), (202, "PROCESSING", "PROCESSING"), "{:?}", r.body);
    assert_eq!(r.field("status_url"), format!("/api/v1/payment/{order}/status"));
    assert_eq!(app.api.status(&token, &order).await.unwrap().field("pay_status"), "PENDING");

    // A refusal decided after the 202 shows up in the status.
    let second = app.api.create_order(&token, goods, 3).await.unwrap().field("order_no").to_owned();
    let r = app.api.pay_money2(&token, &second, "30.00").await.unwrap();
    assert_eq!(r.status, 202, "{:?}", r.body);

    app.start_worker(env.settings.clone());
    eventually(Duration::from_secs(15), "the queued payment settles", || async {
        app.api.status(&token, &order).await.unwrap().field("pay_status") == "SUCCESS"
    })
    .await;
    assert_eq!(env.balances(user).await.money, m("20.00"));
    eventually(Duration::from_secs(15), "the refusal is in the status", || async {
        let status = app.api.status(&token, &second).await.unwrap();
        status.field("pay_status") == "PENDING" && status.data()["last_refusal"]["code"] == "NOTENOUGH"
    })
    .await;
    env.audit_is_clean().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer() {
    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let r = app.api.get("/healthz", None).await.unwrap();
    assert_eq!(r.status, 200);
    let r = app.api.get("/readyz", None).await.unwrap();
    assert_eq!((r.status, &r.body), (200, &json!({"ready": true, "database": true, "broker": true, "redis": true})));
    let r = app.api.get("/api/v1/nothing-here", None).await.unwrap();
    assert_eq!((r.status, r.code()), (404, "NOT_FOUND"), "unknown routes answer in the envelope");
    let r = app.api.get("/api/v1/orders", None).await.unwrap();
    assert_eq!((r.status, r.code()), (405, "VALIDATION"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_can_never_succeed_is_answered_and_dead_lettered() {
    use payfleet::mq::messages::{AssetPayRequested, PayReplied, PayRequested};
    use payfleet::mq::rpc::{Called, Outgoing, RpcClient};
    use payfleet::mq::topology::{PAY_REQUESTS, Topology};

    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (user, _) = env.user("10.00", "0", "0").await;
    let goods = env.goods("1.00").await;
    let order = env.orders(user, goods, 1).await.remove(0);
    let stop = tokio_util::sync::CancellationToken::new();
    let rpc = RpcClient::start(env.settings.broker.clone(), stop.clone());
    eventually(Duration::from_secs(10), "rpc connected", || async { rpc.is_connected() }).await;
    // A pay password sealed under another pepper can never be opened.
    let request = PayRequested::Asset(AssetPayRequested {
        request_id: uuid::Uuid::new_v4(),
        user_id: user,
        order_no: order,
        method: payfleet::domain::PayMethod::Balance,
        amount: m("1.00"),
        asset_amount: m("1.00"),
        sealed_password: Some("c2VhbGVkIGVsc2V3aGVyZSBieSBzb21lb25lIGVsc2U=".into()),
        requested_at: time::OffsetDateTime::now_utc(),
    });
    let body = serde_json::to_vec(&request).unwrap();
    let out = Outgoing {
        queue: PAY_REQUESTS,
        message_id: "bad-seal",
        kind: "pay_requested",
        traceparent: "00-0-0-01",
        body: &body,
    };
    let Called::Replied(reply) = rpc.call(&out, Duration::from_secs(5)).await.unwrap() else { panic!("no answer") };
    match serde_json::from_slice::<PayReplied>(&reply).unwrap() {
        PayReplied::Refused(r) => assert_eq!(r.code, payfleet::domain::Code::SystemError, "{r:?}"),
        other => panic!("{other:?}"),
    }
    let dlq = Topology::new(&env.settings.broker).dlq(PAY_REQUESTS);
    eventually(Duration::from_secs(5), "the request is in the DLQ", || async { env.queue_depth(&dlq).await == 1 })
        .await;
    assert_eq!(env.balances(user).await.money, m("10.00"));
    stop.cancel();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_password_guesses_cannot_outrun_the_lock() {
    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (user, token) = env.user("100.00", "0", "0").await;
    let goods = env.goods("1.00").await;
    let order = env.orders(user, goods, 1).await.remove(0);
    let guesses = (0..30).map(|i| {
        let (api, token, order) = (&app.api, &token, &order);
        async move { api.pay_balance(token, order, "1.00", &format!("{:06}", 900_000 + i)).await.unwrap() }
    });
    let answers = futures_util::future::join_all(guesses).await;
    let wrong = answers.iter().filter(|r| r.code() == "PASSWORD_WRONG").count();
    let locked = answers.iter().filter(|r| r.code() == "PASSWORD_LOCKED").count();
    assert_eq!((wrong, locked), (4, 26), "five tries verified at most, whatever the concurrency");
    let r = app.api.pay_balance(&token, &order, "1.00", "123456").await.unwrap();
    assert_eq!((r.status, r.code()), (429, "PASSWORD_LOCKED"), "the right password waits out the lock too");
    assert_eq!(env.balances(user).await.money, m("100.00"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_applied_again_answers_its_own_receipt() {
    use payfleet::domain::PayMethod;
    use payfleet::store::payments::{Applied, AssetPayment, apply};

    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (user, token) = env.user("0", "500", "0").await;
    let goods = env.goods("2.00").await;
    let order = env.orders(user, goods, 1).await.remove(0);
    let r = app.api.pay_integral(&token, &order, "20.00", "2.00").await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The same request once more (a redelivery), and another request for the same order.
    let payment = |request_id| AssetPayment {
        request_id,
        user_id: user,
        order_no: order.clone(),
        method: PayMethod::Integral,
        amount: m("2.00"),
        asset_amount: m("20.00"),
        verified_hash: None,
        password_required: false,
        daily_limit: None,
    };
    let same: uuid::Uuid = r.request_id.parse().unwrap();
    let answers = apply(&env.admin.db, &[payment(same), payment(uuid::Uuid::new_v4())]).await.unwrap();
    match &answers[0] {
        Applied::Paid(receipt) => {
            assert_eq!(receipt.pay_no, r.field("pay_no"));
            assert_eq!(receipt.remaining, m("480.00"));
        }
        other => panic!("a redelivery answers its receipt: {other:?}"),
    }
    match &answers[1] {
        Applied::Refused(refusal) => {
            assert_eq!(refusal.code, payfleet::domain::Code::OrderPaid);
            assert_eq!(refusal.pay_no.as_deref(), Some(r.field("pay_no")));
        }
        other => panic!("another request is refused: {other:?}"),
    }
    assert_eq!(env.balances(user).await.integral, m("480.00"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_balance_payment_is_answered_from_its_receipt_after_a_password_change() {
    use payfleet::mq::messages::{AssetPayRequested, PayReplied, PayRequested};

    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (user, token) = env.user("10.00", "0", "0").await;
    let goods = env.goods("4.00").await;
    let order = env.orders(user, goods, 1).await.remove(0);
    let paid = app.api.pay_balance(&token, &order, "4.00", "123456").await.unwrap();
    assert_eq!(paid.status, 200, "{:?}", paid.body);
    let code = env.admin.issue_sms_code(user).await.unwrap();
    assert_eq!(app.api.set_pay_password(&token, "246810", &code).await.unwrap().code(), "SUCCESS");

    // The same pay request comes back from a retry tier (attempt 1), carrying the old password.
    let sealer = payfleet::password::Sealer::new(env.settings.pay.seal_keys().unwrap());
    let request_id: uuid::Uuid = paid.request_id.parse().unwrap();
    let request = PayRequested::Asset(AssetPayRequested {
        request_id,
        user_id: user,
        order_no: order.clone(),
        method: payfleet::domain::PayMethod::Balance,
        amount: m("4.00"),
        asset_amount: m("4.00"),
        sealed_password: Some(sealer.seal(
            &payfleet::password::SealedFor {
                user_id: user,
                request_id,
                order_no: &order,
                amount: m("4.00"),
                terms: payfleet::password::BALANCE_TERMS,
            },
            "123456",
        )),
        requested_at: time::OffsetDateTime::now_utc(),
    });
    match env.redeliver(&request).await {
        PayReplied::Paid(receipt) => {
            assert_eq!(receipt.pay_no, paid.field("pay_no"));
            assert_eq!(receipt.remaining, m("6.00"));
        }
        other => panic!("answered from its receipt, not by checking the changed password: {other:?}"),
    }
    assert_eq!(env.balances(user).await.money, m("6.00"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_payments_with_the_right_password_in_one_batch_are_no_lockout() {
    let env = TestEnv::with(&[("PAYFLEET__INGRESS__REPLY_TIMEOUT_MS", "200")]).await;
    let mut app = env.start_in_process().await;
    let (user, token) = env.user("100.00", "0", "0").await;
    let goods = env.goods("1.00").await;
    let orders = env.orders(user, goods, 12).await;
    // Queue them while no worker runs, so the next worker takes them as one batch.
    app.stop_worker().await;
    let answers =
        futures_util::future::join_all(orders.iter().map(|o| app.api.pay_balance(&token, o, "1.00", "123456"))).await;
    assert!(answers.iter().all(|r| r.as_ref().unwrap().status == 202));
    app.start_worker(env.settings.clone());
    eventually(Duration::from_secs(15), "all twelve paid", || async { env.balances(user).await.money == m("88.00") })
        .await;
    for order in &orders {
        let status = app.api.status(&token, order).await.unwrap();
        assert_eq!(status.field("pay_status"), "SUCCESS", "{:?}", status.body);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_pay_for_an_order_that_cannot_be_paid_spends_no_password_check() {
    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (user, token) = env.user("20.00", "0", "0").await;
    let (other, _) = env.user("20.00", "0", "0").await;
    let goods = env.goods("5.00").await;
    let orders = env.orders(user, goods, 2).await;
    let theirs = env.orders(other, goods, 1).await.remove(0);
    assert_eq!(app.api.pay_balance(&token, &orders[0], "5.00", "123456").await.unwrap().status, 200);
    // Made-up orders, someone else's, a paid one, the wrong amount: each refused for what it
    // is, before the (wrong) password is looked at, so none counts towards the lock.
    for (order, amount, code) in [
        ("ORD00000000000404", "5.00", "NOT_FOUND"),
        ("ORD00000000000405", "5.00", "NOT_FOUND"),
        (theirs.as_str(), "5.00", "NOT_FOUND"),
        (orders[0].as_str(), "5.00", "ORDERPAID"),
        (orders[1].as_str(), "4.99", "AMOUNT_MISMATCH"),
        ("ORD00000000000406", "5.00", "NOT_FOUND"),
        ("ORD00000000000407", "5.00", "NOT_FOUND"),
    ] {
        let r = app.api.pay_balance(&token, order, amount, "000000").await.unwrap();
        assert_eq!(r.code(), code, "{order}: {:?}", r.body);
    }
    let r = app.api.pay_balance(&token, &orders[1], "5.00", "123456").await.unwrap();
    assert_eq!((r.status, r.field("remaining_balance")), (200, "10.00"), "not locked: {:?}", r.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_password_checks_are_capped_per_user_per_minute_right_ones_included() {
    let env = TestEnv::with(&[("PAYFLEET__PAY__PASSWORD_CHECKS_PER_MINUTE", "3")]).await;
    let app = env.start_in_process().await;
    let (user, token) = env.user("20.00", "0", "0").await;
    let (other, other_token) = env.user("20.00", "0", "0").await;
    let goods = env.goods("1.00").await;
    let orders = env.orders(user, goods, 4).await;
    for order in &orders[..3] {
        assert_eq!(app.api.pay_balance(&token, order, "1.00", "123456").await.unwrap().status, 200);
    }
    let r = app.api.pay_balance(&token, &orders[3], "1.00", "123456").await.unwrap();
    assert_eq!((r.status, r.code()), (429, "RATE_LIMITED"), "{:?}", r.body);
    assert_eq!(r.retry_after, Some(60));
    assert_eq!(env.balances(user).await.money, m("17.00"), "the capped payment took nothing");
    // Another user's checks are their own.
    let theirs = env.orders(other, goods, 1).await.remove(0);
    assert_eq!(app.api.pay_balance(&other_token, &theirs, "1.00", "123456").await.unwrap().status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_a_limit_are_refused_429_per_user_and_per_address_across_ingress_copies() {
    let env = TestEnv::with(&[
        ("PAYFLEET__RATE_LIMIT__STATUS__PER_USER", "3"),
        ("PAYFLEET__RATE_LIMIT__STATUS__PER_IP", "5"),
    ])
    .await;
    let app = env.start_in_process().await;
    // A second ingress copy: the limits are counted in Redis, so the copies share them.
    let stop = tokio_util::sync::CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = ApiClient::new(&format!("http://{}", listener.local_addr().unwrap()));
    let task = tokio::spawn(payfleet::ingress::run(env.settings.clone(), listener, stop.clone()));
    second.wait_ready(Duration::from_secs(20)).await.unwrap();
    let (a, a_token) = env.user("0", "0", "0").await;
    let (b, b_token) = env.user("0", "0", "0").await;
    let goods = env.goods("1.00").await;
    let (a_order, b_order) = (env.orders(a, goods, 1).await.remove(0), env.orders(b, goods, 1).await.remove(0));
    let copies = [&app.api, &second];
    for (n, copy) in copies.iter().cycle().take(3).enumerate() {
        assert_eq!(copy.status(&a_token, &a_order).await.unwrap().status, 200, "request {n}");
    }
    for _ in 0..2 {
        let r = copies[1].status(&a_token, &a_order).await.unwrap();
        assert_eq!((r.status, r.code()), (429, "RATE_LIMITED"), "the user's fourth and fifth: {:?}", r.body);
        assert!(r.retry_after.is_some_and(|s| (1..=60).contains(&s)), "{:?}", r.retry_after);
    }
    // Another user from the same address: what the first was refused did not spend the
    // address's budget (five), so two pass; then it is spent.
    for _ in 0..2 {
        assert_eq!(copies[0].status(&b_token, &b_order).await.unwrap().status, 200);
    }
    let r = copies[1].status(&b_token, &b_order).await.unwrap();
    assert_eq!((r.status, r.code()), (429, "RATE_LIMITED"), "the address's sixth: {:?}", r.body);
    // Other kinds of request have budgets of their own.
    assert_eq!(app.api.create_order(&b_token, goods, 1).await.unwrap().status, 200);
    stop.cancel();
    task.await.unwrap().unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_the_address_is_the_one_the_proxy_saw_not_one_the_client_names() {
    let env = TestEnv::with(&[
        ("PAYFLEET__RATE_LIMIT__TRUST_FORWARDED_FOR", "true"),
        ("PAYFLEET__RATE_LIMIT__STATUS__PER_IP", "1"),
    ])
    .await;
    let app = env.start_in_process().await;
    let (user, token) = env.user("0", "0", "0").await;
    let goods = env.goods("1.00").await;
    let order = env.orders(user, goods, 1).await.remove(0);
    let http = reqwest::Client::new();
    let status = |forwarded: &'static str| {
        let request = http
            .get(format!("{}/api/v1/payment/{order}/status", app.api.base()))
            .bearer_auth(&token)
            .header("x-forwarded-for", forwarded);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // The proxy appended 198.51.100.7; whatever the client wrote before it changes nothing.
    assert_eq!(status("203.0.113.1, 198.51.100.7").await, 200);
    assert_eq!(status("203.0.113.2, 198.51.100.7").await, 429, "a made-up first hop is no new address");
    assert_eq!(status("203.0.113.2, 198.51.100.8").await, 200, "another client behind the proxy");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_method_keeps_its_payment_rules() {
    let env = TestEnv::with(&[
        ("PAYFLEET__PAY__MONEY2__ENABLED", "false"),
        ("PAYFLEET__PAY__INTEGRAL__MIN_AMOUNT", "2.00"),
        ("PAYFLEET__PAY__BALANCE__MAX_DAILY_AMOUNT", "25.00"),
        ("PAYFLEET__PAY__WECHAT__MAX_AMOUNT", "5.00"),
    ])
    .await;
    let app = env.start_in_process().await;
    let api = &app.api;
    let (user, token) = env.user("100.00", "1000", "100.00").await;
    let (ten, one) = (env.goods("10.00").await, env.goods("1.00").await);
    let order = || async { api.create_order(&token, ten, 1).await.unwrap().field("order_no").to_owned() };
    let (a, b, c) = (order().await, order().await, order().await);
    let cheap = api.create_order(&token, one, 1).await.unwrap().field("order_no").to_owned();
    let expect = |r: payfleet::ctl::client::ApiResponse, status: u16, code: &str| {
        assert_eq!((r.status, r.code()), (status, code), "{:?}", r.body);
    };

    expect(api.pay_money2(&token, &a, "10.00").await.unwrap(), 403, "METHOD_DISABLED");
    expect(api.pay_integral(&token, &cheap, "10", "1.00").await.unwrap(), 422, "VALIDATION");
    let create = json!({ "order_no": a, "amount": "10.00", "openid": "o-test" });
    expect(api.post("/api/v1/payment/wechat/create", Some(&token), &create).await.unwrap(), 422, "VALIDATION");
    // 25.00 a day with balance: two orders of 10.00 pay, the third would pass the limit.
    expect(api.pay_balance(&token, &a, "10.00", "123456").await.unwrap(), 200, "SUCCESS");
    expect(api.pay_balance(&token, &b, "10.00", "123456").await.unwrap(), 200, "SUCCESS");
    expect(api.pay_balance(&token, &c, "10.00", "123456").await.unwrap(), 409, "DAILY_LIMIT");
    // A payment above the day's limit by itself is refused before its password is checked.
    let big = env.goods("30.00").await;
    let big = api.create_order(&token, big, 1).await.unwrap().field("order_no").to_owned();
    expect(api.pay_balance(&token, &big, "30.00", "000000").await.unwrap(), 409, "DAILY_LIMIT");
    // Other methods are not limited by it.
    expect(api.pay_integral(&token, &c, "100", "10.00").await.unwrap(), 200, "SUCCESS");
    let balances = env.balances(user).await;
    assert_eq!((balances.money, balances.integral, balances.money2), (m("80.00"), m("900"), m("100.00")));
    app.stop().await;
    env.audit_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_pay_without_a_password_when_the_rules_say_so() {
    // Required (the default): a balance pay or a mixed balance part without one is refused.
    let env = TestEnv::new().await;
    let app = env.start_in_process().await;
    let (_, token) = env.user("50.00", "100", "0").await;
    let goods = env.goods("10.00").await;
    let order = app.api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();
    let bare = json!({ "order_no": order, "amount": "10.00" });
    let r = app.api.post("/api/v1/payment/balance/pay", Some(&token), &bare).await.unwrap();
    assert_eq!((r.status, r.code()), (422, "VALIDATION"), "{:?}", r.body);
    // Stopped before its environment goes: a worker still running would declare the deleted
    // queues again.
    app.stop().await;
    drop(env);

    // `pay.balance.require_password = false`: neither asks for it (one sent is not checked).
    let env = TestEnv::with(&[("PAYFLEET__PAY__BALANCE__REQUIRE_PASSWORD", "false")]).await;
    let app = env.start_in_process().await;
    let (user, token) = env.user("50.00", "100", "0").await;
    let goods = env.goods("10.00").await;
    let order = app.api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();
    let bare = json!({ "order_no": order, "amount": "10.00" });
    let r = app.api.post("/api/v1/payment/balance/pay", Some(&token), &bare).await.unwrap();
    assert_eq!((r.status, r.field("remaining_balance")), (200, "40.00"), "{:?}", r.body);
    let order = app.api.create_order(&token, goods, 1).await.unwrap().field("order_no").to_owned();
    let mixed = json!({
        "order_no": order, "total_amount": "10.00", "pay_password": "000000",
        "payment_methods": [{ "type": "balance", "amount": "5.00" }, { "type": "integral", "amount": "50", "money_equivalent": "5.00" }],
    });
    let r = app.api.post("/api/v1/payment/mixed/pay", Some(&token), &mixed).await.unwrap();
    assert_eq!((r.status, r.field("remaining_balance")), (200, "35.00"), "{:?}", r.body);
    assert_eq!(env.balances(user).await, Balances { money: m("35.00"), integral: m("50"), money2: m("0") });
    env.audit_is_clean().await;
    app.stop().await;
}
