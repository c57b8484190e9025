//! The WeChat clients (v2 and v3) against wechat-sim: requests signed and verified both ways,
//! prepay, query, close, pay params, and notifies that verify — or, forged, do not.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use common::sim::SimHandle;
use common::{config_dir, m};
use payfleet::channel::{ChannelError, PayChannel, Prepaid, PrepayOrder, TradeState, TradeType};
use payfleet::config::Settings;
use payfleet::wechat::Wechat;
use payfleet::wechat::v3::crypto::SignedHeaders;
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
    let notify = wechat.verify_notify(&received[0].0, &received[0].1).unwrap();
    assert_eq!(notify.trade.out_trade_no, "WX0000000001");
    assert_eq!((notify.trade.trade_state, notify.trade.total_fen), (TradeState::Success, Some(1000)));
    assert_eq!((notify.trade.appid.as_str(), notify.trade.mchid.as_str()), ("wxd930ea5d5a258f4f", "1900000109"));
    assert!(notify.trade.transaction_id.is_some());
    // One byte changed anywhere in the body: refused.
    let mut tampered = received[0].1.clone();
    let i = tampered.len() / 2;
    tampered[i] ^= 1;
    assert!(wechat.verify_notify(&received[0].0, &tampered).is_err());
    assert_eq!(wechat.query("WX0000000001").await.unwrap().trade_state, TradeState::Success);
    assert_eq!(wechat.close("WX0000000001").await, Err(ChannelError::AlreadyPaid));

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
