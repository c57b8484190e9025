//! User tokens: HS256 JWTs whose `sub` is the user id. The ingress verifies them; `payctl token`
//! and the demo issue them (logging in is another service's job).

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
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims { sub: user_id.to_string(), iat: now, exp: now + self.ttl.as_secs() };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).expect("HS256 signing cannot fail")
    }

    /// The user id a valid token names.
    pub fn verify(&self, token: &str) -> Result<i64, TokenError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        data.claims
            .sub
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| TokenError::Invalid("sub is not a user id".into()))
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
        assert_eq!(k.verify(&token).unwrap(), 42);
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
        let claims = Claims { sub: "7".into(), iat: now - 1000, exp: now - 100 };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &k.encoding).unwrap();
        assert!(k.verify(&token).is_err());
    }
}
