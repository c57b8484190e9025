//! wechat-sim: WeChat Pay (API v2 and v3) on loopback, with its own keys, for the quick start
//! and the tests. It verifies every request as WeChat does, signs its answers, and, on the
//! control API's word, makes a user pay and sends the notify with WeChat's retry schedule —
//! or a fault: a duplicate, a delay, no notify at all, a wrong amount, a forged signature, a
//! stale timestamp, a replayed notify. Refunds settle a moment after they are accepted, each
//! with its own notify, or under a refund fault late, abnormal, closed or unannounced. It
//! records what it received and sent.

mod bill;
mod control;
pub mod keys;
mod mp;
mod notifier;
mod refund;
mod v2;
mod v3;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::channel::{RefundState, TradeState, TradeType};
use keys::SimKeys;

/// How the simulator runs.
#[derive(Clone, Debug, clap::Args)]
pub struct SimArgs {
    /// Where it listens.
    #[arg(long, default_value = "127.0.0.1:9180")]
    pub listen: SocketAddr,
    /// Keys live here (created if missing), with payfleet.env: the fleet's settings for them.
    #[arg(long, default_value = "target/wechat-sim")]
    pub state_dir: PathBuf,
    #[arg(long, default_value = "wxd930ea5d5a258f4f")]
    pub appid: String,
    #[arg(long, default_value = "1900000109")]
    pub mchid: String,
    /// The delays between notify attempts (WeChat's own: 15s 15s 30s 3m 10m 20m 30m 30m 30m 60m
    /// 3h 3h 3h 6h 6h).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "15000,15000,30000,180000,600000,1200000,1800000,1800000,1800000,3600000,10800000,10800000,10800000,21600000,21600000"
    )]
    pub notify_schedule_ms: Vec<u64>,
}

/// Which API generation created an order (its notify speaks the same one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    V2,
    V3,
}

/// An order as WeChat holds it.
#[derive(Clone, Debug, Serialize)]
pub struct SimOrder {
    pub api: Api,
    /// v2: the sign type the order was created with (its notify uses it, without saying so).
    pub v2_sign_type: Option<String>,
    /// v3: the merchant named WeChat's public key (`Wechatpay-Serial: PUB_KEY_ID_…`), so its
    /// notifies are signed with that key; otherwise with the platform certificate's.
    pub public_key_mode: bool,
    pub appid: String,
    pub mchid: String,
    pub out_trade_no: String,
    pub description: String,
    pub total: i64,
    pub trade_type: TradeType,
    pub openid: Option<String>,
    pub notify_url: String,
    pub prepay_id: String,
    pub state: TradeState,
    pub transaction_id: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub success_time: Option<OffsetDateTime>,
    /// What the user actually paid (differs from `total` only under the wrong-amount fault).
    pub paid_total: Option<i64>,
}

/// An order a prepay asks for.
pub struct NewOrder {
    pub api: Api,
    pub v2_sign_type: Option<String>,
    pub public_key_mode: bool,
    pub appid: String,
    pub mchid: String,
    pub out_trade_no: String,
    pub description: String,
    pub total: i64,
    pub trade_type: TradeType,
    pub openid: Option<String>,
    pub notify_url: String,
}

/// Why an order cannot be opened or closed; each API generation has its own code for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// Already paid.
    Paid,
    /// Closed.
    Closed,
    /// The out_trade_no was used with other parameters.
    Used,
    /// No such order.
    Missing,
}

/// A refund as WeChat holds it: accepted PROCESSING, it settles at `settles_at` as `outcome`.
#[derive(Clone, Debug, Serialize)]
pub struct SimRefund {
    pub refund_id: String,
    pub out_refund_no: String,
    pub out_trade_no: String,
    pub transaction_id: String,
    /// Fen.
    pub refund: i64,
    pub total: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it stops being PROCESSING: the merchant sees its outcome from then on, and its
    /// notify leaves then.
    #[serde(with = "time::serde::rfc3339")]
    pub settles_at: OffsetDateTime,
    /// SUCCESS, ABNORMAL or CLOSED (refund faults choose the latter two).
    pub outcome: RefundState,
    /// False under the `never` fault: it settles, but only a query tells the merchant.
    pub notify: bool,
    pub notify_url: Option<String>,
    /// The API generation of the trade; its refund notify speaks the same one.
    pub api: Api,
    pub public_key_mode: bool,
}

impl SimRefund {
    /// Where the refund stands at `at`.
    pub fn status_at(&self, at: OffsetDateTime) -> RefundState {
        if at < self.settles_at { RefundState::Processing } else { self.outcome }
    }

    /// When the payer had the money back, if they have by `at`.
    pub fn success_time_at(&self, at: OffsetDateTime) -> Option<OffsetDateTime> {
        (self.status_at(at) == RefundState::Success).then_some(self.settles_at)
    }
}

/// One thing the simulator received or sent.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `request` (merchant → WeChat) or `notify` (WeChat → merchant).
    pub kind: &'static str,
    pub endpoint: String,
    pub out_trade_no: Option<String>,
    /// The HTTP status answered (requests) or received (notifies); 0 when unreachable.
    pub status: u16,
    pub detail: String,
}

pub struct Sim {
    pub keys: SimKeys,
    pub orders: Mutex<HashMap<String, SimOrder>>,
    pub refunds: Mutex<HashMap<String, SimRefund>>,
    /// Refund faults by out_trade_no, set by the control API; they shape the trade's refunds
    /// created while set.
    refund_faults: Mutex<HashMap<String, refund::Fault>>,
    /// Bill files by download token.
    bills: Mutex<HashMap<String, Vec<u8>>>,
    /// The current access token and when it expires.
    access_token: Mutex<Option<(String, OffsetDateTime)>>,
    /// Shipping uploads per out_trade_no (the first, and one re-shipment).
    shipments: Mutex<HashMap<String, u32>>,
    /// Request nonces seen (an `Authorization` replayed with the same nonce is refused).
    nonces: Mutex<HashSet<String>>,
    pub records: Mutex<Vec<Record>>,
    /// Notifies sent, by out_trade_no: the last body and headers (for the replay fault).
    sent: Mutex<HashMap<String, notifier::Sent>>,
    schedule: Vec<Duration>,
    http: reqwest::Client,
    seq: AtomicU64,
}

impl Sim {
    pub fn record(&self, kind: &'static str, endpoint: &str, out_trade_no: Option<&str>, status: u16, detail: String) {
        self.records.lock().expect("records lock").push(Record {
            at: OffsetDateTime::now_utc(),
            kind,
            endpoint: endpoint.to_owned(),
            out_trade_no: out_trade_no.map(str::to_owned),
            status,
            detail,
        });
    }

    /// A fresh id with WeChat's shape (`wx…` prepay ids, `4200…` transaction ids).
    fn next_id(&self, prefix: &str) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let now = OffsetDateTime::now_utc();
        format!(
            "{prefix}{:04}{:02}{:02}{:010}{:06}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.unix_timestamp() % 10_000_000_000,
            n
        )
    }

    /// Opens an order, or finds the same one again (same total and trade type, as WeChat allows
    /// for a repeated out_trade_no); answers its prepay id.
    fn open_order(&self, new: NewOrder) -> Result<String, Conflict> {
        let mut orders = self.orders.lock().expect("orders lock");
        match orders.get(&new.out_trade_no) {
            Some(o) if o.state.was_paid() => Err(Conflict::Paid),
            Some(o) if o.state == TradeState::Closed => Err(Conflict::Closed),
            Some(o) if o.total != new.total || o.trade_type != new.trade_type => Err(Conflict::Used),
            Some(o) => Ok(o.prepay_id.clone()),
            None => {
                let prepay_id = self.next_id("wx");
                let order = SimOrder {
                    api: new.api,
                    v2_sign_type: new.v2_sign_type,
                    public_key_mode: new.public_key_mode,
                    appid: new.appid,
                    mchid: new.mchid,
                    out_trade_no: new.out_trade_no.clone(),
                    description: new.description,
                    total: new.total,
                    trade_type: new.trade_type,
                    openid: new.openid,
                    notify_url: new.notify_url,
                    prepay_id: prepay_id.clone(),
                    state: TradeState::Notpay,
                    transaction_id: None,
                    success_time: None,
                    paid_total: None,
                };
                orders.insert(new.out_trade_no, order);
                Ok(prepay_id)
            }
        }
    }

    /// Closes an unpaid order (closing a closed one again is fine).
    fn close_order(&self, out_trade_no: &str) -> Result<(), Conflict> {
        let mut orders = self.orders.lock().expect("orders lock");
        match orders.get_mut(out_trade_no) {
            None => Err(Conflict::Missing),
            Some(o) if o.state.was_paid() => Err(Conflict::Paid),
            Some(o) => {
                o.state = TradeState::Closed;
                Ok(())
            }
        }
    }

    /// Remembers a request nonce; false if it was seen before.
    fn fresh_nonce(&self, nonce: &str) -> bool {
        self.nonces.lock().expect("nonces lock").insert(nonce.to_owned())
    }
}

/// Runs the simulator on `listener` until `stop`.
pub async fn run(args: SimArgs, listener: tokio::net::TcpListener, stop: CancellationToken) -> anyhow::Result<()> {
    let keys = SimKeys::load_or_create(&args.state_dir, &args.appid, &args.mchid)?;
    let sim = Arc::new(Sim {
        keys,
        orders: Mutex::default(),
        refunds: Mutex::default(),
        refund_faults: Mutex::default(),
        bills: Mutex::default(),
        access_token: Mutex::default(),
        shipments: Mutex::default(),
        nonces: Mutex::default(),
        records: Mutex::default(),
        sent: Mutex::default(),
        schedule: args.notify_schedule_ms.iter().map(|ms| Duration::from_millis(*ms)).collect(),
        http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?,
        seq: AtomicU64::new(1),
    });
    let app = Router::new()
        .route("/v3/pay/transactions/{kind}", post(v3::prepay))
        .route("/v3/pay/transactions/out-trade-no/{no}", get(v3::query))
        .route("/v3/pay/transactions/out-trade-no/{no}/close", post(v3::close))
        .route("/pay/unifiedorder", post(v2::unifiedorder))
        .route("/pay/orderquery", post(v2::orderquery))
        .route("/pay/closeorder", post(v2::closeorder))
        .route("/v3/refund/domestic/refunds", post(refund::create))
        .route("/v3/refund/domestic/refunds/{no}", get(refund::query))
        .route("/secapi/pay/refund", post(refund::v2_refund))
        .route("/pay/refundquery", post(refund::v2_query))
        .route("/v3/bill/tradebill", get(bill::tradebill))
        .route("/v3/billdownload/file", get(bill::download))
        .route("/cgi-bin/token", get(mp::token))
        .route("/cgi-bin/stable_token", post(mp::stable_token))
        .route("/wxa/sec/order/upload_shipping_info", post(mp::upload_shipping_info))
        .merge(control::router())
        .with_state(sim.clone());
    let addr = listener.local_addr()?;
    crate::telemetry::announce(format_args!("wechat-sim listening on http://{addr}"));
    crate::telemetry::announce(format_args!(
        "wechat-sim keys in {} (fleet settings: {})",
        sim.keys.dir.display(),
        sim.keys.dir.join("payfleet.env").display()
    ));
    tracing::info!(%addr, "wechat-sim listening");
    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await?;
    Ok(())
}
