//! WeChat Pay API v3: JSON bodies, SHA256withRSA signatures, AES-256-GCM notify resources.

pub mod crypto;
pub mod sign;
