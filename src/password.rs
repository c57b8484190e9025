//! Pay passwords: hashing, verifying, and sealing them for the trip through the broker.
//!
//! The stored hash is bcrypt over the password combined with the server-side pepper
//! (`pay.password_pepper`), as seed 000's `HashPassword(password + salt)`. The combination is
//! HMAC-SHA256(pepper, password) in hex, so a long pepper is never cut off by bcrypt's 72-byte
//! limit. bcrypt costs ~75 ms of CPU at cost 10, so hashing runs on the blocking pool, never on
//! an async worker thread.
//!
//! Between the ingress and the pay-worker the password travels inside a queue message, which
//! may sit in a queue or a dead-letter queue for a while. `Sealer` seals it with AES-256-GCM
//! under a key of its own (`pay.seal_keys`, named by its id in the sealed text, so keys rotate
//! while sealed messages wait), bound to the user and the pay request: the broker never holds
//! the password in the clear, and a sealed password copied into another message does not open.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::config::SealKeys;
use crate::domain::Money;

/// What can go wrong with a pay password.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// bcrypt refused the input or the stored hash is not a bcrypt hash.
    #[error("bcrypt: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    /// The blocking pool is gone (the runtime is shutting down).
    #[error("password hashing task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A sealed password did not open: damaged, sealed for another user or request, or with a
    /// key this process does not have.
    #[error("sealed pay password does not open (another request's, or a seal key this worker lacks?)")]
    Unseal,
}

/// Hashes and verifies pay passwords with the server's pepper.
#[derive(Clone)]
pub struct PasswordHasher {
    pepper: SecretString,
    cost: u32,
    /// bcrypt is pure CPU: more at once than there are cores only adds blocking threads (and
    /// their memory), so hashing waits for one of these.
    cores: Arc<Semaphore>,
}

impl PasswordHasher {
    pub fn new(pepper: SecretString, cost: u32) -> PasswordHasher {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PasswordHasher { pepper, cost, cores: Arc::new(Semaphore::new(cores)) }
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
}

/// Seals pay passwords for a queue message, and opens them at the pay-worker.
#[derive(Clone)]
pub struct Sealer {
    keys: Arc<SealKeys>,
}

/// The pay request a password is sealed for: it opens inside that request only, so a sealed
/// password copied into another message, or a message whose order, amount or terms were changed
/// on its way, does not open.
#[derive(Clone, Copy, Debug)]
pub struct SealedFor<'a> {
    pub user_id: i64,
    pub request_id: Uuid,
    pub order_no: &'a str,
    pub amount: Money,
    /// What the password allows: `BALANCE_TERMS` for a balance payment, a mixed payment's
    /// parts (`domain::mixed::terms`), so neither can be turned into the other or re-split.
    pub terms: &'a str,
}

/// The terms of a balance payment of the whole amount.
pub const BALANCE_TERMS: &str = "balance";

/// The AES-GCM associated data: everything the sealed password is bound to.
fn associated_data(to: &SealedFor) -> String {
    format!("payfleet/pay-password/v3/{}/{}/{}/{}/{}", to.user_id, to.request_id, to.order_no, to.amount, to.terms)
}

/// The associated data of the version before (a balance payment, no terms), which a request
/// queued by an ingress of that version still carries.
fn associated_data_v2(to: &SealedFor) -> Option<String> {
    (to.terms == BALANCE_TERMS)
        .then(|| format!("payfleet/pay-password/v2/{}/{}/{}/{}", to.user_id, to.request_id, to.order_no, to.amount))
}

impl Sealer {
    pub fn new(keys: SealKeys) -> Sealer {
        Sealer { keys: Arc::new(keys) }
    }

    /// `<key id>.<base64(nonce ‖ ciphertext ‖ tag)>`, sealed with the current key and bound to
    /// the pay request.
    pub fn seal(&self, to: &SealedFor, password: &str) -> String {
        let (id, key) = self.keys.current();
        let cipher = Aes256Gcm::new_from_slice(key).expect("a 32-byte key");
        let nonce_bytes: [u8; 12] = rand::random();
        let aad = associated_data(to);
        let sealed = cipher
            .encrypt(&Nonce::from(nonce_bytes), Payload { msg: password.as_bytes(), aad: aad.as_bytes() })
            .expect("AES-GCM encryption of a short input");
        let mut out = nonce_bytes.to_vec();
        out.extend(sealed);
        format!("{id}.{}", BASE64.encode(out))
    }

    /// Opens what `seal` produced for this pay request.
    pub fn open(&self, to: &SealedFor, sealed: &str) -> Result<String, PasswordError> {
        let (id, text) = sealed.split_once('.').ok_or(PasswordError::Unseal)?;
        let key = self.keys.get(id).ok_or(PasswordError::Unseal)?;
        let bytes = BASE64.decode(text).map_err(|_| PasswordError::Unseal)?;
        if bytes.len() < 12 + 16 {
            return Err(PasswordError::Unseal);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let nonce = Nonce::try_from(nonce).map_err(|_| PasswordError::Unseal)?;
        let cipher = Aes256Gcm::new_from_slice(key).expect("a 32-byte key");
        let open = |aad: &str| cipher.decrypt(&nonce, Payload { msg: ciphertext, aad: aad.as_bytes() }).ok();
        let plain = open(&associated_data(to))
            .or_else(|| associated_data_v2(to).and_then(|aad| open(&aad)))
            .ok_or(PasswordError::Unseal)?;
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

    fn sealer(keys: &str) -> Sealer {
        Sealer::new(SealKeys::parse(keys).unwrap())
    }

    fn request(request_id: Uuid) -> SealedFor<'static> {
        SealedFor {
            user_id: 7,
            request_id,
            order_no: "ORD1",
            amount: Money::parse("10.00").unwrap(),
            terms: BALANCE_TERMS,
        }
    }

    #[test]
    fn sealing_round_trips_and_detects_tampering() {
        let keys = SealKeys::generate("k1");
        let s = sealer(&keys);
        let to = request(Uuid::new_v4());
        let sealed = s.seal(&to, "654321");
        assert!(sealed.starts_with("k1."), "{sealed}");
        assert_ne!(sealed, s.seal(&to, "654321"), "a fresh nonce per seal");
        assert_eq!(s.open(&to, &sealed).unwrap(), "654321");
        assert!(sealer(&SealKeys::generate("k1")).open(&to, &sealed).is_err(), "another key");
        let mut bytes = BASE64.decode(&sealed[3..]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(s.open(&to, &format!("k1.{}", BASE64.encode(bytes))).is_err());
        assert!(s.open(&to, "k1.short").is_err());
        assert!(s.open(&to, "no key id").is_err());
    }

    #[test]
    fn a_sealed_password_opens_only_inside_the_request_it_was_sealed_for() {
        let s = sealer(&SealKeys::generate("k1"));
        let to = request(Uuid::new_v4());
        let sealed = s.seal(&to, "654321");
        assert!(s.open(&SealedFor { user_id: 8, ..to }, &sealed).is_err(), "another user's request");
        assert!(s.open(&SealedFor { request_id: Uuid::new_v4(), ..to }, &sealed).is_err(), "another request");
        assert!(s.open(&SealedFor { order_no: "ORD2", ..to }, &sealed).is_err(), "its order changed");
        let amount = Money::parse("10.01").unwrap();
        assert!(s.open(&SealedFor { amount, ..to }, &sealed).is_err(), "its amount changed");
        let mixed = SealedFor { terms: "mixed:balance=4.00,wechat=6.00", ..to };
        assert!(s.open(&mixed, &sealed).is_err(), "a balance payment's password made a mixed payment's");
        let sealed = s.seal(&mixed, "654321");
        assert!(s.open(&SealedFor { terms: "mixed:balance=9.00,wechat=1.00", ..to }, &sealed).is_err(), "re-split");
        assert!(s.open(&to, &sealed).is_err(), "a mixed payment's password made a balance payment's");
    }

    #[test]
    fn a_balance_password_sealed_by_the_version_before_still_opens() {
        let keys = SealKeys::generate("k1");
        let to = request(Uuid::new_v4());
        let parsed = SealKeys::parse(&keys).unwrap();
        let (id, key) = parsed.current();
        let cipher = Aes256Gcm::new_from_slice(key).unwrap();
        let aad = associated_data_v2(&to).unwrap();
        let nonce = [7u8; 12];
        let mut bytes = nonce.to_vec();
        bytes.extend(cipher.encrypt(&Nonce::from(nonce), Payload { msg: b"654321", aad: aad.as_bytes() }).unwrap());
        let sealed = format!("{id}.{}", BASE64.encode(bytes));
        assert_eq!(sealer(&keys).open(&to, &sealed).unwrap(), "654321");
        let mixed = SealedFor { terms: "mixed:balance=10.00", ..to };
        assert!(sealer(&keys).open(&mixed, &sealed).is_err(), "only for a balance payment");
    }

    #[test]
    fn a_rotated_key_still_opens_what_it_sealed() {
        let (old, new) = (SealKeys::generate("k1"), SealKeys::generate("k2"));
        let to = request(Uuid::new_v4());
        let sealed_before = sealer(&old).seal(&to, "654321");
        let rotated = sealer(&format!("{new},{old}"));
        assert_eq!(rotated.open(&to, &sealed_before).unwrap(), "654321");
        assert!(rotated.seal(&to, "654321").starts_with("k2."), "the first key seals");
        assert!(sealer(&new).open(&to, &sealed_before).is_err(), "a retired key is gone");
    }

    #[test]
    fn seal_keys_are_checked() {
        assert!(SealKeys::parse("").is_err());
        assert!(SealKeys::parse("k1:AAAA").is_err(), "not 32 bytes");
        assert!(SealKeys::parse("k1 x:AAAA").is_err());
        let one = SealKeys::generate("k1");
        assert!(SealKeys::parse(&format!("{one},{one}")).is_err(), "an id twice");
        assert!(SealKeys::parse(&format!("{one}, {}", SealKeys::generate("k2"))).is_ok());
    }

    #[test]
    fn only_six_digits_are_a_pay_password() {
        assert!(is_well_formed("012345"));
        for bad in ["12345", "1234567", "12345a", "", "１２３４５６"] {
            assert!(!is_well_formed(bad), "{bad:?}");
        }
    }
}
