//! Pay passwords: hashing, verifying, and sealing them for the trip through the broker.
//!
//! The stored hash is bcrypt over the password combined with the server-side pepper
//! (`pay.password_pepper`), as seed 000's `HashPassword(password + salt)`. The combination is
//! HMAC-SHA256(pepper, password) in hex, so a long pepper is never cut off by bcrypt's 72-byte
//! limit. bcrypt costs ~75 ms of CPU at cost 10, so hashing runs on the blocking pool, never on
//! an async worker thread.
//!
//! Between the ingress and the pay-worker the password travels inside a queue message, which
//! may sit in a queue or a dead-letter queue for a while. It is sealed with AES-256-GCM under a
//! key derived from the pepper, so the broker never holds it in the clear.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::sync::Semaphore;

/// What can go wrong with a pay password.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// bcrypt refused the input or the stored hash is not a bcrypt hash.
    #[error("bcrypt: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    /// The blocking pool is gone (the runtime is shutting down).
    #[error("password hashing task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A sealed password did not open: damaged, or sealed under another pepper.
    #[error("sealed pay password does not open (ingress and worker peppers differ?)")]
    Unseal,
}

/// Hashes, verifies and seals pay passwords with the server's pepper.
#[derive(Clone)]
pub struct PasswordHasher {
    pepper: SecretString,
    cost: u32,
    /// The AES-256-GCM key for sealing, derived once from the pepper.
    seal_key: [u8; 32],
    /// bcrypt is pure CPU: more at once than there are cores only adds blocking threads (and
    /// their memory), so hashing waits for one of these.
    cores: Arc<Semaphore>,
}

impl PasswordHasher {
    pub fn new(pepper: SecretString, cost: u32) -> PasswordHasher {
        let seal_key = hmac_sha256(pepper.expose_secret().as_bytes(), b"payfleet/pay-password-seal/v1");
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PasswordHasher { pepper, cost, seal_key, cores: Arc::new(Semaphore::new(cores)) }
    }

    /// The string bcrypt sees: the password combined with the pepper.
    fn peppered(&self, password: &str) -> String {
        hex(&hmac_sha256(self.pepper.expose_secret().as_bytes(), password.as_bytes()))
    }

    /// A new bcrypt hash for `password`, computed on the blocking pool.
    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let (input, cost) = (self.peppered(password), self.cost);
        let _core = self.cores.acquire().await.expect("the semaphore is never closed");
        Ok(tokio::task::spawn_blocking(move || bcrypt::hash(input, cost)).await??)
    }

    /// Whether `password` matches `hash`, computed on the blocking pool.
    pub async fn verify(&self, password: &str, hash: &str) -> Result<bool, PasswordError> {
        let (input, hash) = (self.peppered(password), hash.to_owned());
        let _core = self.cores.acquire().await.expect("the semaphore is never closed");
        Ok(tokio::task::spawn_blocking(move || bcrypt::verify(input, &hash)).await??)
    }

    /// Encrypts a password for a queue message: base64(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, password: &str) -> String {
        let cipher = Aes256Gcm::new_from_slice(&self.seal_key).expect("a 32-byte key");
        let nonce_bytes: [u8; 12] = rand::random();
        let nonce = Nonce::from(nonce_bytes);
        let mut out = nonce_bytes.to_vec();
        out.extend(cipher.encrypt(&nonce, password.as_bytes()).expect("AES-GCM encryption of a short input"));
        BASE64.encode(out)
    }

    /// Opens what `seal` produced.
    pub fn open(&self, sealed: &str) -> Result<String, PasswordError> {
        let bytes = BASE64.decode(sealed).map_err(|_| PasswordError::Unseal)?;
        if bytes.len() < 12 + 16 {
            return Err(PasswordError::Unseal);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let nonce = Nonce::try_from(nonce).map_err(|_| PasswordError::Unseal)?;
        let cipher = Aes256Gcm::new_from_slice(&self.seal_key).expect("a 32-byte key");
        let plain = cipher.decrypt(&nonce, ciphertext).map_err(|_| PasswordError::Unseal)?;
        String::from_utf8(plain).map_err(|_| PasswordError::Unseal)
    }
}

/// A pay password has exactly six digits (seed 000).
pub fn is_well_formed(password: &str) -> bool {
    password.len() == 6 && password.bytes().all(|b| b.is_ascii_digit())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher(pepper: &str) -> PasswordHasher {
        PasswordHasher::new(SecretString::from(pepper.to_owned()), 4)
    }

    #[tokio::test]
    async fn a_hash_verifies_only_its_password_and_pepper() {
        let h = hasher("pepper-one-0123456789");
        let hash = h.hash("123456").await.unwrap();
        assert!(h.verify("123456", &hash).await.unwrap());
        assert!(!h.verify("123457", &hash).await.unwrap());
        assert!(!hasher("pepper-two-0123456789").verify("123456", &hash).await.unwrap());
        assert!(h.verify("123456", "not a hash").await.is_err());
    }

    #[test]
    fn sealing_round_trips_and_detects_tampering() {
        let h = hasher("pepper-one-0123456789");
        let sealed = h.seal("654321");
        assert_ne!(sealed, h.seal("654321"), "a fresh nonce per seal");
        assert_eq!(h.open(&sealed).unwrap(), "654321");
        assert!(hasher("pepper-two-0123456789").open(&sealed).is_err());
        let mut bytes = BASE64.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(h.open(&BASE64.encode(bytes)).is_err());
        assert!(h.open("short").is_err());
    }

    #[test]
    fn only_six_digits_are_a_pay_password() {
        assert!(is_well_formed("012345"));
        for bad in ["12345", "1234567", "12345a", "", "１２３４５６"] {
            assert!(!is_well_formed(bad), "{bad:?}");
        }
    }
}
