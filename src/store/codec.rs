//! How the domain's types are stored: each state or kind as its text spelling (`as_str`,
//! `parse`), amounts as NUMERIC. Written once here so that rows read typed values and no
//! caller compares status strings; a value the schema's CHECK would refuse fails to decode.

use rust_decimal::Decimal;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

use crate::channel::TradeType;
use crate::config::WechatApiVersion;
use crate::domain::{GoodsKind, Money, OrderStatus, PayMethod, PayType, PaymentStatus};
use crate::wechat::v2::sign::SignType;

macro_rules! stored_as_text {
    ($($ty:ty),* $(,)?) => {$(
        impl Type<Postgres> for $ty {
            fn type_info() -> PgTypeInfo {
                <&str as Type<Postgres>>::type_info()
            }

            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as Type<Postgres>>::compatible(ty)
            }
        }

        impl<'r> Decode<'r, Postgres> for $ty {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                let text = <&str as Decode<Postgres>>::decode(value)?;
                <$ty>::parse(text).ok_or_else(|| format!("{text:?} is no {}", stringify!($ty)).into())
            }
        }

        impl Encode<'_, Postgres> for $ty {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }
    )*};
}

stored_as_text!(OrderStatus, PaymentStatus, PayMethod, PayType, GoodsKind, TradeType, WechatApiVersion, SignType);

impl Type<Postgres> for Money {
    fn type_info() -> PgTypeInfo {
        <Decimal as Type<Postgres>>::type_info()
    }
}

impl<'r> Decode<'r, Postgres> for Money {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let amount = <Decimal as Decode<Postgres>>::decode(value)?;
        Money::from_decimal(amount).map_err(|e| format!("{amount} is no amount: {e}").into())
    }
}

impl Encode<'_, Postgres> for Money {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Decimal as Encode<Postgres>>::encode(self.as_decimal(), buf)
    }
}
