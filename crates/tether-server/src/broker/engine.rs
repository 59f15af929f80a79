//! [`Engine`]: the one handle the node uses for positions, history and presence, whichever
//! engine is configured.
//!
//! Every operation is `async` so that a networked engine (Redis) fits behind the same calls;
//! the embedded memory engine answers without suspending. `subscribe`/`unsubscribe` are called
//! once per local subscription: an engine that fans out between nodes (Redis Pub/Sub) keeps a
//! reference count per channel and returns from `subscribe` only once publications of that
//! channel are flowing to this node, so a history read after it cannot miss one.

use std::collections::HashMap;

use tokio::time::Instant;

use super::{
    BrokerError, ClientInfo, HistoryPage, HistoryQuery, MemoryBroker, PresenceStats, Publication,
    PublishOptions, Published,
};

/// The configured engine. Clone = handle clone.
#[derive(Clone, Debug)]
pub enum Engine {
    /// The embedded single-node engine.
    Memory(MemoryBroker),
}

impl Engine {
    /// Appends to history (when enabled) and delivers to subscribers on every node.
    pub async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<Published, BrokerError> {
        match self {
            Self::Memory(m) => m.publish(channel, publication, opts, Instant::now()),
        }
    }

    /// Reads a channel's history and current position.
    pub async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        match self {
            Self::Memory(m) => m.history(channel, query, Instant::now()),
        }
    }

    /// Drops a channel's publications, keeping its position.
    pub async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        match self {
            Self::Memory(m) => {
                m.remove_history(channel);
                Ok(())
            }
        }
    }

    /// Starts receiving a channel's publications on this node (one call per local
    /// subscription).
    pub async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        match self {
            Self::Memory(_) => {
                let _ = channel;
                Ok(())
            }
        }
    }

    /// Ends one local subscription's interest in a channel.
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        match self {
            Self::Memory(_) => {
                let _ = channel;
                Ok(())
            }
        }
    }

    /// Announces a join to the channel's subscribers on every node.
    pub async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        match self {
            Self::Memory(m) => {
                m.publish_join(channel, info);
                Ok(())
            }
        }
    }

    /// Announces a leave to the channel's subscribers on every node.
    pub async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        match self {
            Self::Memory(m) => {
                m.publish_leave(channel, info);
                Ok(())
            }
        }
    }

    /// Adds or refreshes a connection's presence in a channel.
    pub async fn add_presence(
        &self,
        channel: &str,
        client_id: &str,
        info: ClientInfo,
    ) -> Result<(), BrokerError> {
        match self {
            Self::Memory(m) => {
                m.add_presence(channel, client_id, info);
                Ok(())
            }
        }
    }

    /// Removes a connection's presence from a channel.
    pub async fn remove_presence(&self, channel: &str, client_id: &str) -> Result<(), BrokerError> {
        match self {
            Self::Memory(m) => {
                m.remove_presence(channel, client_id);
                Ok(())
            }
        }
    }

    /// Who is present in a channel.
    pub async fn presence(
        &self,
        channel: &str,
    ) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        match self {
            Self::Memory(m) => Ok(m.presence(channel)),
        }
    }

    /// Presence counters of a channel.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, BrokerError> {
        match self {
            Self::Memory(m) => Ok(m.presence_stats(channel)),
        }
    }

    /// Periodic housekeeping (expired streams, idempotency keys).
    pub fn sweep(&self, now: Instant) {
        match self {
            Self::Memory(m) => m.sweep(now),
        }
    }
}
