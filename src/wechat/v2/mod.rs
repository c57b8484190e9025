//! WeChat Pay API v2: XML bodies signed with MD5 or HMAC-SHA256.

pub mod client;
pub mod req_info;
pub mod sign;
pub mod xml;
