//! Protocol codes: client errors (in `Reply.error`), unsubscribe codes (in `Push.unsubscribe`)
//! and disconnect codes (WebSocket close frames, or `Push.disconnect` elsewhere).
//!
//! Values, messages and the reconnect ranges are Centrifugo's (compat-protocol §1.9–§1.11); the
//! SDKs decide whether to retry from them, so they are a contract, not a style choice.

use crate::protocol;

/// A client error as sent in [`protocol::Reply::error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientError {
    /// Numeric code.
    pub code: u32,
    /// Message sent with the code.
    pub message: &'static str,
    /// SDKs retry with backoff on temporary errors.
    pub temporary: bool,
}

impl ClientError {
    /// 100: internal server error (temporary).
    pub const INTERNAL: Self = Self::new(100, "internal server error", true);
    /// 101: unauthorized.
    pub const UNAUTHORIZED: Self = Self::new(101, "unauthorized", false);
    /// 102: unknown channel (namespace not configured).
    pub const UNKNOWN_CHANNEL: Self = Self::new(102, "unknown channel", false);
    /// 103: permission denied (also an invalid subscription token).
    pub const PERMISSION_DENIED: Self = Self::new(103, "permission denied", false);
    /// 104: method not found.
    pub const METHOD_NOT_FOUND: Self = Self::new(104, "method not found", false);
    /// 105: already subscribed.
    pub const ALREADY_SUBSCRIBED: Self = Self::new(105, "already subscribed", false);
    /// 106: limit exceeded (e.g. channels per connection).
    pub const LIMIT_EXCEEDED: Self = Self::new(106, "limit exceeded", false);
    /// 107: bad request.
    pub const BAD_REQUEST: Self = Self::new(107, "bad request", false);
    /// 108: not available (feature off: history, presence, rpc).
    pub const NOT_AVAILABLE: Self = Self::new(108, "not available", false);
    /// 109: token expired; the SDK refreshes the token and retries.
    pub const TOKEN_EXPIRED: Self = Self::new(109, "token expired", false);
    /// 110: expired (expiry in the past).
    pub const EXPIRED: Self = Self::new(110, "expired", false);
    /// 111: too many requests (temporary).
    pub const TOO_MANY_REQUESTS: Self = Self::new(111, "too many requests", true);
    /// 112: unrecoverable position.
    pub const UNRECOVERABLE_POSITION: Self = Self::new(112, "unrecoverable position", false);
    /// 113: concurrent pagination (temporary).
    pub const CONCURRENT_PAGINATION: Self = Self::new(113, "concurrent pagination", true);

    const fn new(code: u32, message: &'static str, temporary: bool) -> Self {
        Self {
            code,
            message,
            temporary,
        }
    }
}

impl From<ClientError> for protocol::Error {
    fn from(e: ClientError) -> Self {
        Self {
            code: e.code,
            message: e.message.to_owned(),
            temporary: e.temporary,
        }
    }
}

/// A disconnect code with its reason text, sent as a WebSocket close frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DisconnectCode {
    /// Close code.
    pub code: u16,
    /// Close reason; short enough for the 123-byte close-reason limit.
    pub reason: &'static str,
}

impl DisconnectCode {
    /// 3001: server shutdown (reconnect).
    pub const SHUTDOWN: Self = Self::new(3001, "shutdown");
    /// 3004: internal server error (reconnect).
    pub const INTERNAL: Self = Self::new(3004, "internal server error");
    /// 3005: connection expired (reconnect).
    pub const EXPIRED: Self = Self::new(3005, "connection expired");
    /// 3006: server-side subscription expired (reconnect).
    pub const SUBSCRIPTION_EXPIRED: Self = Self::new(3006, "subscription expired");
    /// 3008: slow consumer, outbound queue over its bound (reconnect).
    pub const SLOW: Self = Self::new(3008, "slow");
    /// 3009: write error (reconnect).
    pub const WRITE_ERROR: Self = Self::new(3009, "write error");
    /// 3010: insufficient state of a server-side subscription (reconnect).
    pub const INSUFFICIENT_STATE: Self = Self::new(3010, "insufficient state");
    /// 3011: force reconnect (reconnect).
    pub const FORCE_RECONNECT: Self = Self::new(3011, "force reconnect");
    /// 3012: no pong within the pong timeout (reconnect).
    pub const NO_PONG: Self = Self::new(3012, "no pong");
    /// 3013: too many requests (reconnect).
    pub const TOO_MANY_REQUESTS: Self = Self::new(3013, "too many requests");
    /// 3014: state invalidated; the SDK drops its token and cached state (reconnect).
    pub const STATE_INVALIDATED: Self = Self::new(3014, "state invalidated");
    /// 3500: invalid token (terminal).
    pub const INVALID_TOKEN: Self = Self::new(3500, "invalid token");
    /// 3501: bad request (terminal).
    pub const BAD_REQUEST: Self = Self::new(3501, "bad request");
    /// 3502: stale, never authenticated in time (terminal).
    pub const STALE: Self = Self::new(3502, "stale");
    /// 3503: force disconnect (terminal).
    pub const FORCE_DISCONNECT: Self = Self::new(3503, "force disconnect");
    /// 3504: connection limit (terminal).
    pub const CONNECTION_LIMIT: Self = Self::new(3504, "connection limit");
    /// 3505: channel limit (terminal).
    pub const CHANNEL_LIMIT: Self = Self::new(3505, "channel limit");
    /// 3506: inappropriate protocol, e.g. binary data for a JSON client (terminal).
    pub const INAPPROPRIATE_PROTOCOL: Self = Self::new(3506, "inappropriate protocol");
    /// 3507: permission denied (terminal).
    pub const PERMISSION_DENIED: Self = Self::new(3507, "permission denied");
    /// 3508: not available (terminal).
    pub const NOT_AVAILABLE: Self = Self::new(3508, "not available");
    /// 3509: too many errors (terminal).
    pub const TOO_MANY_ERRORS: Self = Self::new(3509, "too many errors");

    const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }

    /// Whether clients reconnect after this code; see [`reconnect`].
    #[must_use]
    pub const fn reconnect(self) -> bool {
        reconnect(self.code)
    }
}

impl From<DisconnectCode> for protocol::Disconnect {
    fn from(d: DisconnectCode) -> Self {
        Self {
            code: u32::from(d.code),
            reason: d.reason.to_owned(),
            reconnect: d.reconnect(),
        }
    }
}

/// Whether a client reconnects after a close with `code`, per the library contract:
/// below 3000 yes (transport-level) except 1009 (message too big, terminal); 3000–3499 yes;
/// 3500–3999 no; 4000–4499 yes; 4500–4999 no; 5000 and above yes.
#[must_use]
pub const fn reconnect(code: u16) -> bool {
    match code {
        1009 => false,
        0..=2999 | 3000..=3499 | 4000..=4499 => true,
        3500..=3999 | 4500..=4999 => false,
        5000.. => true,
    }
}

/// An unsubscribe code with its reason text, sent in [`protocol::Unsubscribe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnsubscribeCode {
    /// Code (2000..=2999 for server-sent codes).
    pub code: u32,
    /// Reason text.
    pub reason: &'static str,
}

impl UnsubscribeCode {
    /// 2000: unsubscribed by the server API (no resubscribe).
    pub const SERVER: Self = Self::new(2000, "server unsubscribe");
    /// 2500: insufficient state; the SDK resubscribes with recovery.
    pub const INSUFFICIENT_STATE: Self = Self::new(2500, "insufficient state");
    /// 2501: subscription token expired and not refreshed (resubscribe).
    pub const EXPIRED: Self = Self::new(2501, "subscription expired");
    /// 2502: state invalidated; the SDK drops its token and cached state (resubscribe).
    pub const STATE_INVALIDATED: Self = Self::new(2502, "state invalidated");

    const fn new(code: u32, reason: &'static str) -> Self {
        Self { code, reason }
    }

    /// Whether the SDK resubscribes by itself (codes `>= 2500`).
    #[must_use]
    pub const fn resubscribe(self) -> bool {
        self.code >= 2500
    }
}

impl From<UnsubscribeCode> for protocol::Unsubscribe {
    fn from(u: UnsubscribeCode) -> Self {
        Self {
            code: u.code,
            reason: u.reason.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_ranges_match_the_sdk_boundaries() {
        for (code, expected) in [
            (1000, true),
            (1006, true),
            (1009, false),
            (2999, true),
            (3000, true),
            (3499, true),
            (3500, false),
            (3999, false),
            (4000, true),
            (4499, true),
            (4500, false),
            (4999, false),
            (5000, true),
            (u16::MAX, true),
        ] {
            assert_eq!(reconnect(code), expected, "code {code}");
        }
    }

    #[test]
    fn client_errors_convert_to_wire_errors() {
        let e: protocol::Error = ClientError::TOO_MANY_REQUESTS.into();
        assert_eq!(e.code, 111);
        assert_eq!(e.message, "too many requests");
        assert!(e.temporary);
        let e: protocol::Error = ClientError::PERMISSION_DENIED.into();
        assert_eq!((e.code, e.temporary), (103, false));
    }

    #[test]
    fn client_error_table_matches_centrifugo() {
        let all = [
            (ClientError::INTERNAL, 100, "internal server error", true),
            (ClientError::UNAUTHORIZED, 101, "unauthorized", false),
            (ClientError::UNKNOWN_CHANNEL, 102, "unknown channel", false),
            (
                ClientError::PERMISSION_DENIED,
                103,
                "permission denied",
                false,
            ),
            (
                ClientError::METHOD_NOT_FOUND,
                104,
                "method not found",
                false,
            ),
            (
                ClientError::ALREADY_SUBSCRIBED,
                105,
                "already subscribed",
                false,
            ),
            (ClientError::LIMIT_EXCEEDED, 106, "limit exceeded", false),
            (ClientError::BAD_REQUEST, 107, "bad request", false),
            (ClientError::NOT_AVAILABLE, 108, "not available", false),
            (ClientError::TOKEN_EXPIRED, 109, "token expired", false),
            (ClientError::EXPIRED, 110, "expired", false),
            (
                ClientError::TOO_MANY_REQUESTS,
                111,
                "too many requests",
                true,
            ),
            (
                ClientError::UNRECOVERABLE_POSITION,
                112,
                "unrecoverable position",
                false,
            ),
            (
                ClientError::CONCURRENT_PAGINATION,
                113,
                "concurrent pagination",
                true,
            ),
        ];
        for (e, code, message, temporary) in all {
            assert_eq!((e.code, e.message, e.temporary), (code, message, temporary));
        }
    }

    #[test]
    fn disconnect_codes_sit_in_their_reconnect_range() {
        let reconnecting = [
            DisconnectCode::SHUTDOWN,
            DisconnectCode::INTERNAL,
            DisconnectCode::EXPIRED,
            DisconnectCode::SUBSCRIPTION_EXPIRED,
            DisconnectCode::SLOW,
            DisconnectCode::WRITE_ERROR,
            DisconnectCode::INSUFFICIENT_STATE,
            DisconnectCode::FORCE_RECONNECT,
            DisconnectCode::NO_PONG,
            DisconnectCode::TOO_MANY_REQUESTS,
            DisconnectCode::STATE_INVALIDATED,
        ];
        let terminal = [
            DisconnectCode::INVALID_TOKEN,
            DisconnectCode::BAD_REQUEST,
            DisconnectCode::STALE,
            DisconnectCode::FORCE_DISCONNECT,
            DisconnectCode::CONNECTION_LIMIT,
            DisconnectCode::CHANNEL_LIMIT,
            DisconnectCode::INAPPROPRIATE_PROTOCOL,
            DisconnectCode::PERMISSION_DENIED,
            DisconnectCode::NOT_AVAILABLE,
            DisconnectCode::TOO_MANY_ERRORS,
        ];
        for d in reconnecting {
            assert!((3001..=3014).contains(&d.code) && d.reconnect(), "{d:?}");
        }
        for d in terminal {
            assert!((3500..=3509).contains(&d.code) && !d.reconnect(), "{d:?}");
        }
        for d in reconnecting.iter().chain(&terminal) {
            assert!(!d.reason.is_empty() && d.reason.len() <= 123, "{d:?}");
        }
    }

    #[test]
    fn disconnect_and_unsubscribe_convert_to_pushes() {
        let d: protocol::Disconnect = DisconnectCode::SHUTDOWN.into();
        assert_eq!(
            (d.code, d.reason.as_str(), d.reconnect),
            (3001, "shutdown", true)
        );
        let d: protocol::Disconnect = DisconnectCode::INVALID_TOKEN.into();
        assert!(!d.reconnect);
        let u: protocol::Unsubscribe = UnsubscribeCode::SERVER.into();
        assert_eq!((u.code, u.reason.as_str()), (2000, "server unsubscribe"));
        let resubscribing = [
            UnsubscribeCode::INSUFFICIENT_STATE,
            UnsubscribeCode::EXPIRED,
            UnsubscribeCode::STATE_INVALIDATED,
        ];
        for u in resubscribing {
            assert!(u.resubscribe(), "{u:?}");
        }
        let server = [UnsubscribeCode::SERVER];
        assert!(!server.iter().any(|u| u.resubscribe()));
    }
}
