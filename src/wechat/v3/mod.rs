//! WeChat Pay API v3: JSON bodies, SHA256withRSA signatures, AES-256-GCM notify resources.

pub mod cert;
pub mod client;
pub mod crypto;
pub mod sign;
pub mod types;
