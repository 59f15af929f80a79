//! Values the SDK hands to the app: states, events, publications and call results.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use crate::Error;

/// Connection state of a [`Client`](crate::Client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not connected and not trying: before `connect()`, after `disconnect()`, or after a
    /// terminal disconnect code from the server.
    Disconnected,
    /// Opening a link or waiting for the next reconnect attempt.
    Connecting,
    /// Connected and authenticated.
    Connected,
}

/// State of a [`Subscription`](crate::Subscription).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionState {
    /// Not subscribed and not trying.
    Unsubscribed,
    /// Waiting for the client to connect, for the subscribe reply, or for a retry.
    Subscribing,
    /// Subscribed: publications flow.
    Subscribed,
}

/// Something that happened to the connection.
#[derive(Clone, Debug)]
pub enum ClientEvent {
    /// The client is (re)connecting. `code` and `reason` tell why (see [`codes`] and the
    /// server's disconnect codes).
    Connecting {
        /// Why.
        code: u32,
        /// Why, in words.
        reason: String,
    },
    /// A reconnect attempt is scheduled after `delay` (backoff with full jitter).
    ReconnectScheduled {
        /// Failed attempts in a row so far, 0 for the first retry.
        attempt: u32,
        /// How long the client waits before it.
        delay: Duration,
    },
    /// Connected and authenticated.
    Connected {
        /// The client id the server assigned.
        client: String,
        /// Server version.
        version: String,
    },
    /// The client stopped: `disconnect()` was called or the server sent a terminal code
    /// (e.g. 3500 invalid token). It does not reconnect by itself.
    Disconnected {
        /// Why.
        code: u32,
        /// Why, in words.
        reason: String,
    },
    /// A publication in a channel the server subscribed this client to (server-side
    /// subscription), which has no [`Subscription`](crate::Subscription) object.
    ServerPublication {
        /// The channel.
        channel: String,
        /// The publication.
        publication: Publication,
    },
    /// An asynchronous message sent by the server to this connection.
    Message(Bytes),
    /// A failure worth knowing about that did not change the state by itself (a token
    /// callback failed, a refresh was refused).
    Error(Error),
}

/// Something that happened to a subscription.
#[derive(Clone, Debug)]
pub enum SubscriptionEvent {
    /// Subscribing, or resubscribing after a reconnect.
    Subscribing {
        /// Why (see [`codes`]).
        code: u32,
        /// Why, in words.
        reason: String,
    },
    /// Subscribed. After a resubscribe, `recovered` says whether every missed publication
    /// was delivered (they come as [`SubscriptionEvent::Publication`] right after this).
    Subscribed {
        /// The subscribe asked for recovery (this client had a position in the stream).
        was_recovering: bool,
        /// Recovery succeeded: no publication was missed. When `was_recovering` and this is
        /// false, the app must reload its state another way.
        recovered: bool,
        /// The channel keeps a history stream that this client can recover from.
        recoverable: bool,
        /// The stream position after the subscribe (when the channel has history).
        position: Option<StreamPosition>,
    },
    /// Not subscribed any more, and not trying.
    Unsubscribed {
        /// Why (see [`codes`] and the server's unsubscribe codes).
        code: u32,
        /// Why, in words.
        reason: String,
    },
    /// A publication, delivered exactly once and in order across reconnects of a recoverable
    /// channel.
    Publication(Publication),
    /// Someone subscribed (with `join_leave`).
    Join(ClientInfo),
    /// Someone left (with `join_leave`).
    Leave(ClientInfo),
    /// A failure that did not change the state by itself (subscribe refused temporarily,
    /// token callback failed).
    Error(Error),
}

/// One publication in a channel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Publication {
    /// The payload.
    pub data: Bytes,
    /// Position in the channel's stream (0 when the channel has no history).
    pub offset: u64,
    /// The publisher, when it was a client.
    pub info: Option<ClientInfo>,
    /// Tags set by the publisher.
    pub tags: HashMap<String, String>,
}

/// Who a connection is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// User id ("" for anonymous).
    pub user: String,
    /// Client (connection) id.
    pub client: String,
    /// Connection info from the token.
    pub conn_info: Bytes,
    /// Channel info from the subscription token.
    pub chan_info: Bytes,
}

/// A position in a channel's stream: offset within an epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// Offset of the last publication.
    pub offset: u64,
    /// The stream's epoch; a different one means the stream was reset.
    pub epoch: String,
}

/// Options of a history call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Most publications to return; 0 returns only the current position, a negative value
    /// as many as the server allows.
    pub limit: i32,
    /// Return publications after this position.
    pub since: Option<StreamPosition>,
    /// Newest first.
    pub reverse: bool,
}

/// Result of a history call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryResult {
    /// The publications.
    pub publications: Vec<Publication>,
    /// The stream's current top position.
    pub position: StreamPosition,
}

/// Counts of a channel's presence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PresenceStats {
    /// Connections subscribed.
    pub num_clients: u32,
    /// Distinct users among them.
    pub num_users: u32,
}

/// Codes the client itself uses in [`ClientEvent`] and [`SubscriptionEvent`]; codes 2000 and
/// up come from the server.
pub mod codes {
    /// `connect()` was called.
    pub const CONNECT_CALLED: u32 = 0;
    /// The link closed or failed without a disconnect code.
    pub const TRANSPORT_CLOSED: u32 = 1;
    /// No traffic for the server's ping interval plus slack: the link is dead.
    pub const NO_PING: u32 = 2;
    /// The server did not answer a connect, subscribe or refresh in time.
    pub const REQUEST_TIMEOUT: u32 = 3;
    /// `disconnect()` was called.
    pub const DISCONNECT_CALLED: u32 = 4;
    /// A token callback said the user is not authorized.
    pub const UNAUTHORIZED: u32 = 5;
    /// The server sent something the client cannot decode.
    pub const BAD_PROTOCOL: u32 = 6;
    /// `subscribe()` was called.
    pub const SUBSCRIBE_CALLED: u32 = 7;
    /// `unsubscribe()` was called.
    pub const UNSUBSCRIBE_CALLED: u32 = 8;
    /// The subscribe was refused by the server (the reason carries its error).
    pub const SUBSCRIBE_REFUSED: u32 = 9;
}

// === conversions from the wire types ===

impl From<tether_proto::Publication> for Publication {
    fn from(p: tether_proto::Publication) -> Self {
        Self {
            data: p.data,
            offset: p.offset,
            info: p.info.map(ClientInfo::from),
            tags: p.tags,
        }
    }
}

impl From<tether_proto::ClientInfo> for ClientInfo {
    fn from(i: tether_proto::ClientInfo) -> Self {
        Self {
            user: i.user,
            client: i.client,
            conn_info: i.conn_info,
            chan_info: i.chan_info,
        }
    }
}
