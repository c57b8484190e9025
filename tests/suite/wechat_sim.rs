//! The WeChat clients (v2 and v3) against wechat-sim: requests signed and verified both ways,
//! prepay, query, close, pay params, and notifies that verify — or, forged, do not.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use common::sim::SimHandle;
use common::{config_dir, m};
use payfleet::channel::{ChannelError, Prepaid, PrepayOrder, Trade, TradeState, TradeType};
use payfleet::config::Settings;
use payfleet::wechat::v3::crypto::SignedHeaders;
use payfleet::wechat::{Notified, SignedNotify, Wechat};
use time::OffsetDateTime;

/// Notifies received by a stand-in merchant endpoint: (headers, body).
type Inbox = Arc<Mutex<Vec<(SignedHeaders, Vec<u8>)>>>;

/// A merchant notify endpoint that keeps what it gets and answers success.
async fn receiver() -> (String, Inbox) {
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
                kept.lock().unwrap().push((signed, body.to_vec()));
                if xml { "<xml><return_code><![CDATA[SUCCESS]]></return_code></xml>".to_owned() } else { String::new() }
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

    // Refunds: partial, idempotent by out_refund_no, never more than was paid; notified.
    let refund = |no: &'static str, amount: i64| {
        serde_json::json!({ "out_trade_no": "WX0000000001", "out_refund_no": no, "notify_url": notify_url,
                            "amount": { "refund": amount, "total": 1000, "currency": "CNY" } })
    };
    let (status, body, signed) = caller.call("POST", "/v3/refund/domestic/refunds", Some(refund("RF1", 300))).await;
    assert_eq!((status, signed), (200, true), "{}", String::from_utf8_lossy(&body));
    let first = json_of(&body);
    assert_eq!((first["status"].as_str(), first["amount"]["refund"].as_i64()), (Some("SUCCESS"), Some(300)));
    let (_, body, _) = caller.call("POST", "/v3/refund/domestic/refunds", Some(refund("RF1", 300))).await;
    assert_eq!(json_of(&body)["refund_id"], first["refund_id"], "the same out_refund_no is the same refund");
    let (status, body, _) = caller.call("POST", "/v3/refund/domestic/refunds", Some(refund("RF2", 800))).await;
    assert_eq!((status, json_of(&body)["code"].as_str()), (400, Some("INVALID_REQUEST")), "more than paid");
    let (status, body, signed) = caller.call("GET", "/v3/refund/domestic/refunds/RF1", None).await;
    assert_eq!((status, signed, json_of(&body)["out_trade_no"].as_str()), (200, true, Some("WX0000000001")));
    let (status, body, _) = caller.call("GET", "/v3/refund/domestic/refunds/RF9", None).await;
    assert_eq!((status, json_of(&body)["code"].as_str()), (404, Some("RESOURCE_NOT_EXISTS")));
    let received = wait_for(&inbox, 2).await;
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
    let key = std::fs::read_to_string(sim.dir.join("api_v2_key")).unwrap();
    let mut fields: std::collections::BTreeMap<String, String> = [
        ("appid", "wxd930ea5d5a258f4f"),
        ("mch_id", "1900000109"),
        ("nonce_str", "n0nce"),
        ("out_trade_no", "WX0000000002"),
        ("out_refund_no", "RF2-1"),
        ("total_fee", "1000"),
        ("refund_fee", "1000"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    fields.insert(
        "sign".into(),
        payfleet::wechat::v2::sign::sign(&fields, key.trim(), payfleet::wechat::v2::sign::SignType::Md5),
    );
    let answer = http
        .post(format!("{}/secapi/pay/refund", sim.url))
        .body(payfleet::wechat::v2::xml::write(&fields))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let answer = payfleet::wechat::v2::xml::read(&answer).unwrap();
    assert_eq!(
        (answer["return_code"].as_str(), answer["result_code"].as_str(), answer["refund_fee"].as_str()),
        ("SUCCESS", "SUCCESS", "1000")
    );
    assert!(payfleet::wechat::v2::sign::verify(&answer, key.trim(), payfleet::wechat::v2::sign::SignType::Md5));
}
