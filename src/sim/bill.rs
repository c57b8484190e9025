//! The simulator's trade bill (docs/wechat-pay.md §3.11): `GET /v3/bill/tradebill` answers a
//! signed `{hash_type, hash_value, download_url}`; the download (Authorization required, the file
//! itself unsigned) is WeChat's CSV: UTF-8 with BOM, CRLF, backtick-prefixed fields, a summary.
//! wechat-sim serves bills uncompressed (`tar_type=GZIP` is refused).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha1::{Digest, Sha1};
use time::{Date, OffsetDateTime, UtcOffset};

use super::Sim;
use super::v3::{Signed, error, ok_json};
use crate::domain::Money;

const HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
const SUMMARY: &str = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额";

fn beijing(t: OffsetDateTime) -> OffsetDateTime {
    t.to_offset(UtcOffset::from_hms(8, 0, 0).expect("a valid offset"))
}

fn yuan(fen: i64) -> String {
    Money::from_fen(fen).map(|m| m.to_string()).unwrap_or_default()
}

fn row(fields: &[String]) -> String {
    let mut line = fields.iter().map(|f| format!("`{f}")).collect::<Vec<_>>().join(",");
    line.push_str("\r\n");
    line
}

/// The bill of one Beijing-time day: payments made and refunds applied that day.
fn bill(sim: &Sim, date: Date) -> Option<Vec<u8>> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let (appid, mchid) = (sim.keys.appid.clone(), sim.keys.mchid.clone());
    let mut lines = Vec::new();
    let (mut count, mut paid_sum, mut refund_sum, mut total_sum) = (0, 0, 0, 0);
    for order in sim.orders.lock().expect("orders lock").values() {
        let Some(at) = order.success_time.map(beijing).filter(|t| t.date() == date) else { continue };
        let paid = order.paid_total.unwrap_or(order.total);
        count += 1;
        paid_sum += paid;
        total_sum += paid;
        lines.push(row(&[
            at.format(&format).unwrap_or_default(),
            appid.clone(),
            mchid.clone(),
            "0".into(),
            String::new(),
            order.transaction_id.clone().unwrap_or_default(),
            order.out_trade_no.clone(),
            order.openid.clone().unwrap_or_default(),
            order.trade_type.as_str().replace("H5", "MWEB"),
            "SUCCESS".into(),
            "OTHERS".into(),
            "CNY".into(),
            yuan(paid),
            "0.00".into(),
            "0".into(),
            "0".into(),
            "0.00".into(),
            "0.00".into(),
            String::new(),
            String::new(),
            order.description.clone(),
            String::new(),
            "0.00000".into(),
            "0.00%".into(),
            yuan(paid),
            "0.00".into(),
            String::new(),
        ]));
    }
    let now = OffsetDateTime::now_utc();
    for refund in sim.refunds.lock().expect("refunds lock").values() {
        let at = beijing(refund.created_at);
        if at.date() != date {
            continue;
        }
        count += 1;
        refund_sum += refund.refund;
        lines.push(row(&[
            at.format(&format).unwrap_or_default(),
            appid.clone(),
            mchid.clone(),
            "0".into(),
            String::new(),
            refund.transaction_id.clone(),
            refund.out_trade_no.clone(),
            String::new(),
            String::new(),
            "REFUND".into(),
            "OTHERS".into(),
            "CNY".into(),
            "0.00".into(),
            "0.00".into(),
            refund.refund_id.clone(),
            refund.out_refund_no.clone(),
            yuan(refund.refund),
            "0.00".into(),
            "ORIGINAL".into(),
            refund.status_at(now).as_str().into(),
            String::new(),
            String::new(),
            "0.00000".into(),
            "0.00%".into(),
            "0.00".into(),
            yuan(refund.refund),
            String::new(),
        ]));
    }
    if count == 0 {
        return None;
    }
    lines.sort();
    let mut file = String::from("\u{feff}");
    file.push_str(HEADER);
    file.push_str("\r\n");
    lines.iter().for_each(|l| file.push_str(l));
    file.push_str(SUMMARY);
    file.push_str("\r\n");
    file.push_str(&row(&[
        format!("{count}.0"),
        yuan(paid_sum),
        yuan(refund_sum),
        "0.00".into(),
        "0.00000".into(),
        yuan(total_sum),
        yuan(refund_sum),
    ]));
    Some(file.into_bytes())
}

pub(super) async fn tradebill(
    State(sim): State<Arc<Sim>>,
    Query(query): Query<HashMap<String, String>>,
    signed: Signed,
) -> Response {
    let Signed { path, headers, .. } = signed;
    let path = path.as_str();
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    let Some(date) = query.get("bill_date").and_then(|d| Date::parse(d, &date_format).ok()) else {
        return error(&sim, &headers, StatusCode::BAD_REQUEST, "PARAM_ERROR", "bill_date 格式错误");
    };
    if query.get("bill_type").is_some_and(|t| t != "ALL") || query.contains_key("tar_type") {
        return error(
            &sim,
            &headers,
            StatusCode::BAD_REQUEST,
            "PARAM_ERROR",
            "wechat-sim serves bill_type=ALL, uncompressed",
        );
    }
    let Some(file) = bill(&sim, date) else {
        return error(&sim, &headers, StatusCode::BAD_REQUEST, "NO_STATEMENT_EXIST", "当日无交易，账单不存在");
    };
    let hash: String = Sha1::digest(&file).iter().map(|b| format!("{b:02x}")).collect();
    let token = uuid::Uuid::new_v4().simple().to_string();
    sim.bills.lock().expect("bills lock").insert(token.clone(), file);
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    sim.record("request", path, None, 200, format!("bill {date}"));
    ok_json(
        &sim,
        &headers,
        &json!({ "hash_type": "SHA1", "hash_value": hash, "download_url": format!("http://{host}/v3/billdownload/file?token={token}") }),
    )
}

/// The file itself: Authorization required, the answer not signed (as at WeChat).
pub(super) async fn download(
    State(sim): State<Arc<Sim>>,
    Query(query): Query<HashMap<String, String>>,
    signed: Signed,
) -> Response {
    let headers = signed.headers;
    let file = query.get("token").and_then(|t| sim.bills.lock().expect("bills lock").get(t).cloned());
    match file {
        Some(file) => ([("content-type", "application/octet-stream")], file).into_response(),
        None => error(&sim, &headers, StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", "下载链接无效或已过期"),
    }
}
