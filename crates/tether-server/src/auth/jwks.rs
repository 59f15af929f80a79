//! JWKS: public keys fetched from `client.token.jwks_public_endpoint`, cached by `kid`.
//!
//! Token verification is synchronous (sessions call it inline), so fetching never happens on
//! that path. A [`JwksCache`] owns a background refresh task that fetches the key set as soon
//! as a tokio runtime is available, refreshes it shortly before [`JWKS_CACHE_TTL`] runs out,
//! and refetches early when a token names a `kid` the cache does not hold — at most once per
//! [`JWKS_MIN_REFETCH_INTERVAL`], so a stream of tokens with made-up `kid`s cannot turn the
//! gateway into a load generator against the key server. Until a key is fetched, a token
//! that needs it is refused as invalid (the client reconnects or refreshes and passes once
//! the key has arrived); [`JwksCache::ensure`] lets an async caller wait for the fetch
//! instead.
//!
//! Keys are pinned to algorithms: an RSA key verifies RS256/384/512 only (or just its `alg`),
//! a P-256 key ES256, a P-384 key ES384, an Ed25519 key EdDSA. Symmetric (`oct`) keys,
//! encryption keys (`use: enc`) and keys without a `kid` are ignored: a public endpoint never
//! vouches for HMAC secrets. Keys expire with the cache: when the set could not be refreshed
//! within the hour, tokens are refused rather than verified against keys that may have been
//! revoked.
//!
//! Only `http://` endpoints are supported (no TLS client is built in); put the key server on
//! a trusted network or behind a local proxy.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::Uri;
use hyper::header::{CONNECTION, HOST};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::RwLock;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

/// Keys of a JWK set, cached by `kid` and refreshed in the background.
///
/// Dropping the cache stops its refresh task.
pub struct JwksCache {
    shared: Arc<Shared>,
    /// Cancels the refresh task when the cache (its verifier) is dropped.
    _stop: DropGuard,
}

/// One usable key of the set.
pub struct JwkKey {
    /// The verification key.
    pub(crate) key: DecodingKey,
    /// The only algorithms a token verified with this key may name.
    pub(crate) algorithms: &'static [Algorithm],
}

/// Why the JWK set could not be fetched or configured.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The endpoint is not an `http://host[:port]/path` URL.
    #[error("invalid jwks endpoint: {0}")]
    Endpoint(String),
    /// The TCP connection to the endpoint failed.
    #[error("cannot connect to the jwks endpoint")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("jwks request failed")]
    Http(#[source] hyper::Error),
    /// The response body could not be read, or exceeded [`JWKS_MAX_BODY_BYTES`].
    #[error("cannot read the jwks response body: {0}")]
    Body(String),
    /// The endpoint answered with a status other than 200.
    #[error("jwks endpoint answered with status {0}")]
    Status(u16),
    /// The whole fetch took longer than [`JWKS_FETCH_TIMEOUT`].
    #[error("jwks fetch timed out")]
    Timeout,
    /// The body is not a JWK set (`{"keys": [...]}`).
    #[error("jwks response is not a jwk set")]
    Json(#[source] serde_json::Error),
}

/// Shared between the cache handle and its refresh task.
struct Shared {
    endpoint: Endpoint,
    timing: JwksTiming,
    state: RwLock<State>,
    /// Wakes the refresh task when a token names an unknown `kid`.
    wake: tokio::sync::Notify,
    /// One fetch at a time: a burst of misses makes one request, the others wait for it.
    fetch_lock: tokio::sync::Mutex<()>,
    /// Whether the refresh task has been spawned (it needs a runtime, which the
    /// constructor may not have).
    started: AtomicBool,
    stop: CancellationToken,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, Arc<JwkKey>>,
    /// When the current `keys` were fetched; `None` before the first successful fetch.
    fetched_at: Option<Instant>,
    /// When the last fetch (successful or not) started; rate-limits refetches.
    last_attempt: Option<Instant>,
    /// A token asked for a key we do not have since the last fetch.
    miss_pending: bool,
}

/// The cache's clock settings; the `JWKS_*` constants except in tests.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JwksTiming {
    pub(crate) ttl: Duration,
    pub(crate) min_refetch_interval: Duration,
    pub(crate) refresh_ahead: Duration,
    pub(crate) fetch_timeout: Duration,
}

impl Default for JwksTiming {
    fn default() -> Self {
        Self {
            ttl: JWKS_CACHE_TTL,
            min_refetch_interval: JWKS_MIN_REFETCH_INTERVAL,
            refresh_ahead: JWKS_REFRESH_AHEAD,
            fetch_timeout: JWKS_FETCH_TIMEOUT,
        }
    }
}

/// A parsed `http://` endpoint.
#[derive(Clone, Debug)]
struct Endpoint {
    uri: Uri,
    host: String,
    port: u16,
}

// === impl JwksCache ===

impl JwksCache {
    /// Parses `endpoint` and, inside a tokio runtime, starts the refresh task (which fetches
    /// at once). Outside one, the task starts on the first lookup made inside a runtime.
    pub fn new(endpoint: &str) -> Result<Self, JwksError> {
        Self::with_timing(endpoint, JwksTiming::default())
    }

    pub(crate) fn with_timing(endpoint: &str, timing: JwksTiming) -> Result<Self, JwksError> {
        let endpoint = Endpoint::parse(endpoint)?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            endpoint,
            timing,
            state: RwLock::new(State::default()),
            wake: tokio::sync::Notify::new(),
            fetch_lock: tokio::sync::Mutex::new(()),
            started: AtomicBool::new(false),
            stop: stop.clone(),
        });
        let cache = Self {
            shared,
            _stop: stop.drop_guard(),
        };
        cache.start();
        Ok(cache)
    }

    /// The cached key `kid`, if the set is fresh and holds it. A miss (or a stale set) asks
    /// the refresh task for a refetch and returns `None` at once.
    #[must_use]
    pub fn key(&self, kid: &str) -> Option<Arc<JwkKey>> {
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        // A flood of made-up kids takes the write lock once per refetch, not once per token.
        if !self.shared.state.read().miss_pending {
            self.shared.state.write().miss_pending = true;
        }
        self.start();
        self.shared.wake.notify_one();
        None
    }

    /// Like [`JwksCache::key`], but on a miss waits for a refetch (unless one ran within
    /// [`JWKS_MIN_REFETCH_INTERVAL`]) and looks again. For async callers that would rather
    /// wait a round trip than refuse a token signed with a freshly rotated key.
    pub async fn ensure(&self, kid: &str) -> Option<Arc<JwkKey>> {
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        if let Err(err) = fetch_if_allowed(&self.shared).await {
            warn!(error = %err, endpoint = %self.shared.endpoint.uri, "jwks fetch failed");
        }
        self.key(kid)
    }

    /// Fetches the set now, whatever the rate limit, and returns how many usable keys it
    /// holds. For startup checks (`tether checktoken`) and tests.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let _fetching = self.shared.fetch_lock.lock().await;
        fetch_into(&self.shared).await
    }

    fn cached(&self, kid: &str) -> Option<Arc<JwkKey>> {
        let state = self.shared.state.read();
        let fresh = state
            .fetched_at
            .is_some_and(|at| at.elapsed() < self.shared.timing.ttl);
        if fresh {
            state.keys.get(kid).cloned()
        } else {
            None
        }
    }

    /// Spawns the refresh task once, if we are inside a runtime.
    fn start(&self) {
        if self.shared.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.shared.started.swap(true, Ordering::AcqRel) {
            runtime.spawn(refresh_task(Arc::clone(&self.shared)));
        }
    }
}

/// Checks that `endpoint` is a usable JWKS URL, without starting anything.
pub(crate) fn check_endpoint(endpoint: &str) -> Result<(), JwksError> {
    Endpoint::parse(endpoint).map(drop)
}

// The endpoint may carry credentials in its query; keys are public but bulky.
impl fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.read();
        f.debug_struct("JwksCache")
            .field("endpoint_host", &self.shared.endpoint.host)
            .field("keys", &state.keys.len())
            .field("fetched", &state.fetched_at.is_some())
            .finish()
    }
}

impl fmt::Debug for JwkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwkKey")
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

// === impl Endpoint ===

impl Endpoint {
    fn parse(text: &str) -> Result<Self, JwksError> {
        let bad = |why: &str| JwksError::Endpoint(format!("{text:?}: {why}"));
        let uri: Uri = text.parse().map_err(|_| bad("not a url"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad("https is not supported, use http")),
            _ => return Err(bad("scheme must be http")),
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?;
        // `Uri::host` keeps the brackets of an IPv6 literal; the resolver wants them off.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        Ok(Self { uri, host, port })
    }
}

// === the refresh task ===

/// Runs until the cache is dropped: fetch at once, then before the TTL runs out, and early
/// (rate-limited) when a lookup missed; after a failure, retry at the rate limit.
async fn refresh_task(shared: Arc<Shared>) {
    debug!(endpoint = %shared.endpoint.uri, "jwks refresh task started");
    loop {
        let due = next_fetch_at(&shared.state.read(), &shared.timing);
        tokio::select! {
            // Biased: a dropped verifier (e.g. one built only to validate the config) must
            // not fetch even once.
            biased;
            () = shared.stop.cancelled() => {
                debug!("jwks refresh task stopped: token verifier dropped");
                return;
            }
            () = tokio::time::sleep_until(due) => {}
            () = shared.wake.notified() => continue,
        }
        tokio::select! {
            biased;
            () = shared.stop.cancelled() => {
                debug!("jwks refresh task stopped during a fetch: token verifier dropped");
                return;
            }
            result = fetch_if_allowed(&shared) => {
                if let Err(err) = result {
                    warn!(error = %err, endpoint = %shared.endpoint.uri, "jwks fetch failed");
                }
            }
        }
    }
}

/// When the refresh task should fetch next.
fn next_fetch_at(state: &State, timing: &JwksTiming) -> Instant {
    let now = Instant::now();
    let retry_at = state
        .last_attempt
        .map_or(now, |at| at + timing.min_refetch_interval);
    let Some(fetched_at) = state.fetched_at else {
        // Nothing yet: fetch now, or retry at the rate limit.
        return retry_at.max(now);
    };
    if state.miss_pending {
        return retry_at.max(now);
    }
    let failed_since = state.last_attempt.is_some_and(|at| at > fetched_at);
    let refresh_at = fetched_at + timing.ttl.saturating_sub(timing.refresh_ahead);
    if failed_since {
        refresh_at.max(retry_at)
    } else {
        refresh_at
    }
}

/// Fetches unless a fetch started within [`JWKS_MIN_REFETCH_INTERVAL`]; waits for a fetch
/// already in flight instead of starting another.
async fn fetch_if_allowed(shared: &Shared) -> Result<(), JwksError> {
    let _fetching = shared.fetch_lock.lock().await;
    let recent = shared
        .state
        .read()
        .last_attempt
        .is_some_and(|at| at.elapsed() < shared.timing.min_refetch_interval);
    if recent {
        return Ok(());
    }
    fetch_into(shared).await.map(drop)
}

/// One fetch, stored into the cache on success. The caller holds `fetch_lock`.
async fn fetch_into(shared: &Shared) -> Result<usize, JwksError> {
    let started = Instant::now();
    {
        let mut state = shared.state.write();
        state.last_attempt = Some(started);
        state.miss_pending = false;
    }
    let body = tokio::time::timeout(shared.timing.fetch_timeout, fetch_body(&shared.endpoint))
        .await
        .map_err(|_| JwksError::Timeout)??;
    let keys = parse_jwk_set(&body)?;
    let count = keys.len();
    {
        let mut state = shared.state.write();
        state.keys = keys;
        state.fetched_at = Some(started);
    }
    info!(keys = count, endpoint = %shared.endpoint.uri, "jwks fetched");
    Ok(count)
}

/// GET the endpoint over one HTTP/1.1 connection and return the body (bounded).
async fn fetch_body(endpoint: &Endpoint) -> Result<Bytes, JwksError> {
    let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(JwksError::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(JwksError::Http)?;
    let path = endpoint
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let authority = endpoint
        .uri
        .authority()
        .map_or(endpoint.host.clone(), |a| a.as_str().to_owned());
    let exchange = async move {
        let request = hyper::Request::get(path)
            .header(HOST, authority)
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| JwksError::Endpoint(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(JwksError::Http)?;
        if response.status() != hyper::StatusCode::OK {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), JWKS_MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| JwksError::Body(e.to_string()))?;
        Ok(body.to_bytes())
        // `sender` drops here, which lets `connection` finish.
    };
    // Drive the connection alongside the exchange; the connection ends once the exchange
    // has dropped its sender and the response is read.
    let (body, connection) = tokio::join!(exchange, connection);
    if let Err(err) = connection {
        debug!(error = %err, "jwks connection ended with an error");
    }
    body
}

/// Parses a JWK set, keeping the usable signature keys with a `kid` (see the module doc).
/// Keys that do not parse or do not fit are skipped, not fatal: one exotic key must not hide
/// the others.
pub(crate) fn parse_jwk_set(body: &[u8]) -> Result<HashMap<String, Arc<JwkKey>>, JwksError> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet = serde_json::from_slice(body).map_err(JwksError::Json)?;
    let mut keys = HashMap::new();
    for raw in set.keys.into_iter().take(JWKS_MAX_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else {
            continue;
        };
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            continue;
        }
        let Some(algorithms) = algorithms_for(&jwk) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.insert(kid, Arc::new(JwkKey { key, algorithms }));
    }
    Ok(keys)
}

/// The algorithms a JWK may verify, from its key type, curve and optional `alg`; `None` for
/// keys we never use.
fn algorithms_for(jwk: &Jwk) -> Option<&'static [Algorithm]> {
    let declared = jwk.common.key_algorithm;
    let pinned: &'static [Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => match declared {
            None => &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
            Some(KeyAlgorithm::RS256) => &[Algorithm::RS256],
            Some(KeyAlgorithm::RS384) => &[Algorithm::RS384],
            Some(KeyAlgorithm::RS512) => &[Algorithm::RS512],
            Some(_) => return None,
        },
        AlgorithmParameters::EllipticCurve(params) => match (&params.curve, declared) {
            (EllipticCurve::P256, None | Some(KeyAlgorithm::ES256)) => &[Algorithm::ES256],
            (EllipticCurve::P384, None | Some(KeyAlgorithm::ES384)) => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(params) => match (&params.curve, declared) {
            (EllipticCurve::Ed25519, None | Some(KeyAlgorithm::EdDSA)) => &[Algorithm::EdDSA],
            _ => return None,
        },
        // `oct` (symmetric) keys, unknown key types, and whatever the library adds later.
        _ => return None,
    };
    Some(pinned)
}

/// How long a fetched key set is trusted.
pub const JWKS_CACHE_TTL: Duration = Duration::from_secs(3600);

/// Fewest seconds between two fetches triggered by unknown `kid`s or failures.
pub const JWKS_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// How long before the TTL runs out the refresh task refetches, so keys never lapse while
/// the endpoint is up.
pub const JWKS_REFRESH_AHEAD: Duration = Duration::from_secs(60);

/// Bound on one fetch: connect, request and body together.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest JWK set body accepted (real sets are a few KiB).
pub const JWKS_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Most keys kept from one set; the rest are ignored.
pub const JWKS_MAX_KEYS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sets_keep_only_usable_signature_keys() {
        let keys = parse_jwk_set(include_bytes!("testdata/jwks.json")).unwrap();
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["ec-256", "ec-384", "ed-1", "rsa-1", "rsa-384-only"]);
        assert_eq!(
            keys["rsa-1"].algorithms,
            [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]
        );
        assert_eq!(keys["rsa-384-only"].algorithms, [Algorithm::RS384]);
        assert_eq!(keys["ec-256"].algorithms, [Algorithm::ES256]);
        assert_eq!(keys["ec-384"].algorithms, [Algorithm::ES384]);
        assert_eq!(keys["ed-1"].algorithms, [Algorithm::EdDSA]);

        assert!(parse_jwk_set(br#"{"keys": []}"#).unwrap().is_empty());
        for bad in [&b"[]"[..], b"{}", b"{\"keys\": 5}", b"\xff"] {
            assert!(matches!(parse_jwk_set(bad), Err(JwksError::Json(_))));
        }
        // A P-256 key declared for ES384 is refused rather than trusted for either.
        let lying =
            br#"{"keys":[{"kty":"EC","kid":"x","crv":"P-256","alg":"ES384","x":"AA","y":"AA"}]}"#;
        assert!(parse_jwk_set(lying).unwrap().is_empty());
    }

    #[test]
    fn endpoints_parse_to_host_port_and_path() {
        let e = Endpoint::parse("http://[::1]:8080/keys?tenant=a").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 8080));
        assert_eq!(e.uri.path_and_query().unwrap().as_str(), "/keys?tenant=a");
        let e = Endpoint::parse("http://auth.internal/jwks").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("auth.internal", 80));
        let err = Endpoint::parse("https://auth.internal/jwks").unwrap_err();
        assert!(err.to_string().contains("https is not supported"), "{err}");
    }

    #[test]
    fn refetch_schedule_respects_the_rate_limit_and_the_ttl() {
        let timing = JwksTiming::default();
        let now = Instant::now();
        let fresh = State::default();
        assert!(next_fetch_at(&fresh, &timing) <= Instant::now());
        let fetched = State {
            fetched_at: Some(now),
            last_attempt: Some(now),
            ..State::default()
        };
        assert_eq!(
            next_fetch_at(&fetched, &timing),
            now + JWKS_CACHE_TTL - JWKS_REFRESH_AHEAD
        );
        let missed = State {
            miss_pending: true,
            ..fetched
        };
        assert_eq!(
            next_fetch_at(&missed, &timing),
            now + JWKS_MIN_REFETCH_INTERVAL
        );
    }
}
