//! Paying one order with several methods at once (seed 000 §6.4), validated here and made by
//! the pay-worker through `pay_call`.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use serde::Deserialize;
use time::OffsetDateTime;

use super::extract::{AuthUser, Json};
use super::fields::{check_order_no, parse_money, payment_amount};
use super::limits::{self, ClientIp, Kind};
use super::{ApiError, AppState, RequestId, Result, pay_call, payment, wechat_pay};
use crate::domain::PayMethod;
use crate::domain::mixed::{MixedPart, check_parts, terms};
use crate::mq::messages::{MixedPayRequested, PayRequested};
use crate::password::SealedFor;

#[derive(Deserialize)]
struct MixedPay {
    order_no: String,
    total_amount: String,
    payment_methods: Vec<MethodPart>,
    #[serde(default)]
    pay_password: Option<String>,
    /// With a WeChat part, as `/wechat/create` takes them.
    #[serde(default)]
    openid: Option<String>,
    #[serde(default)]
    client_ip: Option<String>,
    #[serde(default)]
    trade_type: Option<String>,
}

#[derive(Deserialize)]
struct MethodPart {
    #[serde(rename = "type")]
    method: String,
    /// Points for integral, yuan otherwise.
    amount: String,
    /// Integral: the yuan the points stand for.
    #[serde(default)]
    money_equivalent: Option<String>,
}

/// One part as the payer wrote it.
fn part(raw: &MethodPart) -> Result<MixedPart> {
    let method = PayMethod::parse(&raw.method)
        .ok_or_else(|| ApiError::validation("payment_methods[].type must be balance, integral, money2 or wechat"))?;
    let name = method.as_str();
    let amount = parse_money(&format!("the {name} part's amount"), &raw.amount)?;
    let equivalent = match &raw.money_equivalent {
        Some(yuan) => Some(parse_money(&format!("the {name} part's money_equivalent"), yuan)?),
        None => None,
    };
    Ok(match method {
        PayMethod::Integral => {
            let yuan = equivalent.ok_or_else(|| {
                ApiError::validation("the integral part needs money_equivalent: the yuan its points pay")
            })?;
            MixedPart { method, amount: yuan, asset_amount: amount }
        }
        _ => MixedPart { method, amount: equivalent.unwrap_or(amount), asset_amount: amount },
    })
}

async fn pay(
    State(app): State<AppState>,
    AuthUser(user_id): AuthUser,
    client: ClientIp,
    request_id: RequestId,
    Json(body): Json<MixedPay>,
) -> Result<Response> {
    limits::check(&app, Kind::Pay, user_id, client).await?;
    check_order_no(&body.order_no)?;
    let total = payment_amount(&app, "total_amount", &body.total_amount)?;
    let parts = body.payment_methods.iter().map(part).collect::<Result<Vec<_>>>()?;
    check_parts(total, &parts, |method| app.pay.rule(method), &app.pay.integral_rules())?;
    let sealed_password = if parts.iter().any(|p| p.method == PayMethod::Balance) {
        let terms = terms(&parts);
        let sealed_for =
            SealedFor { user_id, request_id: request_id.0, order_no: &body.order_no, amount: total, terms: &terms };
        payment::seal_password(&app, body.pay_password.as_deref(), sealed_for)?
    } else {
        None
    };
    let wechat = if parts.iter().any(|p| p.method == PayMethod::Wechat) {
        Some(wechat_pay::payer(body.trade_type.as_deref(), body.openid, body.client_ip, client)?)
    } else {
        None
    };
    let request = PayRequested::Mixed(MixedPayRequested {
        request_id: request_id.0,
        user_id,
        order_no: body.order_no,
        total,
        parts,
        sealed_password,
        wechat,
        requested_at: OffsetDateTime::now_utc(),
    });
    pay_call::pay_mixed(&app, request_id, &request).await
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/payment/mixed/pay", post(pay))
}
