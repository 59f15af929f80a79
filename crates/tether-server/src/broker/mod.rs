//! Broker: the one place that assigns stream positions, keeps history and presence.
//!
//! A channel with history is a *stream*: every publication gets the next `offset`, from 1,
//! within an `epoch`, a random name for this incarnation of the stream. The epoch changes
//! whenever the broker cannot prove that no acknowledged publication was lost (a restart, or
//! the stream's metadata expiring), because a reconnecting client that is told
//! `recovered: true` must really have received everything. Positions are exact or the epoch
//! moves: there is no third option.
//!
//! The broker never calls the hub. It emits [`BrokerEvents`] instead, and for a stream it emits
//! each publication while still holding that channel's lock, so subscribers see publications in
//! offset order.
//!
//! Engines: [`memory::MemoryBroker`] (embedded, single node), [`disk::DiskBroker`] (the same
//! with history and positions on local disk), [`redis::RedisEngine`] (several
//! nodes sharing Redis), and [`nats::NatsBroker`], fan-out without history between nodes that
//! share NATS, combined with the memory or Redis engine for presence. [`Engine`] is the one facade
//! the node uses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

mod channels;
pub(crate) mod disk;
mod engine;
// Until the server calls the lifecycle store (the session and API side), nothing reaches it:
// remove this when it is wired.
#[allow(dead_code, reason = "not called by the server yet")]
pub(crate) mod lifecycle;
pub(crate) mod memory;
pub(crate) mod nats;
pub(crate) mod redis;
mod wire;

pub(crate) use self::nats::{NatsBroker, NatsOptions};
pub(crate) use self::redis::{
    RedisDeployment, RedisEngine, RedisOptions, RedisTls, SentinelOptions, ShardHealth,
};
pub(crate) use disk::{DiskBroker, DiskOpenError, DiskOptions, DiskStats, Fsync};
pub(crate) use engine::{Engine, PresenceStore};
pub(crate) use memory::MemoryBroker;

/// Receives the payloads published on the cluster control channel (including this node's
/// own broadcasts, and those addressed to this node). Taken once by the node.
pub type ControlReceiver = mpsc::UnboundedReceiver<Bytes>;

/// A position in a channel's stream: the offset of a publication within an epoch.
///
/// Two positions are only comparable when their epochs are equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamPosition {
    /// Offset of the last publication at this position; 0 means "before the first".
    pub offset: u64,
    /// Name of the stream incarnation the offset belongs to; empty means "unknown".
    pub epoch: String,
}

/// Who a publication, join or leave is about.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientInfo {
    /// User id from the connection credentials; empty for anonymous connections.
    pub user: String,
    /// Client (connection) id, unique per connection.
    pub client: String,
    /// Connection-level info attached by the connect token or proxy, passed through verbatim.
    pub conn_info: Option<Bytes>,
    /// Channel-level info attached by the subscription token or proxy, passed through verbatim.
    pub chan_info: Option<Bytes>,
}

/// One publication into a channel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Publication {
    /// Offset assigned by the broker; 0 when the channel has no history.
    pub offset: u64,
    /// Payload, shared and never copied.
    pub data: Bytes,
    /// Publisher, when a client published (absent for server API publications).
    pub info: Option<ClientInfo>,
    /// Free-form tags passed through to subscribers.
    pub tags: BTreeMap<String, String>,
    /// The publisher asked for delta encoding against the previous publication.
    pub delta: bool,
    /// Publication time in Unix milliseconds, set by the caller.
    pub time_ms: i64,
}

/// History settings of a channel, taken from its namespace on every publish.
///
/// History is enabled only when both `size` and `ttl` are non-zero (as in Centrifugo);
/// otherwise a publish behaves as if no history was requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Maximum number of publications retained; older ones are dropped first.
    pub size: usize,
    /// How long publications are kept after the *last* publish into the stream.
    pub ttl: Duration,
    /// How long the stream's epoch and top offset are kept after the last publish or history
    /// read. Should exceed `ttl`. `Duration::ZERO` keeps them for the life of the process.
    pub meta_ttl: Duration,
}

/// Options of one publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Append to the channel's stream; `None` publishes without an offset.
    pub history: Option<HistoryOptions>,
    /// A repeat of the same key in the same channel within five minutes publishes nothing and
    /// returns the first result.
    pub idempotency_key: Option<String>,
}

/// Result of a publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Position of the publication; `None` without history.
    pub position: Option<StreamPosition>,
    /// An idempotency hit: nothing was published again, `position` is the first result's.
    pub from_cache: bool,
}

/// A history read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Return publications after this position (forward) or before it (reverse). An epoch that
    /// is non-empty and differs from the current one is an error.
    pub since: Option<StreamPosition>,
    /// `None` returns everything retained; `Some(0)` returns only the top position.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
    /// Lifetime of the stream's metadata after this read (see [`HistoryOptions::meta_ttl`]).
    pub meta_ttl: Duration,
}

/// Result of a history read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryPage {
    /// Publications in the requested order, each with its offset set.
    pub publications: Vec<Arc<Publication>>,
    /// The stream's current top: offset of the latest publication and the current epoch.
    pub top: StreamPosition,
}

/// What subscribers need to know about one publication.
#[derive(Clone, Debug)]
pub struct PublicationEvent {
    /// The publication, with its offset set when the channel has history.
    pub publication: Arc<Publication>,
    /// Its stream position; `None` without history.
    pub position: Option<StreamPosition>,
    /// The channel's previous publication, filled when `publication.delta` is set and the
    /// stream still retains one, so fan-out can compute a fossil delta against it.
    pub previous: Option<Arc<Publication>>,
}

/// Receiver of everything the broker delivers. Implemented by the hub.
///
/// Calls for one channel's stream are made under that channel's lock, in offset order. An
/// implementation must therefore be quick (enqueue, do not block) and must not call back into
/// the broker for the same channel from inside a callback.
pub trait BrokerEvents: Send + Sync + 'static {
    /// A publication to deliver to the channel's subscribers.
    fn on_publication(&self, channel: &str, event: &PublicationEvent);
    /// A client joined the channel.
    fn on_join(&self, channel: &str, info: &ClientInfo);
    /// A client left the channel.
    fn on_leave(&self, channel: &str, info: &ClientInfo);
    /// Publications of the channel may have been lost on their way to this node (a gap in
    /// offsets, an epoch change, or a Pub/Sub reconnect): positioned subscribers must recover
    /// through history. Engines that cannot lose publications never call it.
    fn on_insufficient_state(&self, channel: &str) {
        let _ = channel;
    }
}

/// Why a broker operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The caller's position belongs to another epoch of the stream: what it missed cannot be
    /// known, so it must not be told it recovered.
    #[error("stream position belongs to another epoch")]
    UnrecoverablePosition,
    /// The engine could not be reached or did not answer in time; nothing is known to have
    /// happened (a publish may or may not have been applied).
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The engine cannot carry this channel name (the NATS broker: a `*` or `>` would be a
    /// subject wildcard, whitespace or an empty dot-separated token no subject at all).
    #[error("channel name not supported by the broker")]
    UnsupportedChannel,
    /// The engine does not offer the operation (history with the NATS broker).
    #[error("not available with this engine")]
    NotAvailable,
}

/// Presence counters of one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PresenceStats {
    /// Connections present in the channel.
    pub num_clients: u32,
    /// Distinct users among them (a user with three devices counts once).
    pub num_users: u32,
}

/// Waits for a broker's subscription manager to confirm a subscribe command (`sent` says
/// whether the command reached it): the manager's result, or `Unavailable` when the manager
/// is gone or did not answer within `deadline`. `broker` names it in the error.
async fn subscribe_confirmed(
    sent: bool,
    confirmed: tokio::sync::oneshot::Receiver<Result<(), BrokerError>>,
    deadline: Duration,
    broker: &str,
) -> Result<(), BrokerError> {
    if !sent {
        return Err(BrokerError::Unavailable(format!("{broker} stopped")));
    }
    match tokio::time::timeout(deadline, confirmed).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(BrokerError::Unavailable(format!("{broker} stopped"))),
        Err(_) => Err(BrokerError::Unavailable(format!(
            "{broker} subscribe timed out"
        ))),
    }
}

#[cfg(test)]
mod tests;
