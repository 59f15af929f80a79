//! [`Engine`]: the one handle the node uses for positions, history and presence, whichever
//! engine is configured.
//!
//! Every operation is `async` so that a networked engine (Redis) fits behind the same calls;
//! the embedded memory engine answers without suspending. `subscribe`/`unsubscribe` are called
//! once per local subscription: an engine that fans out between nodes (Redis Pub/Sub) keeps a
//! reference count per channel and returns from `subscribe` only once publications of that
//! channel are flowing to this node, so a history read after it cannot miss one. The NATS
//! broker does the same per subject.
//!
//! With the NATS broker (`broker.enabled`, `broker.type = "nats"`) publications, joins, leaves
//! and the cluster control channel travel through NATS, presence stays with the engine (this
//! node's memory, or Redis shared by every node), and history does not exist: a publish that asks for history, a history read and a history
//! removal are [`BrokerError::NotAvailable`] (the config refuses namespaces with history, so
//! only a caller that bypasses it sees the first two). An idempotency key is not honoured
//! there: NATS holds no state to remember it in (Centrifugo ignores it with NATS as well).

use std::collections::HashMap;

use tokio::time::Instant;

use bytes::Bytes;

use super::{
    BrokerError, ClientInfo, DiskBroker, DiskStats, HistoryPage, HistoryQuery, MemoryBroker,
    NatsBroker, PresenceStats, Publication, PublishOptions, Published, RedisEngine, ShardHealth,
};

/// The configured engine. Clone = handle clone.
#[derive(Clone, Debug)]
pub(crate) enum Engine {
    /// The embedded single-node engine.
    Memory(MemoryBroker),
    /// The embedded single-node engine with history and positions on local disk.
    Disk(DiskBroker),
    /// Several nodes sharing Redis: Pub/Sub fan-out, Streams history, presence with TTL.
    Redis(RedisEngine),
    /// Several nodes sharing NATS: fan-out and control through NATS, no history.
    Nats {
        /// Publications, joins, leaves and cluster control.
        broker: NatsBroker,
        /// Where presence lives: the configured engine.
        presence: PresenceStore,
    },
}

/// A borrowed presence store.
enum PresenceRef<'a> {
    Local(&'a MemoryBroker),
    Redis(&'a RedisEngine),
}

/// Where presence lives when the NATS broker carries fan-out: the configured `engine.type`.
#[derive(Clone, Debug)]
pub(crate) enum PresenceStore {
    /// This node's memory: each node knows its own connections only.
    Memory(MemoryBroker),
    /// Redis, shared by every node (its Pub/Sub side is off: `RedisOptions::fanout`).
    Redis(RedisEngine),
}

impl Engine {
    /// Appends to history (when enabled) and delivers to subscribers on every node.
    pub(crate) async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<Published, BrokerError> {
        match self {
            Self::Memory(m) => m.publish(channel, publication, opts, Instant::now()),
            Self::Disk(d) => d.publish(channel, publication, opts).await,
            Self::Redis(r) => r.publish(channel, publication, opts).await,
            Self::Nats { broker, .. } => {
                if opts
                    .history
                    .is_some_and(|history| history.size > 0 && !history.ttl.is_zero())
                {
                    return Err(BrokerError::NotAvailable);
                }
                broker.publish(channel, &publication).await?;
                Ok(Published::default())
            }
        }
    }

    /// Reads a channel's history and current position.
    pub(crate) async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        match self {
            Self::Memory(m) => m.history(channel, query, Instant::now()),
            Self::Disk(d) => d.history(channel, query),
            Self::Redis(r) => r.history(channel, query).await,
            Self::Nats { .. } => {
                let _ = (channel, query);
                Err(BrokerError::NotAvailable)
            }
        }
    }

    /// Drops a channel's publications, keeping its position.
    pub(crate) async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        match self {
            Self::Memory(m) => {
                m.remove_history(channel);
                Ok(())
            }
            Self::Disk(d) => d.remove_history(channel).await,
            Self::Redis(r) => r.remove_history(channel).await,
            Self::Nats { .. } => {
                let _ = channel;
                Err(BrokerError::NotAvailable)
            }
        }
    }

    /// Starts receiving a channel's publications on this node (one call per local
    /// subscription).
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        match self {
            Self::Memory(_) | Self::Disk(_) => {
                let _ = channel;
                Ok(())
            }
            Self::Redis(r) => r.subscribe(channel).await,
            Self::Nats { broker, .. } => broker.subscribe(channel).await,
        }
    }

    /// Ends one local subscription's interest in a channel.
    pub(crate) async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        match self {
            Self::Memory(_) | Self::Disk(_) => {
                let _ = channel;
                Ok(())
            }
            Self::Redis(r) => r.unsubscribe(channel).await,
            Self::Nats { broker, .. } => broker.unsubscribe(channel).await,
        }
    }

    /// Announces a join to the channel's subscribers on every node.
    pub(crate) async fn publish_join(
        &self,
        channel: &str,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        match self {
            Self::Memory(m) => {
                m.publish_join(channel, info);
                Ok(())
            }
            Self::Disk(d) => {
                d.presence().publish_join(channel, info);
                Ok(())
            }
            Self::Redis(r) => r.publish_join(channel, info).await,
            Self::Nats { broker, .. } => broker.publish_join(channel, info).await,
        }
    }

    /// Announces a leave to the channel's subscribers on every node.
    pub(crate) async fn publish_leave(
        &self,
        channel: &str,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        match self {
            Self::Memory(m) => {
                m.publish_leave(channel, info);
                Ok(())
            }
            Self::Disk(d) => {
                d.presence().publish_leave(channel, info);
                Ok(())
            }
            Self::Redis(r) => r.publish_leave(channel, info).await,
            Self::Nats { broker, .. } => broker.publish_leave(channel, info).await,
        }
    }

    /// Where this engine keeps presence.
    fn presence_ref(&self) -> PresenceRef<'_> {
        match self {
            Self::Memory(m)
            | Self::Nats {
                presence: PresenceStore::Memory(m),
                ..
            } => PresenceRef::Local(m),
            Self::Disk(d) => PresenceRef::Local(d.presence()),
            Self::Redis(r)
            | Self::Nats {
                presence: PresenceStore::Redis(r),
                ..
            } => PresenceRef::Redis(r),
        }
    }

    /// Adds or refreshes a connection's presence in a channel.
    pub(crate) async fn add_presence(
        &self,
        channel: &str,
        client_id: &str,
        info: ClientInfo,
    ) -> Result<(), BrokerError> {
        match self.presence_ref() {
            PresenceRef::Local(m) => {
                m.add_presence(channel, client_id, info);
                Ok(())
            }
            PresenceRef::Redis(r) => r.add_presence(channel, client_id, info).await,
        }
    }

    /// Removes a connection's presence from a channel.
    pub(crate) async fn remove_presence(
        &self,
        channel: &str,
        client_id: &str,
    ) -> Result<(), BrokerError> {
        match self.presence_ref() {
            PresenceRef::Local(m) => {
                m.remove_presence(channel, client_id);
                Ok(())
            }
            PresenceRef::Redis(r) => r.remove_presence(channel, client_id).await,
        }
    }

    /// Who is present in a channel.
    pub(crate) async fn presence(
        &self,
        channel: &str,
    ) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        match self.presence_ref() {
            PresenceRef::Local(m) => Ok(m.presence(channel)),
            PresenceRef::Redis(r) => r.presence(channel).await,
        }
    }

    /// Presence counters of a channel.
    pub(crate) async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, BrokerError> {
        match self.presence_ref() {
            PresenceRef::Local(m) => Ok(m.presence_stats(channel)),
            PresenceRef::Redis(r) => r.presence_stats(channel).await,
        }
    }

    /// Periodic housekeeping (expired streams, idempotency keys).
    pub(crate) fn sweep(&self, now: Instant) {
        match self {
            Self::Disk(d) => d.sweep(now),
            _ => match self.presence_ref() {
                PresenceRef::Local(m) => m.sweep(now),
                PresenceRef::Redis(_) => {}
            },
        }
    }

    /// Writes what the engine holds in memory for a clean restart (the disk engine: its
    /// queue, a sync, and a checkpoint); the others keep nothing to write.
    pub(crate) async fn close(&self) {
        if let Self::Disk(d) = self {
            d.close().await;
        }
    }

    /// Publishes a cluster control message to every node (this one included) when `node` is
    /// `None`, else to that node. Redis has one control channel: an addressed message reaches
    /// every node there too, and the message itself names its addressee. A single-node
    /// engine has no other node: nothing is sent.
    pub(crate) async fn publish_control(
        &self,
        payload: Bytes,
        node: Option<&str>,
    ) -> Result<(), BrokerError> {
        match self {
            Self::Memory(_) | Self::Disk(_) => {
                let _ = (payload, node);
                Ok(())
            }
            Self::Redis(r) => r.publish_control(payload).await,
            Self::Nats { broker, .. } => broker.publish_control(payload, node).await,
        }
    }

    /// The engine can serve: reachable, and its fan-out connections are up.
    pub(crate) fn is_ready(&self) -> bool {
        match self {
            Self::Memory(_) | Self::Disk(_) => true,
            Self::Redis(r) => r.is_ready(),
            Self::Nats { broker, presence } => {
                broker.is_ready()
                    && match presence {
                        PresenceStore::Memory(_) => true,
                        PresenceStore::Redis(r) => r.is_ready(),
                    }
            }
        }
    }

    /// The health of each Redis shard the engine uses (none for the memory engine).
    pub(crate) fn redis_health(&self) -> Vec<ShardHealth> {
        match self {
            Self::Redis(r)
            | Self::Nats {
                presence: PresenceStore::Redis(r),
                ..
            } => r.health(),
            Self::Memory(_) | Self::Disk(_) | Self::Nats { .. } => Vec::new(),
        }
    }

    /// The disk engine's figures (none for the other engines).
    pub(crate) fn disk_stats(&self) -> Option<DiskStats> {
        match self {
            Self::Disk(d) => Some(d.stats()),
            _ => None,
        }
    }

    /// Hands everything already published to the network (the NATS client buffers writes;
    /// the other engines write each command before it returns).
    pub(crate) async fn flush(&self) {
        if let Self::Nats { broker, .. } = self {
            broker.flush().await;
        }
    }

    /// True when several nodes share this engine (cluster-wide operations go through its
    /// control channel).
    pub(crate) fn is_clustered(&self) -> bool {
        matches!(self, Self::Redis(_) | Self::Nats { .. })
    }
}
