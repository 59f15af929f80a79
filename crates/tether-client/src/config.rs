//! Client and subscription options, with the reason for each default.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::{Backoff, Error, StreamPosition};

/// A future returned by a token callback.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, Error>> + Send>>;

/// A callback that fetches a fresh token (connection or subscription), called when the
/// server says the token expired and before it expires.
///
/// Return [`Error::unauthorized`] to stop for good, [`Error::token_unavailable`] to retry
/// with backoff.
///
/// ```
/// use tether_client::TokenSource;
/// let source = TokenSource::new(|| async { Ok::<_, tether_client::Error>("jwt".to_owned()) });
/// ```
#[derive(Clone)]
pub struct TokenSource(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenSource {
    /// Wraps an async callback.
    pub fn new<F, Fut>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, Error>> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(fetch())))
    }

    pub(crate) fn fetch(&self) -> TokenFuture {
        (self.0)()
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSource(..)")
    }
}

/// Options of a [`Client`](crate::Client).
///
/// ```
/// use std::time::Duration;
/// use tether_client::ClientConfig;
/// let config = ClientConfig {
///     token: Some("jwt".to_owned()),
///     call_timeout: Duration::from_secs(3),
///     ..ClientConfig::default()
/// };
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Connection token (JWT). With a [`token_source`](Self::token_source) this is only the
    /// first one.
    pub token: Option<String>,
    /// Fetches a new connection token when the current one expired or is about to.
    pub token_source: Option<TokenSource>,
    /// Client name sent at connect (shows in server logs).
    pub name: String,
    /// Client version sent at connect.
    pub version: String,
    /// Delays between reconnect attempts (and between resubscribe attempts).
    pub backoff: Backoff,
    /// Default timeout of a call (publish, history, presence, rpc), counted from the call,
    /// so time spent waiting for a connection counts too. See [`Client::with_timeout`].
    ///
    /// [`Client::with_timeout`]: crate::Client::with_timeout
    pub call_timeout: Duration,
    /// How long opening the transport and getting the connect reply may take.
    pub connect_timeout: Duration,
    /// Slack on top of the server's ping interval: with no traffic for ping interval + this,
    /// the link is dead and the client reconnects.
    pub max_server_ping_delay: Duration,
    /// Calls made while connecting wait in a buffer of this many; beyond it they fail at
    /// once with [`Error::is_buffer_full`].
    pub max_pending_calls: usize,
    /// Seed of the backoff jitter; `None` seeds from the OS. Tests set it.
    pub rng_seed: Option<u64>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            token: None,
            token_source: None,
            name: "tether-client".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            backoff: Backoff::default(),
            // The reference SDKs' default: long enough for a loaded server, short enough that
            // an app notices a stuck call.
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            // The reference SDKs' default; covers a slow sweeper and network jitter.
            max_server_ping_delay: Duration::from_secs(10),
            // Enough for a burst of user actions during a short outage; bounded so a long one
            // cannot grow memory.
            max_pending_calls: 128,
            rng_seed: None,
        }
    }
}

/// Options of a [`Subscription`](crate::Subscription).
#[derive(Clone, Debug, Default)]
pub struct SubscriptionConfig {
    /// Subscription token for channels that need one.
    pub token: Option<String>,
    /// Fetches a new subscription token when needed.
    pub token_source: Option<TokenSource>,
    /// Ask for join and leave events.
    pub join_leave: bool,
    /// Recover from this position on the first subscribe (an app that persisted the last
    /// position it handled); later resubscribes recover from what this client saw.
    pub since: Option<StreamPosition>,
}
