//! WeChat payments at the store's level, for the tests that drive `store::wechat` directly: a
//! create request, and a trade as WeChat would report it.

use payfleet::channel::{Trade, TradeState, TradeType};
use payfleet::domain::PayMethod;
use payfleet::mq::messages::{TradeReported, TradeSource, WechatCreateRequested};
use payfleet::store::payments::AssetPayment;
use payfleet::store::wechat::ChannelVersion;

use super::m;

/// wechat-sim's appid and mchid, the fleet's defaults.
pub const APPID: &str = "wxd930ea5d5a258f4f";
pub const MCHID: &str = "1900000109";

pub const V3: ChannelVersion = ChannelVersion { api_version: payfleet::config::WechatApiVersion::V3, sign_type: None };

/// A JSAPI create of a 10.00 order.
pub fn create_request(user: i64, order_no: &str) -> WechatCreateRequested {
    WechatCreateRequested {
        request_id: uuid::Uuid::new_v4(),
        user_id: user,
        order_no: order_no.to_owned(),
        amount: m("10.00"),
        trade_type: TradeType::Jsapi,
        openid: Some("oPayer".into()),
        client_ip: "127.0.0.1".into(),
        requested_at: time::OffsetDateTime::now_utc(),
    }
}

/// A 10.00 integral payment (100 points) of an order, as the pay-worker hands it to the store.
pub fn integral_payment(user: i64, order_no: &str) -> AssetPayment {
    AssetPayment {
        request_id: uuid::Uuid::new_v4(),
        user_id: user,
        order_no: order_no.to_owned(),
        method: PayMethod::Integral,
        amount: m("10.00"),
        asset_amount: m("100"),
        verified_hash: None,
        password_required: false,
        daily_limit: None,
    }
}

/// A notify of the trade of `pay_no` in `state`, for `total` fen, naming `appid`.
pub fn report(pay_no: &str, state: TradeState, total: i64, appid: &str) -> TradeReported {
    TradeReported {
        source: TradeSource::Notify,
        report_id: uuid::Uuid::new_v4().to_string(),
        event_type: "TRANSACTION.SUCCESS".into(),
        trade: Trade {
            appid: appid.into(),
            mchid: MCHID.into(),
            out_trade_no: pay_no.into(),
            transaction_id: Some("4200000001".into()),
            trade_state: state,
            total_fen: Some(total),
            success_time: Some(time::OffsetDateTime::now_utc()),
            payer_openid: Some("oPayer".into()),
        },
        raw: "{}".into(),
        signed: None,
    }
}
