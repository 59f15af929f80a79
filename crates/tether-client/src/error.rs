//! The one error type of the SDK: opaque, with `is_*()` checks.
//!
//! Callers ask what happened (`is_timeout()`, `is_closed()`, `server_code()`, ...) instead of
//! matching on variants, so new failure kinds can be added without breaking anybody.

use std::fmt;

/// Why a client call, subscription or connection attempt failed.
///
/// ```
/// # async fn demo(client: tether_client::Client) {
/// match client.publish("chat:lobby", "{}").await {
///     Ok(()) => {}
///     Err(e) if e.is_timeout() => eprintln!("no reply in time, maybe retry"),
///     Err(e) if e.server_code() == Some(103) => eprintln!("permission denied"),
///     Err(e) => eprintln!("publish failed: {e}"),
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Error {
    kind: Kind,
}

#[derive(Clone, Debug, thiserror::Error)]
enum Kind {
    #[error("client is closed")]
    Closed,
    #[error("too many calls waiting for a connection")]
    BufferFull,
    #[error("no reply in time")]
    Timeout,
    #[error("connection lost before the reply")]
    ConnectionLost,
    #[error("server error {code}: {message}")]
    Server {
        code: u32,
        message: String,
        temporary: bool,
    },
    #[error("transport failed: {0}")]
    Transport(String),
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    #[error("a subscription to {0:?} already exists")]
    DuplicateSubscription(String),
    #[error("unauthorized")]
    Unauthorized,
    #[error("token unavailable: {0}")]
    TokenUnavailable(String),
    #[error("no tokio runtime: create the client inside one")]
    NoRuntime,
    #[error("unexpected reply from the server")]
    Protocol,
}

impl Error {
    /// For a token callback: the user may not connect (or subscribe) at all. The client (or
    /// subscription) stops instead of retrying.
    pub fn unauthorized() -> Self {
        Self::from_kind(Kind::Unauthorized)
    }

    /// For a token callback: no token could be fetched right now (backend down, ...). The
    /// client retries with backoff.
    pub fn token_unavailable(reason: impl Into<String>) -> Self {
        Self::from_kind(Kind::TokenUnavailable(reason.into()))
    }

    /// The client was disconnected (never connected, `disconnect()` called, or a terminal
    /// disconnect code from the server) before or while the call was made.
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, Kind::Closed)
    }

    /// The call was made while connecting and the bounded buffer of waiting calls was full.
    pub fn is_buffer_full(&self) -> bool {
        matches!(self.kind, Kind::BufferFull)
    }

    /// The call got no reply within its timeout (waiting for a connection included).
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout)
    }

    /// The connection was lost after the call was sent; it may or may not have been applied.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self.kind, Kind::ConnectionLost)
    }

    /// The server answered with an error; see [`Error::server_code`].
    pub fn is_server(&self) -> bool {
        matches!(self.kind, Kind::Server { .. })
    }

    /// The server's error code (100–113 in the protocol), if this is a server error.
    pub fn server_code(&self) -> Option<u32> {
        match self.kind {
            Kind::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The server marked its error as temporary: the same call may succeed later.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self.kind,
            Kind::Server {
                temporary: true,
                ..
            } | Kind::Timeout
                | Kind::ConnectionLost
                | Kind::BufferFull
                | Kind::Transport(_)
                | Kind::TokenUnavailable(_)
        )
    }

    /// Opening or using the connection failed (refused, reset, handshake failed).
    pub fn is_transport(&self) -> bool {
        matches!(self.kind, Kind::Transport(_))
    }

    /// The URL is not `ws://…` or `tcp://host:port`.
    pub fn is_invalid_url(&self) -> bool {
        matches!(self.kind, Kind::InvalidUrl(_))
    }

    /// A subscription to the channel already exists on this client.
    pub fn is_duplicate_subscription(&self) -> bool {
        matches!(self.kind, Kind::DuplicateSubscription(_))
    }

    /// A token callback said the user is not authorized.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self.kind, Kind::Unauthorized)
    }

    /// A token callback could not produce a token for now.
    pub fn is_token_unavailable(&self) -> bool {
        matches!(self.kind, Kind::TokenUnavailable(_))
    }

    /// The client was created outside a Tokio runtime.
    pub fn is_no_runtime(&self) -> bool {
        matches!(self.kind, Kind::NoRuntime)
    }

    /// The server sent something this client cannot make sense of.
    pub fn is_protocol(&self) -> bool {
        matches!(self.kind, Kind::Protocol)
    }

    // === crate constructors ===

    fn from_kind(kind: Kind) -> Self {
        Self { kind }
    }

    pub(crate) fn closed() -> Self {
        Self::from_kind(Kind::Closed)
    }

    pub(crate) fn buffer_full() -> Self {
        Self::from_kind(Kind::BufferFull)
    }

    pub(crate) fn timeout() -> Self {
        Self::from_kind(Kind::Timeout)
    }

    pub(crate) fn connection_lost() -> Self {
        Self::from_kind(Kind::ConnectionLost)
    }

    pub(crate) fn server(error: &tether_proto::Error) -> Self {
        Self::from_kind(Kind::Server {
            code: error.code,
            message: error.message.clone(),
            temporary: error.temporary,
        })
    }

    pub(crate) fn transport(reason: impl fmt::Display) -> Self {
        Self::from_kind(Kind::Transport(reason.to_string()))
    }

    pub(crate) fn invalid_url(reason: impl Into<String>) -> Self {
        Self::from_kind(Kind::InvalidUrl(reason.into()))
    }

    pub(crate) fn duplicate_subscription(channel: &str) -> Self {
        Self::from_kind(Kind::DuplicateSubscription(channel.to_owned()))
    }

    pub(crate) fn no_runtime() -> Self {
        Self::from_kind(Kind::NoRuntime)
    }

    pub(crate) fn protocol() -> Self {
        Self::from_kind(Kind::Protocol)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Error").field(&self.kind).finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_match_exactly_one_kind() {
        let server = Error::server(&tether_proto::Error {
            code: 103,
            message: "permission denied".to_owned(),
            temporary: false,
        });
        assert!(server.is_server());
        assert_eq!(server.server_code(), Some(103));
        assert!(!server.is_temporary());
        assert!(!server.is_timeout());
        assert_eq!(server.to_string(), "server error 103: permission denied");
        assert!(Error::timeout().is_temporary());
        assert!(Error::closed().is_closed() && !Error::closed().is_temporary());
        assert!(Error::unauthorized().is_unauthorized());
        assert_eq!(Error::buffer_full().server_code(), None);
    }
}
