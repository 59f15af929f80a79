//! [`TokenConfig`]: the keys and claim checks a [`TokenVerifier`](super::TokenVerifier) is
//! built from (Centrifugo `client.token`, and `client.subscription_token` inline), with its
//! defaults and its redacting `Debug`.
//!
//! The type belongs to `auth` so that verification never reaches into the top-level `config`
//! module. That module re-exports it (`config::TokenConfig`, its historical path) and validates it:
//! the leeway cap, the rotation deadline, and key parsing through
//! [`TokenVerifier::check_config`](super::TokenVerifier::check_config).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Keys and claim checks for JWT verification (Centrifugo `client.token`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenConfig {
    /// Secret for HS256/384/512 tokens; empty disables HMAC.
    pub hmac_secret_key: String,
    /// PEM public key for RS256/384/512 tokens; empty disables RSA.
    pub rsa_public_key: String,
    /// PEM public key (P-256 or P-384) for ES256/384 tokens; empty disables ECDSA.
    pub ecdsa_public_key: String,
    /// When set, tokens must carry this value in `aud`.
    pub audience: String,
    /// When set, tokens must carry this `iss`.
    pub issuer: String,
    /// The HMAC secret being rotated out; accepted until `hmac_previous_secret_key_valid_until`.
    pub hmac_previous_secret_key: String,
    /// Unix seconds until which the previous HMAC secret is accepted; 0 = not set (required
    /// when `hmac_previous_secret_key` is set).
    pub hmac_previous_secret_key_valid_until: i64,
    /// Clock skew tolerated when checking `exp` and `nbf`, at most 30 s. Default 0, as
    /// Centrifugo: a token is expired at its `exp` second.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// URL of a JWK set (`http://host/path`) whose RSA, EC and Ed25519 public keys verify
    /// tokens that carry a `kid` header; empty disables it. Keys are cached for an hour and
    /// fetched in the background (see [`jwks`](super::jwks)).
    pub jwks_public_endpoint: String,
}

// === impl TokenConfig ===

impl TokenConfig {
    /// True when at least one verification key is set.
    pub fn has_key(&self) -> bool {
        !self.hmac_secret_key.is_empty()
            || !self.rsa_public_key.is_empty()
            || !self.ecdsa_public_key.is_empty()
            || !self.jwks_public_endpoint.is_empty()
    }
}

// Secrets stay out of logs: Debug shows whether a key is set, not the key.
impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("hmac_secret_key", &redacted(&self.hmac_secret_key))
            .field("rsa_public_key", &redacted(&self.rsa_public_key))
            .field("ecdsa_public_key", &redacted(&self.ecdsa_public_key))
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field(
                "hmac_previous_secret_key",
                &redacted(&self.hmac_previous_secret_key),
            )
            .field(
                "hmac_previous_secret_key_valid_until",
                &self.hmac_previous_secret_key_valid_until,
            )
            .field("leeway", &self.leeway)
            .field("jwks_public_endpoint", &self.jwks_public_endpoint)
            .finish()
    }
}

// === helpers ===

/// What `Debug` shows for a secret: whether it is set, never its value. Shared with the
/// top-level `config` module (the HTTP API key).
pub(crate) fn redacted(value: &str) -> &'static str {
    if value.is_empty() {
        "<empty>"
    } else {
        "<redacted>"
    }
}
