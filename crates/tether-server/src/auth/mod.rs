//! JWT verification of connection and subscription tokens, as Centrifugo does it.
//!
//! A [`TokenVerifier`] is built once from a [`TokenConfig`] (HMAC secret, RSA and ECDSA public
//! keys in PEM, a previous HMAC secret during rotation, optional `aud`/`iss` checks) and is then
//! shared read-only by every session. The header's `alg` picks the key family; an algorithm
//! without a configured key is refused, which also defeats the "HS256 signed with the RSA public
//! key" confusion. `jsonwebtoken` checks signatures only; claims (`exp`, `nbf`, `aud`, `iss`)
//! are checked here against an injected `now`, so tests need no clock.
//!
//! Outcomes map to the protocol (compat-protocol §3.1, §3.2): [`TokenError::Invalid`] is close
//! 3500 for connect and error 103 for subscribe; [`TokenError::Expired`] is error 109.
//! The clock leeway (`client.token.leeway`, at most 30 s) defaults to 0 as in Centrifugo, and
//! a token whose `nbf` is still ahead counts as expired (the SDK then fetches a fresh token).
//!
//! With `jwks_public_endpoint` set, a token whose header carries a `kid` is verified only with
//! the JWK of that `kid` and only with the algorithms that key is pinned to (see [`jwks`]);
//! a token without `kid` uses the static keys above. An unknown `kid` is
//! [`InvalidTokenReason::UnknownKeyId`] until the background refetch brings the key in;
//! async callers can wait for it with [`TokenVerifier::ensure_key`] first.
//!
//! Rotation of the HMAC secret: `hmac_previous_secret_key` is accepted beside the current one
//! until `hmac_previous_secret_key_valid_until` (unix seconds, exclusive).
//!
//! [`TokenConfig`] is defined here (private `config` submodule) and re-exported by the
//! top-level `config` module, which validates it; `auth` imports nothing from that module.

mod config;
pub mod jwks;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

pub use config::TokenConfig;
pub(crate) use config::redacted;
use jwks::{JwkKey, JwksCache};

/// Verifies tokens against one key set. Cheap to share behind an `Arc`; never mutated.
pub struct TokenVerifier {
    /// Current HMAC secret; `None` refuses HS* tokens.
    hmac: Option<DecodingKey>,
    /// Rotated-out HMAC secret and the unix second until which it is still accepted.
    hmac_previous: Option<(DecodingKey, i64)>,
    /// RSA public key; `None` refuses RS* tokens.
    rsa: Option<DecodingKey>,
    /// ECDSA public key; `None` refuses ES* tokens.
    ecdsa: Option<DecodingKey>,
    /// Required `aud` member, if configured.
    audience: Option<String>,
    /// Required `iss`, if configured.
    issuer: Option<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf` (validated to at most 30).
    leeway: i64,
    /// Keys by `kid` from `jwks_public_endpoint`, for tokens that carry a `kid`.
    jwks: Option<JwksCache>,
}

/// A key in the config could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    /// `rsa_public_key` is not a PEM RSA public key.
    #[error("invalid rsa public key: {0}")]
    RsaPublicKey(String),
    /// `ecdsa_public_key` is not a PEM P-256 or P-384 public key.
    #[error("invalid ecdsa public key: {0}")]
    EcdsaPublicKey(String),
    /// `jwks_public_endpoint` is not an `http://` URL.
    #[error("{0}")]
    JwksEndpoint(String),
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Bad signature, malformed, wrong audience, ... Connect: close 3500; subscribe: error 103.
    #[error("invalid token: {0}")]
    Invalid(InvalidTokenReason),
    /// `exp` has passed (or `nbf` is ahead): error 109, the SDK refreshes the token.
    #[error("token expired")]
    Expired,
}

/// Detail of [`TokenError::Invalid`], for logs only (clients see one code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTokenReason {
    /// Not three base64url parts, or the header is not JSON.
    #[error("malformed token")]
    Malformed,
    /// `alg` is `none`, PS*, EdDSA or unknown.
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    /// `alg` is supported but no key of its family is configured.
    #[error("no key configured for the token's algorithm")]
    AlgorithmNotConfigured,
    /// The signature does not verify with any configured key.
    #[error("signature mismatch")]
    BadSignature,
    /// The claims are not JSON of the expected shape.
    #[error("malformed claims")]
    BadClaims,
    /// `b64info` or `b64data` is not base64.
    #[error("malformed base64 claim")]
    BadBase64,
    /// An audience is required and the token's `aud` does not contain it.
    #[error("audience mismatch")]
    AudienceMismatch,
    /// An issuer is required and the token's `iss` differs.
    #[error("issuer mismatch")]
    IssuerMismatch,
    /// A connection token carries a `channel` claim (only subscription tokens may).
    #[error("connection token has a channel claim")]
    ChannelInConnectionToken,
    /// A subscription token lacks the `channel` claim.
    #[error("subscription token has no channel claim")]
    MissingChannel,
    /// The token's `kid` is not in the JWK set (yet: a refetch has been requested).
    #[error("unknown key id")]
    UnknownKeyId,
    /// The token's `alg` is not the one its JWK is pinned to.
    #[error("algorithm does not match the key")]
    KeyAlgorithmMismatch,
}

/// Verified claims of a connection token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectClaims {
    /// User ID; empty = anonymous.
    pub sub: String,
    /// `exp`, unix seconds.
    pub exp: Option<i64>,
    /// `expire_at`: when present it decides connection expiry instead of `exp` (0 = never).
    pub expire_at: Option<i64>,
    /// Connection info: raw JSON of `info`, or the decoded bytes of `b64info`.
    pub info: Option<Bytes>,
    /// Server-side subscriptions (`channels`).
    pub channels: Vec<String>,
    /// Server-side subscriptions with options (`subs`).
    pub subs: HashMap<String, SubscribeOptions>,
    /// Raw JSON of `meta`, never shown to clients.
    pub meta: Option<Bytes>,
}

/// Options of one server-side subscription from a connection token's `subs`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscribeOptions {
    /// Channel info: raw JSON of `info`, or decoded `b64info`.
    pub info: Option<Bytes>,
    /// Data for the subscribe push: raw JSON of `data`, or decoded `b64data`.
    pub data: Option<Bytes>,
    /// Per-subscription overrides of namespace options.
    pub override_: Option<SubscribeOverride>,
}

/// Overrides of namespace options carried in a token (`{"presence": {"value": true}}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscribeOverride {
    /// Overrides `presence`.
    pub presence: Option<bool>,
    /// Overrides `join_leave`.
    pub join_leave: Option<bool>,
    /// Overrides `force_push_join_leave`.
    pub force_push_join_leave: Option<bool>,
    /// Overrides `force_recovery`.
    pub force_recovery: Option<bool>,
    /// Overrides `force_positioning`.
    pub force_positioning: Option<bool>,
}

/// Verified claims of a subscription token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscribeClaims {
    /// User ID; must equal the connection's user (checked by the caller).
    pub sub: String,
    /// Channel; must equal the subscribed channel (checked by the caller).
    pub channel: String,
    /// Channel info: raw JSON of `info`, or decoded `b64info`.
    pub info: Option<Bytes>,
    /// Data for the subscribe result: raw JSON of `data`, or decoded `b64data`.
    pub data: Option<Bytes>,
    /// `exp`, unix seconds.
    pub exp: Option<i64>,
    /// `expire_at`: when present it decides subscription expiry instead of `exp` (0 = never).
    pub expire_at: Option<i64>,
    /// Legacy `client`: when set it must equal the connection's client id.
    pub client: Option<String>,
    /// Overrides of namespace options.
    pub override_: Option<SubscribeOverride>,
}

/// A token could not be signed (`tether gentoken`, tests).
#[derive(Debug, thiserror::Error)]
pub enum SignTokenError {
    /// The HMAC secret is empty.
    #[error("no hmac secret key configured")]
    NoSecret,
    /// The JWT library refused the claims.
    #[error("cannot sign token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

// === impl TokenVerifier ===

impl TokenVerifier {
    /// Builds a verifier from the configured keys. No key at all is fine: every token is then
    /// refused as [`InvalidTokenReason::AlgorithmNotConfigured`].
    pub fn new(cfg: &TokenConfig) -> Result<Self, AuthConfigError> {
        Self::with_jwks_timing(cfg, jwks::JwksTiming::default())
    }

    /// Checks the keys and the JWKS endpoint of `cfg` like [`TokenVerifier::new`], without
    /// starting the JWKS refresh task (config validation builds no verifier).
    pub fn check_config(cfg: &TokenConfig) -> Result<(), AuthConfigError> {
        let without_jwks = TokenConfig {
            jwks_public_endpoint: String::new(),
            ..cfg.clone()
        };
        Self::new(&without_jwks)?;
        if !cfg.jwks_public_endpoint.is_empty() {
            jwks::check_endpoint(&cfg.jwks_public_endpoint)
                .map_err(|e| AuthConfigError::JwksEndpoint(e.to_string()))?;
        }
        Ok(())
    }

    pub(crate) fn with_jwks_timing(
        cfg: &TokenConfig,
        timing: jwks::JwksTiming,
    ) -> Result<Self, AuthConfigError> {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let rsa = match non_empty(&cfg.rsa_public_key) {
            Some(pem) => Some(
                DecodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|e| AuthConfigError::RsaPublicKey(e.to_string()))?,
            ),
            None => None,
        };
        let ecdsa = match non_empty(&cfg.ecdsa_public_key) {
            Some(pem) => Some(
                DecodingKey::from_ec_pem(pem.as_bytes())
                    .map_err(|e| AuthConfigError::EcdsaPublicKey(e.to_string()))?,
            ),
            None => None,
        };
        let jwks = match non_empty(&cfg.jwks_public_endpoint) {
            Some(endpoint) => Some(
                JwksCache::with_timing(&endpoint, timing)
                    .map_err(|e| AuthConfigError::JwksEndpoint(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Self {
            hmac: non_empty(&cfg.hmac_secret_key).map(|s| DecodingKey::from_secret(s.as_bytes())),
            hmac_previous: non_empty(&cfg.hmac_previous_secret_key).map(|s| {
                (
                    DecodingKey::from_secret(s.as_bytes()),
                    cfg.hmac_previous_secret_key_valid_until,
                )
            }),
            rsa,
            ecdsa,
            audience: non_empty(&cfg.audience),
            issuer: non_empty(&cfg.issuer),
            // Validated to at most 30 s by the config.
            leeway: i64::try_from(cfg.leeway.as_secs()).unwrap_or(i64::MAX),
            jwks,
        })
    }

    /// For a token whose `kid` is not cached yet: waits for a JWK set refetch (rate-limited,
    /// shared with concurrent callers) so the sync verification that follows can pass.
    /// Returns at once when no JWKS is configured, the token has no `kid` or the key is
    /// cached. Call it before [`TokenVerifier::verify_connect`] /
    /// [`TokenVerifier::verify_subscribe`] where waiting a round trip is acceptable.
    pub async fn ensure_key(&self, token: &str) {
        let Some(jwks) = &self.jwks else {
            return;
        };
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return;
        };
        if let Some(kid) = header.kid {
            let _ = jwks.ensure(&kid).await;
        }
    }

    /// Fetches the JWK set now (startup checks, `tether checktoken`); `Ok(None)` when no
    /// endpoint is configured, else the number of usable keys.
    pub async fn refresh_jwks(&self) -> Result<Option<usize>, jwks::JwksError> {
        match &self.jwks {
            Some(jwks) => jwks.refresh().await.map(Some),
            None => Ok(None),
        }
    }

    /// Verifies a connection token at `now_unix` (seconds).
    pub fn verify_connect(&self, token: &str, now_unix: i64) -> Result<ConnectClaims, TokenError> {
        let claims = self.verify_raw(token, now_unix)?;
        if claims.channel.as_deref().is_some_and(|c| !c.is_empty()) {
            return Err(TokenError::Invalid(
                InvalidTokenReason::ChannelInConnectionToken,
            ));
        }
        check_time(&claims, now_unix, self.leeway)?;
        let subs = claims
            .subs
            .into_iter()
            .map(|(channel, raw)| Ok((channel, raw.into_options()?)))
            .collect::<Result<_, TokenError>>()?;
        Ok(ConnectClaims {
            sub: claims.sub.unwrap_or_default(),
            exp: claims.exp.map(|d| d.0),
            expire_at: claims.expire_at.map(|d| d.0),
            info: json_or_base64(claims.info, claims.b64info)?,
            channels: claims.channels,
            subs,
            meta: claims.meta.map(raw_bytes),
        })
    }

    /// Verifies a subscription token at `now_unix` (seconds). The caller checks that `channel`,
    /// `sub` and `client` match the subscription (a mismatch is close 3500).
    pub fn verify_subscribe(
        &self,
        token: &str,
        now_unix: i64,
    ) -> Result<SubscribeClaims, TokenError> {
        let claims = self.verify_raw(token, now_unix)?;
        check_time(&claims, now_unix, self.leeway)?;
        let channel = match claims.channel {
            Some(channel) if !channel.is_empty() => channel,
            _ => return Err(TokenError::Invalid(InvalidTokenReason::MissingChannel)),
        };
        Ok(SubscribeClaims {
            sub: claims.sub.unwrap_or_default(),
            channel,
            info: json_or_base64(claims.info, claims.b64info)?,
            data: json_or_base64(claims.data, claims.b64data)?,
            exp: claims.exp.map(|d| d.0),
            expire_at: claims.expire_at.map(|d| d.0),
            client: claims.client.filter(|c| !c.is_empty()),
            override_: claims.override_.map(RawOverride::into_override),
        })
    }

    /// Signature, algorithm and `aud`/`iss` checks; time checks are left to the caller so the
    /// order of outcomes matches Centrifugo's.
    fn verify_raw(&self, token: &str, now_unix: i64) -> Result<RawClaims, TokenError> {
        let invalid = TokenError::Invalid;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid(InvalidTokenReason::Malformed))?;
        let alg = header.alg;
        let jwk: Arc<JwkKey>;
        let keys: Vec<&DecodingKey> = match (&self.jwks, header.kid.as_deref()) {
            (Some(jwks), Some(kid)) => {
                jwk = jwks
                    .key(kid)
                    .ok_or(invalid(InvalidTokenReason::UnknownKeyId))?;
                if !jwk.algorithms.contains(&alg) {
                    return Err(invalid(InvalidTokenReason::KeyAlgorithmMismatch));
                }
                vec![&jwk.key]
            }
            _ => self.static_keys(alg, now_unix)?,
        };
        if keys.is_empty() {
            return Err(invalid(InvalidTokenReason::AlgorithmNotConfigured));
        }
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;

        let mut outcome = Err(invalid(InvalidTokenReason::BadSignature));
        for key in keys {
            match jsonwebtoken::decode::<RawClaims>(token, key, &validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                // Try the previous HMAC secret, if any.
                Err(err) if matches!(err.kind(), ErrorKind::InvalidSignature) => {}
                Err(err) => {
                    outcome = Err(invalid(classify(err.kind())));
                    break;
                }
            }
        }
        let claims = outcome?;
        if let Some(audience) = &self.audience
            && !claims
                .aud
                .as_ref()
                .is_some_and(|aud| aud.contains(audience))
        {
            return Err(invalid(InvalidTokenReason::AudienceMismatch));
        }
        if let Some(issuer) = &self.issuer
            && claims.iss.as_deref() != Some(issuer.as_str())
        {
            return Err(invalid(InvalidTokenReason::IssuerMismatch));
        }
        Ok(claims)
    }
}

impl TokenVerifier {
    /// The configured static keys of `alg`'s family: the header's `alg` picks the family, so
    /// an HS256 token is never checked against an RSA key's bytes.
    fn static_keys(&self, alg: Algorithm, now_unix: i64) -> Result<Vec<&DecodingKey>, TokenError> {
        Ok(match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let previous = self
                    .hmac_previous
                    .as_ref()
                    .filter(|(_, valid_until)| now_unix < *valid_until)
                    .map(|(key, _)| key);
                self.hmac.iter().chain(previous).collect()
            }
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => self.rsa.iter().collect(),
            Algorithm::ES256 | Algorithm::ES384 => self.ecdsa.iter().collect(),
            // PS*, EdDSA, and whatever the library adds later: Centrifugo accepts none of them
            // as static keys (EdDSA is available through JWKS).
            _ => {
                return Err(TokenError::Invalid(
                    InvalidTokenReason::UnsupportedAlgorithm,
                ));
            }
        })
    }
}

// Keys stay out of logs.
impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("hmac", &self.hmac.is_some())
            .field(
                "hmac_previous_valid_until",
                &self.hmac_previous.as_ref().map(|(_, t)| *t),
            )
            .field("rsa", &self.rsa.is_some())
            .field("ecdsa", &self.ecdsa.is_some())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("jwks", &self.jwks)
            .finish()
    }
}

// === impl TokenError ===

impl TokenError {
    /// True for [`TokenError::Expired`].
    pub fn is_expired(&self) -> bool {
        matches!(self, Self::Expired)
    }
}

// === impl ConnectClaims ===

impl ConnectClaims {
    /// When the connection expires: `expire_at` if present (0 = never), else `exp`.
    pub fn expires_at(&self) -> Option<i64> {
        effective_expiry(self.exp, self.expire_at)
    }
}

// === impl SubscribeClaims ===

impl SubscribeClaims {
    /// When the subscription expires: `expire_at` if present (0 = never), else `exp`.
    pub fn expires_at(&self) -> Option<i64> {
        effective_expiry(self.exp, self.expire_at)
    }
}

/// Signs `claims` as an HS256 JWT with `secret` (for `tether gentoken` and tests).
pub fn sign_hs256(secret: &str, claims: &serde_json::Value) -> Result<String, SignTokenError> {
    if secret.is_empty() {
        return Err(SignTokenError::NoSecret);
    }
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

// === claims as they arrive ===

/// Every claim either token kind may carry; unknown claims are ignored.
#[derive(Debug, Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<NumericDate>,
    #[serde(default)]
    nbf: Option<NumericDate>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    expire_at: Option<NumericDate>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    b64info: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    subs: HashMap<String, RawSubscribeOptions>,
    #[serde(default)]
    meta: Option<Box<RawValue>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    client: Option<String>,
    #[serde(default, rename = "override")]
    override_: Option<RawOverride>,
}

#[derive(Debug, Deserialize)]
struct RawSubscribeOptions {
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    b64info: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default, rename = "override")]
    override_: Option<RawOverride>,
}

#[derive(Debug, Default, Deserialize)]
struct RawOverride {
    #[serde(default)]
    presence: Option<BoolValue>,
    #[serde(default)]
    join_leave: Option<BoolValue>,
    #[serde(default)]
    force_push_join_leave: Option<BoolValue>,
    #[serde(default)]
    force_recovery: Option<BoolValue>,
    #[serde(default)]
    force_positioning: Option<BoolValue>,
}

/// `{"value": true}`; a missing `value` is false, as in Centrifugo.
#[derive(Debug, Deserialize)]
struct BoolValue {
    #[serde(default)]
    value: bool,
}

/// `aud` is a string or a list of strings (RFC 7519 §4.1.3).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Unix seconds; fractional values are truncated, as JWT libraries generally accept them.
#[derive(Clone, Copy, Debug)]
struct NumericDate(i64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = serde_json::Number::deserialize(deserializer)?;
        number
            .as_i64()
            .or_else(|| number.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(NumericDate)
            .ok_or_else(|| serde::de::Error::custom("numeric date out of range"))
    }
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Self::One(aud) => aud == wanted,
            Self::Many(list) => list.iter().any(|aud| aud == wanted),
        }
    }
}

impl RawSubscribeOptions {
    fn into_options(self) -> Result<SubscribeOptions, TokenError> {
        Ok(SubscribeOptions {
            info: json_or_base64(self.info, self.b64info)?,
            data: json_or_base64(self.data, self.b64data)?,
            override_: self.override_.map(RawOverride::into_override),
        })
    }
}

impl RawOverride {
    fn into_override(self) -> SubscribeOverride {
        let value = |v: Option<BoolValue>| v.map(|b| b.value);
        SubscribeOverride {
            presence: value(self.presence),
            join_leave: value(self.join_leave),
            force_push_join_leave: value(self.force_push_join_leave),
            force_recovery: value(self.force_recovery),
            force_positioning: value(self.force_positioning),
        }
    }
}

/// `exp` must be in the future (strictly: without leeway a token is expired at its `exp`
/// second) and `nbf` not ahead of now, each give or take `leeway` seconds.
fn check_time(claims: &RawClaims, now_unix: i64, leeway: i64) -> Result<(), TokenError> {
    if claims
        .exp
        .is_some_and(|exp| exp.0.saturating_add(leeway) <= now_unix)
    {
        return Err(TokenError::Expired);
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf.0.saturating_sub(leeway) > now_unix)
    {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// The base64 variant wins when both are present, as in Centrifugo.
fn json_or_base64(
    json: Option<Box<RawValue>>,
    b64: Option<String>,
) -> Result<Option<Bytes>, TokenError> {
    match b64.filter(|s| !s.is_empty()) {
        Some(encoded) => BASE64
            .decode(encoded.as_bytes())
            .map(|bytes| Some(Bytes::from(bytes)))
            .map_err(|_| TokenError::Invalid(InvalidTokenReason::BadBase64)),
        None => Ok(json.map(raw_bytes)),
    }
}

fn raw_bytes(raw: Box<RawValue>) -> Bytes {
    Bytes::from(String::from(Box::<str>::from(raw)))
}

fn effective_expiry(exp: Option<i64>, expire_at: Option<i64>) -> Option<i64> {
    match expire_at {
        Some(at) if at > 0 => Some(at),
        Some(_) => None,
        None => exp,
    }
}

fn classify(kind: &ErrorKind) -> InvalidTokenReason {
    match kind {
        ErrorKind::Json(_) | ErrorKind::InvalidClaimFormat(_) | ErrorKind::Utf8(_) => {
            InvalidTokenReason::BadClaims
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => InvalidTokenReason::UnsupportedAlgorithm,
        ErrorKind::InvalidToken | ErrorKind::Base64(_) => InvalidTokenReason::Malformed,
        _ => InvalidTokenReason::BadSignature,
    }
}

#[cfg(test)]
mod tests;
