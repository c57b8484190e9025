//! The WeChat clients (v2 and v3) against wechat-sim: requests signed and verified both ways,
//! prepay, query, close, pay params, and notifies that verify — or, forged, do not; refunds
//! that settle a moment later with their own notify, under refund faults too.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::sim::SimHandle;
use common::{config_dir, m};
use payfleet::channel::{ChannelError, Prepaid, PrepayOrder, RefundState, Trade, TradeState, TradeType};
use payfleet::config::Settings;
use payfleet::wechat::v2::req_info;
use payfleet::wechat::v3::crypto::SignedHeaders;
use payfleet::wechat::{Notified, SignedNotify, Wechat};
use time::OffsetDateTime;

/// Notifies received by a stand-in merchant endpoint: (headers, body).
type Inbox = Arc<Mutex<Vec<(SignedHeaders, Vec<u8>)>>>;

/// A merchant notify endpoint that keeps what it gets and answers success.
async fn receiver() -> (String, Inbox) {
    receiver_failing(0).await
}

/// A merchant notify endpoint that keeps what it gets and answers failure to the first
/// `failures` notifies (v3: 500; v2: 200 with return_code FAIL), success after.
async fn receiver_failing(failures: usize) -> (String, Inbox) {
    let inbox: Inbox = Arc::default();
    let kept = inbox.clone();
    let app = axum::Router::new().route(
        "/notify",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let kept = kept.clone();
            async move {
                let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let signed = SignedHeaders {
                    timestamp: get("wechatpay-timestamp"),
                    nonce: get("wechatpay-nonce"),
                    signature: get("wechatpay-signature"),
                    serial: get("wechatpay-serial"),
                };
                let xml = body.first() == Some(&b'<');
                let seen = {
                    let mut kept = kept.lock().unwrap();
                    kept.push((signed, body.to_vec()));
                    kept.len()
                };
                match (xml, seen > failures) {
                    (true, true) => (StatusCode::OK, "<xml><return_code><![CDATA[SUCCESS]]></return_code></xml>"),
                    (true, false) => (StatusCode::OK, "<xml><return_code><![CDATA[FAIL]]></return_code></xml>"),
                    (false, true) => (StatusCode::OK, ""),
                    (false, false) => (StatusCode::INTERNAL_SERVER_ERROR, ""),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, inbox)
}

fn channel(sim: &SimHandle, overrides: &[(&str, &str)]) -> Wechat {
    let mut env: std::collections::HashMap<String, String> = sim.env.iter().cloned().collect();
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let settings = Settings::load_from(&config_dir(), None, Some(env)).unwrap();
    Wechat::from_settings(&settings.wechat).unwrap()
}

fn order(no: &str, trade_type: TradeType) -> PrepayOrder {
    PrepayOrder {
        out_trade_no: no.into(),
        description: "一番赏 ticket".into(),
        amount: m("10.00"),
        trade_type,
        openid: Some("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into()),
        client_ip: "127.0.0.1".into(),
        expires_at: OffsetDateTime::now_utc() + Duration::from_secs(900),
    }
}

/// A received notify as the ingress verifies it on arrival: the trade, if it is a genuine payment.
fn verified(wechat: &Wechat, headers: &SignedHeaders, body: &[u8]) -> Result<Trade, String> {
    let signed = SignedNotify::received(headers.clone(), body).map_err(|e| e.to_string())?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    match wechat.verify_notify(&signed, Some(now), None).map_err(|e| e.to_string())? {
        Notified::Trade(notify) => Ok(notify.trade),
        Notified::Other { event_type, .. } => Err(format!("not a payment: {event_type}")),
        Notified::Refund(refund) => Err(format!("not a payment: {}", refund.event_type)),
    }
}

async fn wait_for(inbox: &Inbox, n: usize) -> Vec<(SignedHeaders, Vec<u8>)> {
    for _ in 0..200 {
        if inbox.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    inbox.lock().unwrap().clone()
}

async fn prepay_query_close_and_notify(version: &str, extra: &[(&str, &str)]) {
    let sim = SimHandle::start(&[100, 100]).await;
    let (notify_url, inbox) = receiver().await;
    let mut overrides =
        vec![("PAYFLEET__WECHAT__API_VERSION", version), ("PAYFLEET__WECHAT__NOTIFY_URL", notify_url.as_str())];
    overrides.extend_from_slice(extra);
    let wechat = channel(&sim, &overrides);

    let prepaid = wechat.prepay(&order("WX0000000001", TradeType::Jsapi)).await.unwrap();
    let Prepaid::Jsapi { prepay_id } = &prepaid else { panic!("{prepaid:?}") };
    assert_eq!(
        wechat.prepay(&order("WX0000000001", TradeType::Jsapi)).await.unwrap(),
        prepaid,
        "same order, same prepay"
    );
    let mut other = order("WX0000000001", TradeType::Jsapi);
    other.amount = m("11.00");
    assert!(
        matches!(wechat.prepay(&other).await, Err(ChannelError::Refused { code, .. }) if code == "OUT_TRADE_NO_USED")
    );
    let params = wechat.pay_params(&prepaid);
    assert_eq!(params["package"], format!("prepay_id={prepay_id}"));
    for field in ["appId", "timeStamp", "nonceStr", "signType", "paySign"] {
        assert!(params[field].as_str().is_some_and(|v| !v.is_empty()), "{field} in {params}");
    }

    let trade = wechat.query("WX0000000001").await.unwrap();
    assert_eq!((trade.trade_state, trade.total_fen), (TradeState::Notpay, Some(1000)));
    assert_eq!(wechat.query("WX0000000404").await, Err(ChannelError::NotFound));

    // The user pays: WeChat notifies, the notify verifies and says what was paid.
    assert_eq!(sim.pay("WX0000000001", None).await.status(), 200);
    let received = wait_for(&inbox, 1).await;
    let trade = verified(&wechat, &received[0].0, &received[0].1).unwrap();
    assert_eq!(trade.out_trade_no, "WX0000000001");
    assert_eq!((trade.trade_state, trade.total_fen), (TradeState::Success, Some(1000)));
    assert_eq!((trade.appid.as_str(), trade.mchid.as_str()), ("wxd930ea5d5a258f4f", "1900000109"));
    assert!(trade.transaction_id.is_some());
    // One byte changed anywhere in the body: refused.
    let mut tampered = received[0].1.clone();
    let i = tampered.len() / 2;
    tampered[i] ^= 1;
    assert!(verified(&wechat, &received[0].0, &tampered).is_err());
    assert_eq!(wechat.query("WX0000000001").await.unwrap().trade_state, TradeState::Success);
    assert_eq!(wechat.close("WX0000000001").await, Err(ChannelError::AlreadyPaid));

    // A delayed notify arrives, late.
    wechat.prepay(&order("WX0000000009", TradeType::Jsapi)).await.unwrap();
    let paid_at = std::time::Instant::now();
    assert_eq!(sim.pay("WX0000000009", Some("delay")).await.status(), 200);
    let received = wait_for(&inbox, 2).await;
    assert!(paid_at.elapsed() >= Duration::from_millis(300), "the delay fault waits delay_ms (300) first");
    assert_eq!(verified(&wechat, &received[1].0, &received[1].1).unwrap().out_trade_no, "WX0000000009");

    // Another order, closed before it is paid.
    wechat.prepay(&order("WX0000000002", TradeType::H5)).await.unwrap();
    wechat.close("WX0000000002").await.unwrap();
    assert_eq!(wechat.query("WX0000000002").await.unwrap().trade_state, TradeState::Closed);
    assert_eq!(wechat.prepay(&order("WX0000000002", TradeType::H5)).await, Err(ChannelError::Closed));
    for (kind, field) in [(TradeType::Native, "code_url"), (TradeType::App, "prepayid")] {
        let no = format!("WX00000000{}", kind.as_str().len());
        let params = wechat.pay_params(&wechat.prepay(&order(&no, kind)).await.unwrap());
        assert!(params[field].as_str().is_some(), "{kind:?}: {params}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_in_public_key_mode() {
    prepay_query_close_and_notify("v3", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_in_platform_certificate_mode() {
    // No public key: answers are signed with the platform certificate's key and verified by it.
    prepay_query_close_and_notify(
        "v3",
        &[("PAYFLEET__WECHAT__PUBLIC_KEY_ID", ""), ("PAYFLEET__WECHAT__PUBLIC_KEY_FILE", "")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_with_hmac_sha256() {
    prepay_query_close_and_notify("v2", &[("PAYFLEET__WECHAT__V2_SIGN_TYPE", "HMAC-SHA256")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_with_md5() {
    prepay_query_close_and_notify("v2", &[("PAYFLEET__WECHAT__V2_SIGN_TYPE", "MD5")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_with_the_wrong_key_is_refused() {
    let sim = SimHandle::start(&[100]).await;
    let elsewhere = std::env::temp_dir().join(format!("payfleet-key-{}", uuid::Uuid::new_v4().simple()));
    let key = rsa::PrivateKey::new(&mut rand::rng(), 2048).unwrap();
    std::fs::write(&elsewhere, payfleet::wechat::v3::crypto::private_key_to_pem(&key)).unwrap();
    let path = elsewhere.display().to_string();
    let wechat = channel(&sim, &[("PAYFLEET__WECHAT__MERCHANT_PRIVATE_KEY_FILE", path.as_str())]);
    let refused = wechat.prepay(&order("WX0000000001", TradeType::Jsapi)).await;
    assert!(matches!(refused, Err(ChannelError::Refused { ref code, .. }) if code == "SIGN_ERROR"), "{refused:?}");
    let wechat = channel(
        &sim,
        &[
            ("PAYFLEET__WECHAT__API_VERSION", "v2"),
            ("PAYFLEET__WECHAT__API_V2_KEY_FILE", ""),
            ("PAYFLEET__WECHAT__API_V2_KEY", "0123456789abcdef0123456789abcdef"),
        ],
    );
    let refused = wechat.prepay(&order("WX0000000001", TradeType::Jsapi)).await;
    assert!(matches!(refused, Err(ChannelError::Refused { ref message, .. }) if message == "签名错误"), "{refused:?}");
    std::fs::remove_file(elsewhere).unwrap();
}

/// Signs v3 requests with the merchant key the simulator wrote, and verifies its answers.
struct V3Caller {
    base: String,
    key: rsa::PrivateKey,
    serial: String,
    public_key_id: String,
    platform: payfleet::wechat::v3::crypto::PlatformKeys,
    http: reqwest::Client,
}

impl V3Caller {
    fn new(sim: &SimHandle) -> V3Caller {
        let read = |name: &str| std::fs::read_to_string(sim.dir.join(name)).unwrap().trim().to_owned();
        let mut platform = payfleet::wechat::v3::crypto::PlatformKeys::default();
        let public_key_id = read("public_key_id");
        platform
            .insert(&public_key_id, payfleet::wechat::v3::crypto::public_key_from_pem(&read("pub_key.pem")).unwrap());
        V3Caller {
            base: sim.url.clone(),
            key: payfleet::wechat::v3::crypto::private_key_from_pem(&read("apiclient_key.pem")).unwrap(),
            serial: read("merchant_serial"),
            public_key_id,
            platform,
            http: reqwest::Client::new(),
        }
    }

    /// (status, body, whether the answer carried a valid WeChat signature)
    async fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, Vec<u8>, bool) {
        use payfleet::wechat::v3::sign::{Authorization, nonce};
        let text = body.map(|b| b.to_string()).unwrap_or_default();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let auth = Authorization::sign(&self.key, "1900000109", &self.serial, (method, path, &text), now, &nonce());
        let request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .header("Authorization", auth.header())
            .header("Wechatpay-Serial", &self.public_key_id)
            .header("Content-Type", "application/json")
            .body(text);
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = payfleet::wechat::v3::client::signed_headers(response.headers());
        let bytes = response.bytes().await.unwrap().to_vec();
        let signed = self.platform.verify(&headers, &bytes, now).is_ok();
        (status, bytes, signed)
    }
}

fn json_of(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_bills_tokens_and_shipping() {
    let sim = SimHandle::start(&[100, 100]).await;
    let (notify_url, inbox) = receiver().await;
    let wechat = channel(&sim, &[("PAYFLEET__WECHAT__NOTIFY_URL", notify_url.as_str())]);
    let caller = V3Caller::new(&sim);
    wechat.prepay(&order("WX0000000001", TradeType::Jsapi)).await.unwrap();
    let (status, _, _) = caller.call("POST", "/v3/refund/domestic/refunds", Some(serde_json::json!({
        "out_trade_no": "WX0000000001", "out_refund_no": "RF1", "amount": { "refund": 300, "total": 1000, "currency": "CNY" }
    }))).await;
    assert_eq!(status, 400, "an unpaid order cannot be refunded");
    sim.pay("WX0000000001", None).await;
    wait_for(&inbox, 1).await;

    // Refunds: partial, idempotent by out_refund_no, never more than was paid (a refund still
    // PROCESSING counts); notified once settled.
    let refund = |no: &'static str, amount: i64| {
        serde_json::json!({ "out_trade_no": "WX0000000001", "out_refund_no": no, "notify_url": notify_url,
                            "amount": { "refund": amount, "total": 1000, "currency": "CNY" } })
    };
    let (status, body, signed) = caller.call("POST", "/v3/refund/domestic/refunds", Some(refund("RF1", 300))).await;
    assert_eq!((status, signed), (200, true), "{}", String::from_utf8_lossy(&body));
    let first = json_of(&body);
    assert_eq!((first["status"].as_str(), first["amount"]["refund"].as_i64()), (Some("PROCESSING"), Some(300)));
    assert!(first.get("success_time").is_none(), "not refunded yet: {first}");
    let (_, body, _) = caller.call("POST", "/v3/refund/domestic/refunds", Some(refund("RF1", 300))).await;
    assert_eq!(json_of(&body)["refund_id"], first["refund_id"], "the same out_refund_no is the same refund");
    let (status, body, _) = caller.call("POST", "/v3/refund/domestic/refunds", Some(refund("RF2", 800))).await;
    assert_eq!((status, json_of(&body)["code"].as_str()), (400, Some("INVALID_REQUEST")), "more than paid");
    let (status, body, signed) = caller.call("GET", "/v3/refund/domestic/refunds/RF1", None).await;
    assert_eq!((status, signed, json_of(&body)["out_trade_no"].as_str()), (200, true, Some("WX0000000001")));
    let (status, body, _) = caller.call("GET", "/v3/refund/domestic/refunds/RF9", None).await;
    assert_eq!((status, json_of(&body)["code"].as_str()), (404, Some("RESOURCE_NOT_EXISTS")));
    assert_eq!(sim.refund_requests("WX0000000001").await, ["refund RF1", "refund RF1"], "each request, repeats too");
    let received = wait_for(&inbox, 2).await;
    assert_eq!(settled(&caller, "RF1").await["status"], "SUCCESS");
    let (headers, body) = &received[1];
    let platform = &caller.platform;
    platform.verify(headers, body, OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    let notify: payfleet::wechat::v3::types::Notify = serde_json::from_slice(body).unwrap();
    assert_eq!(notify.event_type, "REFUND.SUCCESS");
    // Genuine, but no payment: the pay-notify path takes it for what it is, not for a forgery.
    assert_eq!(verified(&wechat, headers, body), Err("not a payment: REFUND.SUCCESS".to_owned()));
    let key = std::fs::read_to_string(sim.dir.join("api_v3_key")).unwrap();
    let plain = payfleet::wechat::v3::crypto::decrypt_resource(
        key.trim().as_bytes(),
        &notify.resource.nonce,
        "refund",
        &notify.resource.ciphertext,
    )
    .unwrap();
    assert_eq!(json_of(&plain)["refund_status"], "SUCCESS");

    // The trade bill of today (Beijing time): signed answer, unsigned file, SHA-1 over it.
    let beijing = OffsetDateTime::now_utc().to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap());
    let today = format!("{:04}-{:02}-{:02}", beijing.year(), u8::from(beijing.month()), beijing.day());
    let (status, body, signed) =
        caller.call("GET", &format!("/v3/bill/tradebill?bill_date={today}&bill_type=ALL"), None).await;
    assert_eq!((status, signed), (200, true), "{}", String::from_utf8_lossy(&body));
    let answer = json_of(&body);
    let url = answer["download_url"].as_str().unwrap();
    let path = &url[url.find("/v3/").unwrap()..];
    let (status, file, _) = caller.call("GET", path, None).await;
    assert_eq!(status, 200);
    use sha1::Digest;
    let hash: String = sha1::Sha1::digest(&file).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(answer["hash_value"].as_str(), Some(hash.as_str()));
    let text = String::from_utf8(file).unwrap();
    assert!(text.starts_with("\u{feff}交易时间,公众账号ID,商户号"), "BOM and header");
    assert!(
        text.contains("`WX0000000001,")
            && text.contains("`SUCCESS,")
            && text.contains("`REFUND,")
            && text.contains("`RF1,")
    );
    assert!(text.lines().all(|l| !l.is_empty()) && text.contains("\r\n"), "CRLF lines");
    assert!(text.contains("总交易单数") && text.contains("`2.0,`10.00,`3.00,"), "the summary: {text}");
    let (status, body, _) = caller.call("GET", "/v3/bill/tradebill?bill_date=2020-01-01", None).await;
    assert_eq!((status, json_of(&body)["code"].as_str()), (400, Some("NO_STATEMENT_EXIST")));

    // Access tokens and shipping uploads.
    let http = reqwest::Client::new();
    let secret = std::fs::read_to_string(sim.dir.join("app_secret")).unwrap();
    let token_url = |secret: &str| {
        format!("{}/cgi-bin/token?grant_type=client_credential&appid=wxd930ea5d5a258f4f&secret={secret}", sim.url)
    };
    let bad: serde_json::Value = http.get(token_url("wrong")).send().await.unwrap().json().await.unwrap();
    assert_eq!(bad["errcode"], 40125);
    let token: serde_json::Value = http.get(token_url(secret.trim())).send().await.unwrap().json().await.unwrap();
    let access_token = token["access_token"].as_str().unwrap().to_owned();
    let ship = |token: String, body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{}/wxa/sec/order/upload_shipping_info?access_token={token}", sim.url);
        async move {
            http.post(url).json(&body).send().await.unwrap().json::<serde_json::Value>().await.unwrap()["errcode"]
                .clone()
        }
    };
    let shipping = |openid: &str, list: serde_json::Value| {
        serde_json::json!({
            "order_key": { "order_number_type": 1, "mchid": "1900000109", "out_trade_no": "WX0000000001" },
            "logistics_type": 3, "delivery_mode": 1, "shipping_list": list,
            "upload_time": "2026-01-01T12:00:00.000+08:00", "payer": { "openid": openid },
        })
    };
    let payer = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";
    assert_eq!(ship("nope".into(), shipping(payer, serde_json::json!([{ "item_desc": "一番赏 A赏" }]))).await, 40001);
    assert_eq!(ship(access_token.clone(), shipping(payer, serde_json::json!({ "item_desc": "x" }))).await, 47001);
    assert_eq!(
        ship(access_token.clone(), shipping("oSomeoneElse", serde_json::json!([{ "item_desc": "x" }]))).await,
        10060031
    );
    // Refunded above, so WeChat refuses to ship it.
    assert_eq!(ship(access_token.clone(), shipping(payer, serde_json::json!([{ "item_desc": "x" }]))).await, 10060004);
    // A fresh /cgi-bin/token replaces the old one.
    let newer: serde_json::Value = http.get(token_url(secret.trim())).send().await.unwrap().json().await.unwrap();
    assert_ne!(newer["access_token"].as_str(), Some(access_token.as_str()));
    assert_eq!(ship(access_token, shipping(payer, serde_json::json!([{ "item_desc": "x" }]))).await, 40001);

    // A paid order ships once, and may be re-shipped once more; v2 refund, signed with the
    // APIv2 key.
    let v2 = channel(
        &sim,
        &[("PAYFLEET__WECHAT__API_VERSION", "v2"), ("PAYFLEET__WECHAT__NOTIFY_URL", notify_url.as_str())],
    );
    v2.prepay(&order("WX0000000002", TradeType::Jsapi)).await.unwrap();
    sim.pay("WX0000000002", None).await;
    let current = newer["access_token"].as_str().unwrap().to_owned();
    let mut second = shipping(payer, serde_json::json!([{ "item_desc": "一番赏 A赏" }]));
    second["order_key"]["out_trade_no"] = serde_json::json!("WX0000000002");
    assert_eq!(ship(current.clone(), second.clone()).await, 0);
    assert_eq!(ship(current.clone(), second.clone()).await, 0, "the one re-shipment");
    assert_eq!(ship(current, second).await, 10060003);
    let answer = v2_call(
        &sim,
        "/secapi/pay/refund",
        &[("out_trade_no", "WX0000000002"), ("out_refund_no", "RF2-1"), ("total_fee", "1000"), ("refund_fee", "1000")],
    )
    .await;
    assert_eq!(
        (answer["return_code"].as_str(), answer["result_code"].as_str(), answer["refund_fee"].as_str()),
        ("SUCCESS", "SUCCESS", "1000")
    );
}

const REFUNDS: &str = "/v3/refund/domestic/refunds";

/// A key file the simulator wrote.
fn sim_key(sim: &SimHandle, name: &str) -> String {
    std::fs::read_to_string(sim.dir.join(name)).unwrap().trim().to_owned()
}

/// The body of a v3 refund request of a 10.00 trade.
fn v3_refund(out_trade_no: &str, out_refund_no: &str, refund: i64, notify_url: &str) -> serde_json::Value {
    serde_json::json!({ "out_trade_no": out_trade_no, "out_refund_no": out_refund_no, "notify_url": notify_url,
                        "amount": { "refund": refund, "total": 1000, "currency": "CNY" } })
}

/// A v3 refund as the query answers it once it is no longer PROCESSING (or after 5 s).
async fn settled(caller: &V3Caller, out_refund_no: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body, signed) = caller.call("GET", &format!("{REFUNDS}/{out_refund_no}"), None).await;
        assert_eq!((status, signed), (200, true), "{}", String::from_utf8_lossy(&body));
        let refund = json_of(&body);
        if refund["status"] != "PROCESSING" || std::time::Instant::now() > deadline {
            return refund;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A v3 refund notify, its signature checked against WeChat's key and its resource opened
/// with the APIv3 key: (event_type, the refund).
fn open_v3_refund(
    sim: &SimHandle,
    caller: &V3Caller,
    notify: &(SignedHeaders, Vec<u8>),
) -> (String, serde_json::Value) {
    let (headers, body) = notify;
    caller.platform.verify(headers, body, OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    let notify: payfleet::wechat::v3::types::Notify = serde_json::from_slice(body).unwrap();
    assert_eq!((notify.resource_type.as_str(), notify.resource.original_type.as_str()), ("encrypt-resource", "refund"));
    assert_eq!(
        (notify.resource.algorithm.as_str(), notify.resource.associated_data.as_deref()),
        ("AEAD_AES_256_GCM", Some("refund"))
    );
    let plain = payfleet::wechat::v3::crypto::decrypt_resource(
        sim_key(sim, "api_v3_key").as_bytes(),
        &notify.resource.nonce,
        "refund",
        &notify.resource.ciphertext,
    )
    .unwrap();
    (notify.event_type, json_of(&plain))
}

/// A v2 call signed (MD5) with the simulator's APIv2 key; answers the answer's fields, whose
/// `sign` it checks where WeChat signs.
async fn v2_call(sim: &SimHandle, path: &str, pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    use payfleet::wechat::v2::sign::{SignType, sign, verify};
    let key = sim_key(sim, "api_v2_key");
    let mut fields: std::collections::BTreeMap<String, String> =
        [("appid", "wxd930ea5d5a258f4f"), ("mch_id", "1900000109"), ("nonce_str", "n0nce")]
            .iter()
            .chain(pairs)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    fields.insert("sign".into(), sign(&fields, &key, SignType::Md5));
    let answer = reqwest::Client::new()
        .post(format!("{}{path}", sim.url))
        .body(payfleet::wechat::v2::xml::write(&fields))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let answer = payfleet::wechat::v2::xml::read(&answer).unwrap();
    if answer["return_code"] == "SUCCESS" {
        assert!(verify(&answer, &key, SignType::Md5), "{answer:?}");
    }
    answer
}

/// The refund notify attempts the simulator made for a trade: (status answered, detail).
async fn refund_attempts(sim: &SimHandle, out_trade_no: &str) -> Vec<(u16, String)> {
    sim.notifies(out_trade_no).await.into_iter().filter(|(_, detail)| detail.starts_with("refund attempt")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v3_refund_is_processing_until_it_settles_then_notified() {
    let sim = SimHandle::start(&[100, 100]).await;
    let (notify_url, inbox) = receiver().await;
    let wechat = channel(&sim, &[("PAYFLEET__WECHAT__NOTIFY_URL", notify_url.as_str())]);
    let caller = V3Caller::new(&sim);
    let no = "WX0000000001";
    wechat.prepay(&order(no, TradeType::Jsapi)).await.unwrap();
    sim.pay(no, None).await;
    assert_eq!(wait_for(&inbox, 1).await.len(), 1);

    let asked = std::time::Instant::now();
    let (status, body, _) = caller.call("POST", REFUNDS, Some(v3_refund(no, "RF1", 300, &notify_url))).await;
    let accepted = json_of(&body);
    assert_eq!((status, accepted["status"].as_str()), (200, Some("PROCESSING")), "{accepted}");
    assert_eq!(inbox.lock().unwrap().len(), 1, "no refund notify before the refund settles");
    let done = settled(&caller, "RF1").await;
    assert!(asked.elapsed() >= Duration::from_millis(200), "PROCESSING for 200 ms first");
    assert_eq!(done["status"], "SUCCESS");
    assert!(done["success_time"].as_str().is_some_and(|t| t.ends_with("+08:00")), "{done}");

    let received = wait_for(&inbox, 2).await;
    assert_eq!(received.len(), 2);
    let (event_type, refund) = open_v3_refund(&sim, &caller, &received[1]);
    assert_eq!(event_type, "REFUND.SUCCESS");
    let transaction_id = sim.order(no).await.unwrap()["transaction_id"].clone();
    assert_eq!(
        refund,
        serde_json::json!({
            "mchid": "1900000109", "transaction_id": transaction_id, "out_trade_no": no,
            "refund_id": accepted["refund_id"], "out_refund_no": "RF1", "refund_status": "SUCCESS",
            "success_time": done["success_time"], "user_received_account": "支付用户零钱",
            "amount": { "total": 1000, "refund": 300, "payer_total": 1000, "payer_refund": 300 },
        })
    );
    // The fleet's own refund-notify path takes it as the refund's progress.
    let signed = SignedNotify::received(received[1].0.clone(), &received[1].1).unwrap();
    let opened = wechat.verify_refund_notify(&signed, Some(OffsetDateTime::now_utc().unix_timestamp())).unwrap();
    assert_eq!((opened.event_type.as_str(), opened.refund.out_refund_no.as_str()), ("REFUND.SUCCESS", "RF1"));
    assert_eq!((opened.refund.state, opened.refund.refund_fen), (RefundState::Success, 300));

    // Asked again: the same refund as it is now, and no second notify.
    let (_, body, _) = caller.call("POST", REFUNDS, Some(v3_refund(no, "RF1", 300, &notify_url))).await;
    let again = json_of(&body);
    assert_eq!((&again["refund_id"], again["status"].as_str()), (&accepted["refund_id"], Some("SUCCESS")));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(inbox.lock().unwrap().len(), 2, "one refund, one notify");
    assert_eq!(refund_attempts(&sim, no).await, [(200, "refund attempt 1".to_owned())]);
    assert_eq!(sim.refund_requests(no).await, ["refund RF1", "refund RF1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_faults_shape_how_refunds_settle() {
    let sim = SimHandle::start(&[100, 100]).await;
    let (notify_url, inbox) = receiver().await;
    let wechat = channel(&sim, &[("PAYFLEET__WECHAT__NOTIFY_URL", notify_url.as_str())]);
    let caller = V3Caller::new(&sim);
    let no = "WX0000000001";
    wechat.prepay(&order(no, TradeType::Jsapi)).await.unwrap();
    sim.pay(no, None).await;
    assert_eq!(wait_for(&inbox, 1).await.len(), 1);
    let ask = |out_refund_no: &'static str| {
        let (caller, notify_url) = (&caller, &notify_url);
        async move {
            let (status, body, _) =
                caller.call("POST", REFUNDS, Some(v3_refund(no, out_refund_no, 100, notify_url))).await;
            assert_eq!((status, json_of(&body)["status"].as_str()), (200, Some("PROCESSING")), "{out_refund_no}");
        }
    };

    // never: refunded all the same, but only a query says so.
    sim.refund_fault(no, Some("never"), None).await;
    ask("RF-NEVER").await;
    assert_eq!(settled(&caller, "RF-NEVER").await["status"], "SUCCESS");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(inbox.lock().unwrap().len(), 1, "no refund notify under the never fault");

    // abnormal and closed: settled so, and notified so, without a success time.
    for (fault, status, event_type, notifies) in
        [("abnormal", "ABNORMAL", "REFUND.ABNORMAL", 2), ("closed", "CLOSED", "REFUND.CLOSED", 3)]
    {
        sim.refund_fault(no, Some(fault), None).await;
        let out_refund_no = if fault == "abnormal" { "RF-ABNORMAL" } else { "RF-CLOSED" };
        ask(out_refund_no).await;
        let done = settled(&caller, out_refund_no).await;
        assert_eq!(done["status"], status);
        assert!(done.get("success_time").is_none(), "{done}");
        let received = wait_for(&inbox, notifies).await;
        assert_eq!(received.len(), notifies);
        let (event, refund) = open_v3_refund(&sim, &caller, &received[notifies - 1]);
        assert_eq!(
            (event.as_str(), &refund["refund_status"], &refund["out_refund_no"]),
            (event_type, &status.into(), &out_refund_no.into())
        );
        assert!(refund.get("success_time").is_none(), "{refund}");
        let signed = SignedNotify::received(received[notifies - 1].0.clone(), &received[notifies - 1].1).unwrap();
        let opened = wechat.verify_refund_notify(&signed, None).unwrap();
        assert_eq!(opened.refund.state.as_str(), status);
    }

    // delay: PROCESSING for delay_ms, then SUCCESS and notified.
    sim.refund_fault(no, Some("delay"), Some(600)).await;
    let asked = std::time::Instant::now();
    ask("RF-DELAY").await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (_, body, _) = caller.call("GET", &format!("{REFUNDS}/RF-DELAY"), None).await;
    assert_eq!(json_of(&body)["status"], "PROCESSING", "still within delay_ms");
    let received = wait_for(&inbox, 4).await;
    assert_eq!(received.len(), 4);
    assert!(asked.elapsed() >= Duration::from_millis(600), "notified after delay_ms");
    let (event, refund) = open_v3_refund(&sim, &caller, &received[3]);
    assert_eq!((event.as_str(), &refund["out_refund_no"]), ("REFUND.SUCCESS", &"RF-DELAY".into()));
    assert_eq!(settled(&caller, "RF-DELAY").await["status"], "SUCCESS");

    // Cleared: back to 200 ms and SUCCESS.
    sim.refund_fault(no, None, None).await;
    let asked = std::time::Instant::now();
    ask("RF-PLAIN").await;
    let received = wait_for(&inbox, 5).await;
    assert_eq!(received.len(), 5);
    assert!(asked.elapsed() < Duration::from_millis(2000), "the default, not the delay fault's 3 s");
    assert_eq!(open_v3_refund(&sim, &caller, &received[4]).0, "REFUND.SUCCESS");
    assert_eq!(sim.refund_requests(no).await.len(), 5);

    // An unknown fault is refused.
    let refused = reqwest::Client::new()
        .post(format!("{}/sim/refund-fault", sim.url))
        .json(&serde_json::json!({ "out_trade_no": no, "fault": "sometimes" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);

    // Faults belong to their trade; the merchant platform's refund settles at once regardless.
    let other = "WX0000000002";
    wechat.prepay(&order(other, TradeType::Jsapi)).await.unwrap();
    sim.pay(other, None).await;
    assert_eq!(wait_for(&inbox, 6).await.len(), 6);
    sim.refund_fault(other, Some("closed"), None).await;
    let refunded: serde_json::Value = sim.refund(other, &notify_url).await.json().await.unwrap();
    assert_eq!(refunded["status"], "SUCCESS", "{refunded}");
    let received = wait_for(&inbox, 7).await;
    assert_eq!(received.len(), 7);
    assert_eq!(open_v3_refund(&sim, &caller, &received[6]).0, "REFUND.SUCCESS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_refund_is_notified_with_req_info_and_queried() {
    let sim = SimHandle::start(&[100, 100]).await;
    let (pay_url, pay_inbox) = receiver().await;
    // The merchant's first answer to a refund notify is a FAIL: WeChat must try again.
    let (refund_url, refund_inbox) = receiver_failing(1).await;
    let v2 =
        channel(&sim, &[("PAYFLEET__WECHAT__API_VERSION", "v2"), ("PAYFLEET__WECHAT__NOTIFY_URL", pay_url.as_str())]);
    let no = "WX0000000001";
    v2.prepay(&order(no, TradeType::Jsapi)).await.unwrap();
    sim.pay(no, None).await;
    assert_eq!(wait_for(&pay_inbox, 1).await.len(), 1);
    let transaction_id = sim.order(no).await.unwrap()["transaction_id"].as_str().unwrap().to_owned();
    let refund = |out_refund_no: &'static str, fee: &'static str| {
        let (sim, refund_url) = (&sim, &refund_url);
        async move {
            let fields = [
                ("out_trade_no", no),
                ("out_refund_no", out_refund_no),
                ("total_fee", "1000"),
                ("refund_fee", fee),
                ("notify_url", refund_url.as_str()),
            ];
            let answer = v2_call(sim, "/secapi/pay/refund", &fields).await;
            assert_eq!(answer["result_code"], "SUCCESS", "{answer:?}");
            answer
        }
    };
    let query = |by: &'static str, value: String| {
        let sim = &sim;
        async move { v2_call(sim, "/pay/refundquery", &[(by, value.as_str())]).await }
    };

    // Accepted, not done: the query says PROCESSING.
    let accepted = refund("RF1", "300").await;
    let q = query("out_refund_no", "RF1".into()).await;
    assert_eq!((q["result_code"].as_str(), q["refund_count"].as_str()), ("SUCCESS", "1"));
    assert_eq!((q["out_refund_no_0"].as_str(), q["refund_status_0"].as_str()), ("RF1", "PROCESSING"));
    assert_eq!((q["total_fee"].as_str(), q["cash_fee"].as_str(), q["refund_fee_0"].as_str()), ("1000", "1000", "300"));
    assert_eq!((&q["refund_id_0"], &q["transaction_id"]), (&accepted["refund_id"], &transaction_id));
    assert!(!q.contains_key("refund_success_time_0"));

    // Settled: notified, the FAIL answered, and sent again.
    let received = wait_for(&refund_inbox, 2).await;
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].1, received[1].1, "the same notify again");
    let attempts = refund_attempts(&sim, no).await;
    assert_eq!(attempts, [(200, "refund attempt 1".to_owned()), (200, "refund attempt 2".to_owned())]);
    let body = String::from_utf8(received[1].1.clone()).unwrap();
    let outer = payfleet::wechat::v2::xml::read(&body).unwrap();
    assert_eq!(
        outer.keys().map(String::as_str).collect::<Vec<_>>(),
        ["appid", "mch_id", "nonce_str", "req_info", "return_code"]
    );
    assert_eq!((outer["return_code"].as_str(), outer["appid"].as_str()), ("SUCCESS", "wxd930ea5d5a258f4f"));
    let key = sim_key(&sim, "api_v2_key");
    let inner = req_info::decrypt(&key, &outer["req_info"]).unwrap();
    assert!(inner.starts_with("<root>") && inner.ends_with("</root>"), "{inner}");
    assert!(req_info::decrypt("0123456789abcdef0123456789abcdef", &outer["req_info"]).is_err());
    let q = query("out_refund_no", "RF1".into()).await;
    assert_eq!(q["refund_status_0"], "SUCCESS");
    let success_time = q["refund_success_time_0"].clone();
    assert!(payfleet::wechat::v2::client::parse_beijing_dashed(&success_time).is_some(), "{success_time}");
    let expected: std::collections::BTreeMap<String, String> = [
        ("out_refund_no", "RF1"),
        ("out_trade_no", no),
        ("transaction_id", &transaction_id),
        ("refund_id", &accepted["refund_id"]),
        ("total_fee", "1000"),
        ("refund_fee", "300"),
        ("settlement_total_fee", "1000"),
        ("settlement_refund_fee", "300"),
        ("refund_status", "SUCCESS"),
        ("success_time", &success_time),
        ("refund_recv_accout", "支付用户零钱"),
        ("refund_account", "REFUND_SOURCE_UNSETTLED_FUNDS"),
        ("refund_request_source", "API"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    assert_eq!(payfleet::wechat::v2::xml::read(&inner).unwrap(), expected);
    // The fleet's own path opens it.
    let signed = SignedNotify::received(received[1].0.clone(), body.as_bytes()).unwrap();
    let opened = v2.verify_refund_notify(&signed, None).unwrap();
    assert_eq!((opened.refund.out_refund_no.as_str(), opened.refund.state), ("RF1", RefundState::Success));
    assert_eq!((opened.refund.refund_fen, opened.refund.success_time.is_some()), (300, true));

    // Abnormal and closed, in v2's words: CHANGE and REFUNDCLOSE, with no success time.
    sim.refund_fault(no, Some("abnormal"), None).await;
    refund("RF2", "100").await;
    sim.refund_fault(no, Some("closed"), None).await;
    refund("RF3", "100").await;
    let received = wait_for(&refund_inbox, 4).await;
    assert_eq!(received.len(), 4);
    let statuses: Vec<(String, String, bool)> = received[2..]
        .iter()
        .map(|(_, body)| {
            let outer = payfleet::wechat::v2::xml::read(std::str::from_utf8(body).unwrap()).unwrap();
            let inner = payfleet::wechat::v2::xml::read(&req_info::decrypt(&key, &outer["req_info"]).unwrap()).unwrap();
            (inner["out_refund_no"].clone(), inner["refund_status"].clone(), inner.contains_key("success_time"))
        })
        .collect();
    let mut statuses = statuses;
    statuses.sort();
    assert_eq!(statuses, [("RF2".into(), "CHANGE".into(), false), ("RF3".into(), "REFUNDCLOSE".into(), false)]);

    // By the trade, every refund, oldest first; by a refund's number or id, that one alone.
    for (by, value) in [("out_trade_no", no.to_owned()), ("transaction_id", transaction_id.clone())] {
        let q = query(by, value).await;
        assert_eq!(q["refund_count"], "3", "{by}");
        let listed: Vec<(&str, &str)> = (0..3)
            .map(|i| (q[&format!("out_refund_no_{i}")].as_str(), q[&format!("refund_status_{i}")].as_str()))
            .collect();
        assert_eq!(listed, [("RF1", "SUCCESS"), ("RF2", "CHANGE"), ("RF3", "REFUNDCLOSE")], "{by}");
        assert!(q.contains_key("refund_success_time_0") && !q.contains_key("refund_success_time_1"));
    }
    let q = query("out_refund_no", "RF2".into()).await;
    assert_eq!((q["refund_count"].as_str(), q["out_refund_no_0"].as_str()), ("1", "RF2"));
    let q = query("refund_id", q["refund_id_0"].clone()).await;
    assert_eq!((q["refund_count"].as_str(), q["refund_status_0"].as_str()), ("1", "CHANGE"));
    let q = query("out_refund_no", "RF9".into()).await;
    assert_eq!((q["result_code"].as_str(), q["err_code"].as_str()), ("FAIL", "REFUNDNOTEXIST"));
    // The fleet's own query reads the answer.
    assert_eq!(v2.query_refund("RF3").await.unwrap().state, RefundState::Closed);
    assert_eq!(sim.refund_requests(no).await, ["refund RF1", "refund RF2", "refund RF3"]);
}
