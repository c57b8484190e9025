//! wechat-sim for tests: in the test process (its own port, keys in a temporary directory, a
//! quick notify schedule), or as the real binary inside a test's fleet; driven through its
//! control API.

use std::path::PathBuf;

use payfleet::sim::SimArgs;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The simulator's control API.
#[derive(Clone)]
pub struct SimControl {
    pub url: String,
    http: reqwest::Client,
}

impl SimControl {
    pub fn new(url: &str) -> SimControl {
        SimControl { url: url.to_owned(), http: reqwest::Client::new() }
    }

    /// Waits until the simulator answers (generating keys takes a moment; the bound port queues
    /// the request meanwhile).
    pub async fn wait_ready(&self) {
        let health =
            self.http.get(format!("{}/sim/health", self.url)).timeout(std::time::Duration::from_secs(60)).send().await;
        assert!(health.is_ok_and(|r| r.status() == 200), "wechat-sim did not start");
    }

    pub async fn pay(&self, out_trade_no: &str, fault: Option<&str>) -> reqwest::Response {
        let body = json!({ "out_trade_no": out_trade_no, "fault": fault, "delay_ms": 300 });
        self.http.post(format!("{}/sim/pay", self.url)).json(&body).send().await.unwrap()
    }

    /// Sends a forged notify; answers the status the merchant answered.
    pub async fn forge(&self, out_trade_no: &str, forgery: &str) -> u16 {
        let body = json!({ "out_trade_no": out_trade_no, "forgery": forgery });
        let r: Value =
            self.http.post(format!("{}/sim/forge", self.url)).json(&body).send().await.unwrap().json().await.unwrap();
        r["merchant_status"].as_u64().unwrap_or_else(|| panic!("forge failed: {r}")) as u16
    }

    /// The merchant refunds the whole order in WeChat's merchant platform: SUCCESS at once, and
    /// WeChat sends its REFUND.SUCCESS notify to `notify_url`.
    pub async fn refund(&self, out_trade_no: &str, notify_url: &str) -> reqwest::Response {
        let body = json!({ "out_trade_no": out_trade_no, "notify_url": notify_url });
        self.http.post(format!("{}/sim/refund", self.url)).json(&body).send().await.unwrap()
    }

    /// Sets (or, with `None`, clears) the refund fault of a trade: `never`, `abnormal`,
    /// `closed`, `delay` (after `delay_ms`, 3000 if `None`) or `refuse`, for its refunds asked from now on.
    pub async fn refund_fault(&self, out_trade_no: &str, fault: Option<&str>, delay_ms: Option<u64>) {
        let body = json!({ "out_trade_no": out_trade_no, "fault": fault, "delay_ms": delay_ms });
        let r = self.http.post(format!("{}/sim/refund-fault", self.url)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "refund-fault {fault:?}: {}", r.text().await.unwrap_or_default());
    }

    /// The refund requests that reached WeChat for a trade, repeats included: `refund {out_refund_no}`.
    pub async fn refund_requests(&self, out_trade_no: &str) -> Vec<String> {
        self.records(out_trade_no)
            .await
            .iter()
            .filter(|r| r["kind"] == "request")
            .filter_map(|r| r["detail"].as_str().filter(|d| d.starts_with("refund ")).map(str::to_owned))
            .collect()
    }

    pub async fn order(&self, out_trade_no: &str) -> Option<Value> {
        let r = self.http.get(format!("{}/sim/orders/{out_trade_no}", self.url)).send().await.unwrap();
        if r.status() == 200 { Some(r.json().await.unwrap()) } else { None }
    }

    /// What the simulator received and sent for a trade.
    async fn records(&self, out_trade_no: &str) -> Vec<Value> {
        let url = format!("{}/sim/records?out_trade_no={out_trade_no}", self.url);
        self.http.get(url).send().await.unwrap().json().await.unwrap()
    }

    /// The notifies sent for an order: (status the merchant answered, detail).
    pub async fn notifies(&self, out_trade_no: &str) -> Vec<(u16, String)> {
        self.records(out_trade_no)
            .await
            .iter()
            .filter(|r| r["kind"] == "notify")
            .map(|r| (r["status"].as_u64().unwrap_or(0) as u16, r["detail"].as_str().unwrap_or("").to_owned()))
            .collect()
    }
}

/// The PAYFLEET__WECHAT__… settings that point the fleet at a simulator.
pub fn fleet_env(state_dir: &std::path::Path, url: &str) -> Vec<(String, String)> {
    let env_text = std::fs::read_to_string(state_dir.join("payfleet.env")).unwrap();
    let mut env: Vec<(String, String)> =
        env_text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    env.push(("PAYFLEET__WECHAT__API_BASE".into(), url.to_owned()));
    env.push(("PAYFLEET__WECHAT__MP_API_BASE".into(), url.to_owned()));
    env
}

pub fn state_dir() -> PathBuf {
    std::env::temp_dir().join(format!("payfleet-sim-{}", uuid::Uuid::new_v4().simple()))
}

/// A simulator running in the test process.
pub struct SimHandle {
    pub control: SimControl,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    stop: CancellationToken,
}

impl SimHandle {
    /// Starts a simulator; `schedule_ms` are its notify retry delays.
    pub async fn start(schedule_ms: &[u64]) -> SimHandle {
        let dir = state_dir();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let args = SimArgs {
            listen: listener.local_addr().unwrap(),
            state_dir: dir.clone(),
            appid: "wxd930ea5d5a258f4f".into(),
            mchid: "1900000109".into(),
            notify_schedule_ms: schedule_ms.to_vec(),
        };
        let stop = CancellationToken::new();
        let stop_sim = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = payfleet::sim::run(args, listener, stop_sim).await {
                panic!("wechat-sim failed: {e:#}");
            }
        });
        let control = SimControl::new(&url);
        control.wait_ready().await;
        let env = fleet_env(&dir, &url);
        SimHandle { control, dir, env, stop }
    }
}

impl std::ops::Deref for SimHandle {
    type Target = SimControl;
    fn deref(&self) -> &SimControl {
        &self.control
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
