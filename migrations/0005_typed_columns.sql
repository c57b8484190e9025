-- The columns the code reads as typed values (src/store/codec.rs) hold only the spellings it
-- writes: a value outside them would fail to decode, so the database refuses it on the way in.
ALTER TABLE orders ADD CONSTRAINT orders_pay_type_check
    CHECK (pay_type IN ('wechat', 'balance', 'integral', 'money2'));
ALTER TABLE payments ADD CONSTRAINT payments_trade_type_check
    CHECK (trade_type IN ('JSAPI', 'H5', 'NATIVE', 'APP'));
ALTER TABLE payments ADD CONSTRAINT payments_api_version_check
    CHECK (api_version IN ('v2', 'v3'));
