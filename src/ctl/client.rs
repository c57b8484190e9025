//! A small client of the HTTP API, for the demo, the benchmark and the end-to-end tests.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

/// An answer of the API: the HTTP status and the envelope.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Value,
    /// The `x-request-id` the ingress answered with.
    pub request_id: String,
    /// `Retry-After` (a 429), in seconds.
    pub retry_after: Option<u64>,
}

impl ApiResponse {
    /// The envelope's `code` (`SUCCESS`, `NOTENOUGH`, …).
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn data(&self) -> &Value {
        &self.body["data"]
    }

    /// A string field of `data`.
    pub fn field(&self, name: &str) -> &str {
        self.body["data"][name].as_str().unwrap_or("")
    }
}

#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
}

impl ApiClient {
    pub fn new(base: &str) -> ApiClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build()
            .expect("an HTTP client without TLS builds");
        ApiClient { http, base: base.trim_end_matches('/').to_owned() }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<ApiResponse> {
        let response = request.send().await.context("calling the ingress")?;
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let request_id = header("x-request-id").unwrap_or_default();
        let retry_after = header("retry-after").and_then(|v| v.parse().ok());
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(ApiResponse { status, body, request_id, retry_after })
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> anyhow::Result<ApiResponse> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    /// Posts a raw body (for malformed-JSON tests).
    pub async fn post_raw(&self, path: &str, token: Option<&str>, body: &str) -> anyhow::Result<ApiResponse> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<ApiResponse> {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    pub async fn create_order(&self, token: &str, goods_id: i64, num: i64) -> anyhow::Result<ApiResponse> {
        self.post("/api/v1/orders", Some(token), &json!({ "goods_id": goods_id, "num": num })).await
    }

    pub async fn pay_balance(
        &self,
        token: &str,
        order_no: &str,
        amount: &str,
        password: &str,
    ) -> anyhow::Result<ApiResponse> {
        let body = json!({ "order_no": order_no, "amount": amount, "pay_password": password });
        self.post("/api/v1/payment/balance/pay", Some(token), &body).await
    }

    pub async fn pay_integral(
        &self,
        token: &str,
        order_no: &str,
        points: &str,
        money: &str,
    ) -> anyhow::Result<ApiResponse> {
        let body = json!({ "order_no": order_no, "integral_amount": points, "money_amount": money });
        self.post("/api/v1/payment/integral/pay", Some(token), &body).await
    }

    pub async fn pay_money2(&self, token: &str, order_no: &str, amount: &str) -> anyhow::Result<ApiResponse> {
        self.post("/api/v1/payment/money2/pay", Some(token), &json!({ "order_no": order_no, "amount": amount })).await
    }

    pub async fn status(&self, token: &str, order_no: &str) -> anyhow::Result<ApiResponse> {
        self.get(&format!("/api/v1/payment/{order_no}/status"), Some(token)).await
    }

    /// GET /api/v1/orders/{orderNo}: the order with its payments and draws.
    pub async fn order(&self, token: &str, order_no: &str) -> anyhow::Result<ApiResponse> {
        self.get(&format!("/api/v1/orders/{order_no}"), Some(token)).await
    }

    pub async fn set_pay_password(&self, token: &str, password: &str, sms_code: &str) -> anyhow::Result<ApiResponse> {
        let body = json!({ "password": password, "confirm_password": password, "sms_code": sms_code });
        self.post("/api/v1/user/payment-password", Some(token), &body).await
    }

    /// Polls /readyz until it answers 200.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.get("/readyz", None).await {
                Ok(r) if r.status == 200 => return Ok(()),
                last if tokio::time::Instant::now() >= deadline => {
                    anyhow::bail!("the ingress is not ready after {within:?}: {last:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}
