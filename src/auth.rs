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

/// The key pair for issuing and verifying user tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl TokenKeys {
    pub fn new(secret: &SecretString, ttl: Duration) -> TokenKeys {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 30;
        TokenKeys {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            ttl,
        }
    }

    pub fn issue(&self, user_id: i64) -> String {
        self.sign(user_id.to_string(), None)
    }

    /// An operator's token (`name` checked by `is_operator_name`).
    pub fn issue_operator(&self, name: &str) -> String {
        assert!(is_operator_name(name), "operator names are checked before a token is issued");
        self.sign(name.to_owned(), Some(OPERATOR_ROLE.to_owned()))
    }

    fn sign(&self, sub: String, role: Option<String>) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims { sub, iat: now, exp: now + self.ttl.as_secs(), role };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).expect("HS256 signing cannot fail")
    }

    /// Who a valid token names.
    pub fn verify(&self, token: &str) -> Result<Bearer, TokenError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let sub = data.claims.sub;
        match data.claims.role.as_deref() {
            None => sub
                .parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .map(Bearer::User)
                .ok_or_else(|| TokenError::Invalid("sub is not a user id".into())),
            Some(OPERATOR_ROLE) if is_operator_name(&sub) => Ok(Bearer::Operator(sub)),
            Some(role) => Err(TokenError::Invalid(format!("unknown role {role:?} or operator name"))),
        }
    }
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
        let token = encode(&Header::new(Algorithm::HS256), &claims, &k.encoding).unwrap();
        assert!(k.verify(&token).is_err());
    }

    #[test]
    fn an_operator_token_names_an_operator_and_never_a_user() {
        let k = keys("0123456789abcdef0123456789abcdef");
        assert_eq!(k.verify(&k.issue_operator("ops.alice")).unwrap(), Bearer::Operator("ops.alice".into()));
        let now = jsonwebtoken::get_current_timestamp();
        let forged = |sub: &str, role: &str| {
            let claims = Claims { sub: sub.into(), iat: now, exp: now + 60, role: Some(role.into()) };
            encode(&Header::new(Algorithm::HS256), &claims, &k.encoding).unwrap()
        };
        assert!(k.verify(&forged("42", "admin")).is_err(), "an unknown role is no user");
        assert!(k.verify(&forged("Ops Alice", "operator")).is_err(), "operator names are plain");
        assert!(!is_operator_name("") && !is_operator_name(&"a".repeat(65)));
    }
}
