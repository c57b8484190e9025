//! Bearer tokens: HS256 JWTs. A user's names the user id in `sub`; an operator's names the
//! operator in `sub` and carries `role: "operator"`, so neither passes for the other. The
//! ingress verifies them; `payctl token` and the demo issue them (logging in is another
//! service's job).

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user id, as a string (RFC 7519 makes `sub` a string).
    sub: String,
    iat: u64,
    exp: u64,
    /// `operator` for an operator's token; absent for a user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
}

const OPERATOR_ROLE: &str = "operator";

/// Who a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bearer {
    User(i64),
    /// An operator, by name (`/admin/v1/…`).
    Operator(String),
}

/// An operator's name: 1 to 64 lowercase letters, digits, '.', '_' or '-' (it goes into logs).
pub fn is_operator_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Bad signature, expired, malformed, or a `sub` that is not a user id.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// One HS256 key, both ways, and how long its tokens live.
#[derive(Clone)]
struct Key {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl Key {
    fn new(secret: &SecretString, ttl: Duration) -> Key {
        let bytes = secret.expose_secret().as_bytes();
        Key { encoding: EncodingKey::from_secret(bytes), decoding: DecodingKey::from_secret(bytes), ttl }
    }
}

/// The keys for issuing and verifying tokens: the users' key, and the operators' own (without
/// it no operator token is issued or accepted).
#[derive(Clone)]
pub struct TokenKeys {
    users: Key,
    operators: Option<Key>,
    validation: Validation,
}

impl TokenKeys {
    pub fn new(secret: &SecretString, ttl: Duration) -> TokenKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 30;
        TokenKeys { users: Key::new(secret, ttl), operators: None, validation }
    }

    /// Accepts and issues operator tokens, signed with `secret` alone.
    pub fn with_operators(self, secret: &SecretString, ttl: Duration) -> TokenKeys {
        TokenKeys { operators: Some(Key::new(secret, ttl)), ..self }
    }

    pub fn has_operators(&self) -> bool {
        self.operators.is_some()
    }

    pub fn issue(&self, user_id: i64) -> String {
        sign(&self.users, user_id.to_string(), None)
    }

    /// An operator's token (`name` checked by `is_operator_name`); None without the operators'
    /// key.
    pub fn issue_operator(&self, name: &str) -> Option<String> {
        assert!(is_operator_name(name), "operator names are checked before a token is issued");
        Some(sign(self.operators.as_ref()?, name.to_owned(), Some(OPERATOR_ROLE.to_owned())))
    }

    /// Who a valid token names: a user's token is signed with the users' key and has no role,
    /// an operator's with the operators' key and the operator role; nothing else passes.
    pub fn verify(&self, token: &str) -> Result<Bearer, TokenError> {
        let as_user = decode::<Claims>(token, &self.users.decoding, &self.validation);
        if let Ok(data) = as_user {
            if data.claims.role.is_some() {
                return Err(TokenError::Invalid("a role under the users' key".into()));
            }
            return data
                .claims
                .sub
                .parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .map(Bearer::User)
                .ok_or_else(|| TokenError::Invalid("sub is not a user id".into()));
        }
        let user_error = as_user.err().map(|e| e.to_string()).unwrap_or_default();
        let Some(operators) = &self.operators else { return Err(TokenError::Invalid(user_error)) };
        let data = decode::<Claims>(token, &operators.decoding, &self.validation)
            .map_err(|_| TokenError::Invalid(user_error))?;
        match data.claims.role.as_deref() {
            Some(OPERATOR_ROLE) if is_operator_name(&data.claims.sub) => Ok(Bearer::Operator(data.claims.sub)),
            _ => Err(TokenError::Invalid("the operators' key signs operator tokens only".into())),
        }
    }
}

fn sign(key: &Key, sub: String, role: Option<String>) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims { sub, iat: now, exp: now + key.ttl.as_secs(), role };
    encode(&Header::new(Algorithm::HS256), &claims, &key.encoding).expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(&SecretString::from(secret.to_owned()), Duration::from_secs(60))
    }

    #[test]
    fn a_token_names_its_user_and_only_verifies_under_its_key() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let token = k.issue(42);
        assert_eq!(k.verify(&token).unwrap(), Bearer::User(42));
        assert!(keys("another-secret-another-secret-xx").verify(&token).is_err());
        assert!(k.verify("not.a.token").is_err());
        let mut tampered = token.clone();
        tampered.pop();
        assert!(k.verify(&tampered).is_err());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims { sub: "7".into(), iat: now - 1000, exp: now - 100, role: None };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &k.users.encoding).unwrap();
        assert!(k.verify(&token).is_err());
    }

    #[test]
    fn an_operator_token_names_an_operator_and_never_a_user() {
        let users_only = keys("0123456789abcdef0123456789abcdef");
        assert_eq!(users_only.issue_operator("ops.alice"), None, "no operators' key, no operator token");
        let k = users_only.with_operators(
            &SecretString::from("operators-key-operators-key-0123".to_owned()),
            Duration::from_secs(60),
        );
        let token = k.issue_operator("ops.alice").unwrap();
        assert_eq!(k.verify(&token).unwrap(), Bearer::Operator("ops.alice".into()));
        assert!(keys("0123456789abcdef0123456789abcdef").verify(&token).is_err(), "not under the users' key");
        let now = jsonwebtoken::get_current_timestamp();
        let signed = |key: &Key, sub: &str, role: Option<&str>| {
            let claims = Claims { sub: sub.into(), iat: now, exp: now + 60, role: role.map(str::to_owned) };
            encode(&Header::new(Algorithm::HS256), &claims, &key.encoding).unwrap()
        };
        let operators = k.operators.clone().unwrap();
        assert!(
            k.verify(&signed(&k.users, "ops.alice", Some("operator"))).is_err(),
            "whoever issues user tokens issues no operator's"
        );
        assert!(k.verify(&signed(&operators, "42", None)).is_err(), "the operators' key makes no user");
        assert!(k.verify(&signed(&operators, "Ops Alice", Some("operator"))).is_err(), "operator names are plain");
        assert!(!is_operator_name("") && !is_operator_name(&"a".repeat(65)));
    }
}
