//! WeChat Pay, both API generations: `v2` (XML, MD5 / HMAC-SHA256) and `v3` (JSON,
//! SHA256withRSA, AES-256-GCM). Amounts towards WeChat are integer fen (`Money::to_fen`).

pub mod v2;
pub mod v3;
