//! The Redis engine: fan-out between nodes over Redis Pub/Sub, history in Redis Streams,
//! presence in Redis with a TTL, and a control channel for cluster-wide operations.
//!
//! Three deployments: standalone Redis (one instance, or several shards), a Redis Cluster
//! (Redis >= 7, sharded Pub/Sub), or a master behind Redis Sentinel. All run the same scripts
//! and commands through `connection::Commands`; only the Pub/Sub side differs (`pubsub` per
//! standalone shard and behind Sentinel, `sharded` for the cluster).
//!
//! # Keys
//!
//! Every key of a channel carries the channel as a Redis Cluster hash tag, so one channel's
//! keys and its Pub/Sub channel always live in one slot and one Lua script may touch them all
//! and publish (see `keys` for the exact rule):
//!
//! | Purpose | Name |
//! | --- | --- |
//! | Pub/Sub of a channel | `{prefix}.client.{<channel>}` |
//! | history stream (entry id = offset, field `d`) | `{prefix}.stream.{<channel>}` |
//! | stream meta (`e` epoch, `s` top offset) | `{prefix}.meta.{<channel>}` |
//! | idempotent publish result (5 minutes) | `{prefix}.result.{<channel>}.<key>` |
//! | presence data (client id -> ClientInfo) | `{prefix}.presence.data.{<channel>}` |
//! | presence expiry (client id scored by expire-at) | `{prefix}.presence.expire.{<channel>}` |
//! | cluster control (shard 0) | `{prefix}.control` |
//! | user status (`a` active, `o` online) | `{prefix}.status.{<user>}` |
//! | occupancy and node liveness (shard 0) | `{prefix}.lifecycle.{{prefix}.lifecycle}.*` |
//!
//! The lifecycle keys (see `lifecycle`) share one hash tag of their own.
//!
//! # Shards
//!
//! With several standalone `addresses`, a channel lives on the shard chosen by a jump
//! consistent hash of its name (stable across processes and releases: FNV-1a, then
//! Lamping–Veach). Each shard has one command connection ([`ConnectionManager`], reconnecting
//! by itself) and one Pub/Sub connection owned by a task (see `pubsub`).
//!
//! # Redis Cluster
//!
//! With `cluster_address`, the whole cluster is the engine's one shard: a `ClusterConnection`
//! routes every script and command to the master that owns its channel's slot, and Pub/Sub is
//! sharded (`SPUBLISH` from the publish script, `SSUBSCRIBE` on a RESP3 cluster connection, so
//! a message only travels to the master of its slot instead of the whole cluster bus). The
//! control channel is a sharded channel in the fixed slot of its name; see `sharded` for why,
//! and for how resubscription after a reconnect or a slot move is detected.
//!
//! # Redis Sentinel
//!
//! With `sentinel_address`, the master the sentinels name is the engine's one shard (standalone
//! layout): `sentinel` finds it, runs commands there, watches for failovers, and the Pub/Sub
//! task of `pubsub` resubscribes on the new master when it moves. Because replication is
//! asynchronous, every failover may have lost acknowledged writes: the scripts tag each
//! channel's meta with the master's replication id and start a new epoch when it changed (see
//! `scripts`), so nobody recovers across a failover. The per-channel `high` mark below is not
//! enough there: it only covers channels this node delivered, and is lost when the node
//! restarts.
//!
//! # Positions and faults
//!
//! A publish is one Lua script: assign the offset, append, trim, set TTLs, `PUBLISH` the
//! positioned payload and remember an idempotency result. The epoch is rotated whenever
//! continuity cannot be proven (see `scripts`). On this node, each channel's publications
//! must arrive with `offset == last + 1` in the same epoch; a gap, and every Pub/Sub
//! reconnect, is reported as [`BrokerEvents::on_insufficient_state`] so positioned
//! subscribers recover through history instead of silently skipping what they missed. Any
//! Redis error is [`BrokerError::Unavailable`]: a publish never reports success it did not
//! have.

mod codec;
mod connection;
mod keys;
mod lifecycle;
mod pubsub;
mod scripts;
mod sentinel;
mod sharded;
mod tls;

pub(crate) use self::sentinel::SentinelOptions;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rand::Rng;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::{ProtocolVersion, Script, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::connection::Commands;
use self::keys::{Keys, Layout};
pub(crate) use self::tls::RedisTls;
use super::{
    BrokerError, BrokerEvents, ClientInfo, ControlReceiver, HistoryPage, HistoryQuery,
    PresenceStats, Publication, PublishOptions, Published, StreamPosition,
};
use crate::breaker::{self, Breaker, Outcome, Transition};

/// How to reach Redis and name keys. Built by the server from `engine.redis.*`.
#[derive(Clone, Debug)]
pub(crate) struct RedisOptions {
    /// Which Redis, and how it is deployed.
    pub deployment: RedisDeployment,
    /// Prefix of every key and Pub/Sub channel; lets several deployments (or tests) share
    /// one Redis.
    pub prefix: String,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Limit on one command's round trip.
    pub io_timeout: Duration,
    /// How long a presence entry lives without a refresh.
    pub presence_ttl: Duration,
    /// How often this node refreshes the presence entries of its connections.
    pub presence_update_interval: Duration,
    /// Run the Pub/Sub side (channel fan-out and the control channel). Off when another
    /// broker (NATS) carries fan-out and control and Redis keeps only presence: then no
    /// Pub/Sub connection is opened and nothing arrives on the [`ControlReceiver`].
    pub fanout: bool,
    /// The circuit breaker of each shard's commands (`None`: none, every command waits its
    /// deadline).
    pub breaker: Option<breaker::Settings>,
    /// TLS to the Redis servers (`None`: plaintext, unless an address says `rediss://`).
    pub tls: Option<RedisTls>,
}

/// Where the engine's Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per engine, made once at start"
)]
pub(crate) enum RedisDeployment {
    /// Standalone instances, one `redis://host:port[/db]` URL per shard; channels are spread
    /// over them by a consistent hash of their name.
    Shards(Vec<String>),
    /// A Redis Cluster (Redis >= 7): seed node URLs; the rest of the topology is discovered.
    Cluster(Vec<String>),
    /// One master monitored by Redis Sentinel, followed across failovers (see `sentinel`).
    Sentinel(SentinelOptions),
}

/// The Redis engine. Clone = handle clone.
#[derive(Clone)]
pub(crate) struct RedisEngine {
    shared: Arc<Shared>,
}

struct Shared {
    options: RedisOptions,
    /// Names of keys and Pub/Sub channels.
    keys: Keys,
    /// `publish`, or `spublish` on a Redis Cluster (sharded Pub/Sub).
    publish_command: &'static str,
    /// Tag streams with the master's replication id and start a new epoch when it changed
    /// (behind Redis Sentinel: every failover may have lost acknowledged writes).
    generations: bool,
    shards: Vec<Shard>,
    events: Arc<dyn BrokerEvents>,
    /// Channels with local subscribers: reference counts and the last position seen.
    channels: Mutex<HashMap<String, ChannelState>>,
    /// Presence entries of this node's connections, re-added every update interval so
    /// that they outlive their TTL exactly as long as the connection does.
    presence: Mutex<HashMap<(String, String), ClientInfo>>,
    /// Stops the background tasks when the last handle goes.
    stop: CancellationToken,
    publish_script: Script,
    history_script: Script,
    presence_add_script: Script,
    presence_remove_script: Script,
    presence_get_script: Script,
    lifecycle_apply_script: Script,
    lifecycle_tick_script: Script,
    lifecycle_leave_script: Script,
    /// Node ids this engine has called the lifecycle store for: such a node missing from
    /// the live nodes was reaped (see `lifecycle`), a node's first call is no rejoin.
    lifecycle_known: Mutex<std::collections::HashSet<String>>,
}

/// One standalone Redis instance, or the whole Redis Cluster.
struct Shard {
    conn: Commands,
    /// Commands for the shard's Pub/Sub task.
    pubsub: mpsc::UnboundedSender<pubsub::Command>,
    /// The Pub/Sub connection is up and every local channel is subscribed on it.
    pubsub_up: Arc<AtomicBool>,
    /// The last command on the command connection succeeded.
    command_up: AtomicBool,
    /// The circuit breaker of the command connection (`None`: off).
    breaker: Option<Mutex<Breaker>>,
    /// Commands its open breaker refused.
    rejected: AtomicU64,
    /// Times its breaker opened.
    opened: AtomicU64,
    /// Unix milliseconds at which the Pub/Sub connection last proved alive: subscribed, a
    /// message received, a probe answered (0: never).
    pubsub_alive: Arc<AtomicU64>,
}

impl Shard {
    fn new(
        conn: Commands,
        pubsub: mpsc::UnboundedSender<pubsub::Command>,
        pubsub_up: Arc<AtomicBool>,
        pubsub_alive: Arc<AtomicU64>,
        options: &RedisOptions,
    ) -> Self {
        Self {
            conn,
            pubsub,
            pubsub_up,
            command_up: AtomicBool::new(true),
            breaker: options
                .breaker
                .map(|settings| Mutex::new(Breaker::new(settings, tokio::time::Instant::now()))),
            rejected: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            pubsub_alive,
        }
    }

    /// The breaker lets commands through (or there is none).
    fn breaker_closed(&self) -> bool {
        self.breaker.as_ref().is_none_or(|breaker| {
            breaker.lock().state(tokio::time::Instant::now()) == breaker::State::Closed
        })
    }
}

/// A channel with local subscribers.
#[derive(Debug, Default)]
struct ChannelState {
    /// Local subscriptions; the Redis subscription is dropped at zero.
    refs: usize,
    /// Position of the last publication received, for gap detection.
    last: Option<StreamPosition>,
    /// `last` is a stream top a history read saw, not a publication received: only an epoch
    /// change after it is a gap (publications above it may have been published before this
    /// node's Pub/Sub subscription took effect, and every subscriber read after that).
    seeded: bool,
    /// The highest position this node received, kept across Pub/Sub reconnects (unlike
    /// `last`): a stream top below it in its epoch proves that Redis lost publications this
    /// node delivered (a failover to a replica that had not got them), and the next history
    /// read starts a new epoch. A client's claim to have seen an offset above the top proves
    /// nothing, and rotates nothing: any client could wipe a channel's history with one.
    high: Option<StreamPosition>,
}

/// One shard's health, as the metrics show it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ShardHealth {
    /// The shard's index (0 for a Redis Cluster).
    pub shard: usize,
    /// Its breaker's state (`None`: no breaker).
    pub breaker: Option<breaker::State>,
    /// Commands its breaker let through that have not ended.
    pub commands_in_flight: u32,
    /// Commands its open breaker refused, since start.
    pub rejected: u64,
    /// Times its breaker opened, since start.
    pub opened: u64,
    /// Time since its Pub/Sub connection last proved alive (a message, a probe answered, a
    /// subscription); `None` before it ever did, or without Pub/Sub.
    pub pubsub_silent_for: Option<Duration>,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisStartError {
    /// No address was configured.
    #[error("no redis address configured")]
    NoAddress,
    /// An address is not a valid Redis URL.
    #[error("invalid redis address {address:?}: {message}")]
    Address {
        /// The address.
        address: String,
        /// The client library's message.
        message: String,
    },
    /// A TLS object cannot be used (a PEM value that does not read, a key without its
    /// certificate).
    #[error("{key}: {message}")]
    Tls {
        /// The TLS object's key (`engine.redis.tls`, `engine.redis.sentinel_tls`).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl RedisEngine {
    /// Builds the engine and starts its background tasks (Pub/Sub, presence refresh).
    /// Connects lazily: a Redis that is down at start is retried with backoff. Must be called
    /// inside a Tokio runtime.
    pub(crate) fn start(
        options: RedisOptions,
        events: Arc<dyn BrokerEvents>,
    ) -> Result<(Self, ControlReceiver), RedisStartError> {
        let stop = CancellationToken::new();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (layout, shards, starters) = match &options.deployment {
            RedisDeployment::Shards(addresses) => {
                let (shards, starters) = standalone_shards(addresses, &options)?;
                (Layout::Standalone, shards, starters)
            }
            RedisDeployment::Cluster(seeds) => {
                let (shard, starter) = cluster_shard(seeds, &options)?;
                (Layout::Cluster, vec![shard], vec![starter])
            }
            RedisDeployment::Sentinel(sentinel) => {
                let (shard, starter) = sentinel::shard(sentinel, &options, &stop)?;
                (Layout::Standalone, vec![shard], vec![starter])
            }
        };
        let shared = Arc::new(Shared {
            keys: Keys::new(&options.prefix, layout),
            publish_command: match layout {
                Layout::Standalone => "publish",
                Layout::Cluster => "spublish",
            },
            generations: matches!(options.deployment, RedisDeployment::Sentinel(_)),
            shards,
            events,
            channels: Mutex::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
            stop: stop.clone(),
            publish_script: Script::new(scripts::PUBLISH),
            history_script: Script::new(scripts::HISTORY),
            presence_add_script: Script::new(scripts::PRESENCE_ADD),
            presence_remove_script: Script::new(scripts::PRESENCE_REMOVE),
            presence_get_script: Script::new(scripts::PRESENCE_GET),
            lifecycle_apply_script: Script::new(scripts::LIFECYCLE_APPLY),
            lifecycle_tick_script: Script::new(scripts::LIFECYCLE_TICK),
            lifecycle_leave_script: Script::new(scripts::LIFECYCLE_LEAVE),
            lifecycle_known: Mutex::default(),
            options,
        });
        let engine = Self { shared };
        let starters = if engine.shared.options.fanout {
            starters
        } else {
            Vec::new()
        };
        for starter in starters {
            match starter {
                PubSubStarter::Standalone {
                    shard,
                    client,
                    commands,
                    up,
                    alive,
                } => {
                    let task = pubsub::Task {
                        engine: engine.downgrade(),
                        shard,
                        client,
                        commands,
                        up,
                        alive,
                        control: (shard == 0).then(|| control_tx.clone()),
                        stop: stop.clone(),
                    };
                    tokio::spawn(task.run());
                }
                PubSubStarter::Cluster {
                    conn,
                    pushes,
                    commands,
                    up,
                    alive,
                } => {
                    let task = sharded::Task {
                        engine: engine.downgrade(),
                        conn,
                        pushes,
                        commands,
                        up,
                        alive,
                        control: control_tx.clone(),
                        stop: stop.clone(),
                    };
                    tokio::spawn(task.run());
                }
            }
        }
        tokio::spawn(presence_refresher(engine.downgrade(), stop.clone()));
        tokio::spawn(health_prober(engine.downgrade(), stop));
        Ok((engine, control_rx))
    }

    /// Appends to history (when enabled) and publishes to every node, in one script.
    pub(crate) async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<Published, BrokerError> {
        let history = opts
            .history
            .filter(|history| history.size > 0 && !history.ttl.is_zero());
        let payload = codec::encode_publication(&publication);
        let shard = self.shard_for(channel);
        let idempotency_key = opts.idempotency_key.as_deref().unwrap_or("");
        let mut invocation = self.shared.publish_script.prepare_invoke();
        invocation
            .key(self.shared.keys.stream(channel))
            .key(self.shared.keys.meta(channel))
            .key(self.shared.keys.result(channel, idempotency_key))
            .arg(payload)
            .arg(history.map_or(0, |h| h.size))
            .arg(history.map_or(0, |h| ceil_secs(h.ttl)))
            .arg(history.map_or(0, |h| ceil_secs(h.meta_ttl)))
            .arg(new_epoch())
            .arg(self.pubsub_channel(channel))
            .arg(if idempotency_key.is_empty() {
                0
            } else {
                IDEMPOTENCY_TTL.as_secs()
            })
            .arg(if publication.delta { "1" } else { "0" })
            .arg(self.shared.publish_command)
            .arg(if self.shared.generations { "1" } else { "0" });
        let mut conn = self.shared.shards[shard].conn.clone();
        let value = self
            .run(shard, invocation.invoke_async::<Value>(&mut conn))
            .await?;
        let (offset, epoch, cached) = parse_publish_result(&value)
            .ok_or_else(|| BrokerError::Unavailable("unexpected publish result".to_owned()))?;
        Ok(Published {
            position: (history.is_some() && offset > 0).then_some(StreamPosition { offset, epoch }),
            from_cache: cached,
        })
    }

    /// Reads a channel's history and current position (creating its epoch if needed).
    pub(crate) async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        let shard = self.shard_for(channel);
        let since = query.since.clone().unwrap_or_default();
        let limit: i64 = match query.limit {
            None => -1,
            Some(n) => i64::try_from(n).unwrap_or(i64::MAX),
        };
        let proof = self
            .shared
            .channels
            .lock()
            .get(channel)
            .and_then(|state| state.high.clone())
            .unwrap_or_default();
        let mut invocation = self.shared.history_script.prepare_invoke();
        invocation
            .key(self.shared.keys.stream(channel))
            .key(self.shared.keys.meta(channel))
            .arg(new_epoch())
            .arg(ceil_secs(query.meta_ttl))
            .arg(limit)
            .arg(if query.reverse { "1" } else { "0" })
            .arg(since.offset)
            .arg(if query.since.is_some() { "1" } else { "0" })
            .arg(proof.offset)
            .arg(proof.epoch.as_str())
            .arg(if self.shared.generations { "1" } else { "0" });
        let mut conn = self.shared.shards[shard].conn.clone();
        let value = self
            .run(shard, invocation.invoke_async::<Value>(&mut conn))
            .await?;
        let page = parse_history(&value)
            .ok_or_else(|| BrokerError::Unavailable("unexpected history result".to_owned()))?;
        self.seed_position(channel, &page.top);
        if let Some(since) = &query.since
            && !since.epoch.is_empty()
            && since.epoch != page.top.epoch
        {
            return Err(BrokerError::UnrecoverablePosition);
        }
        Ok(page)
    }

    /// Drops a channel's publications, keeping its epoch and top offset.
    pub(crate) async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let shard = self.shard_for(channel);
        let mut conn = self.shared.shards[shard].conn.clone();
        let key = self.shared.keys.stream(channel);
        self.run(shard, async move {
            redis::cmd("DEL")
                .arg(key)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// One more local subscription to `channel`; returns once Redis confirmed the Pub/Sub
    /// subscription, so a history read after it cannot miss a publication.
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.shared
            .channels
            .lock()
            .entry(channel.to_owned())
            .or_default()
            .refs += 1;
        let (reply, confirmed) = oneshot::channel();
        let shard = &self.shared.shards[self.shard_for(channel)];
        let sent = shard.pubsub.send(pubsub::Command::Subscribe {
            channel: channel.to_owned(),
            reply,
        });
        let outcome = super::subscribe_confirmed(
            sent.is_ok(),
            confirmed,
            self.command_deadline(),
            "redis engine",
        )
        .await;
        if outcome.is_err() {
            self.release(channel);
        }
        outcome
    }

    /// One local subscription fewer; the Redis subscription goes with the last.
    pub(crate) async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.release(channel);
        Ok(())
    }

    /// Announces a join to the channel's subscribers on every node.
    pub(crate) async fn publish_join(
        &self,
        channel: &str,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        self.publish_raw(channel, codec::join_message(info)).await
    }

    /// Announces a leave to the channel's subscribers on every node.
    pub(crate) async fn publish_leave(
        &self,
        channel: &str,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        self.publish_raw(channel, codec::leave_message(info)).await
    }

    /// Adds or refreshes a connection's presence; this node keeps refreshing it until
    /// [`RedisEngine::remove_presence`].
    pub(crate) async fn add_presence(
        &self,
        channel: &str,
        client_id: &str,
        info: ClientInfo,
    ) -> Result<(), BrokerError> {
        self.shared
            .presence
            .lock()
            .insert((channel.to_owned(), client_id.to_owned()), info.clone());
        self.write_presence(channel, client_id, &info).await
    }

    /// Removes a connection's presence.
    pub(crate) async fn remove_presence(
        &self,
        channel: &str,
        client_id: &str,
    ) -> Result<(), BrokerError> {
        self.shared
            .presence
            .lock()
            .remove(&(channel.to_owned(), client_id.to_owned()));
        let shard = self.shard_for(channel);
        let mut invocation = self.shared.presence_remove_script.prepare_invoke();
        invocation
            .key(self.shared.keys.presence_data(channel))
            .key(self.shared.keys.presence_expire(channel))
            .arg(client_id);
        let mut conn = self.shared.shards[shard].conn.clone();
        self.run(shard, invocation.invoke_async::<()>(&mut conn))
            .await
    }

    /// Who is present in a channel, cluster-wide.
    pub(crate) async fn presence(
        &self,
        channel: &str,
    ) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        let shard = self.shard_for(channel);
        let mut invocation = self.shared.presence_get_script.prepare_invoke();
        invocation
            .key(self.shared.keys.presence_data(channel))
            .key(self.shared.keys.presence_expire(channel))
            .arg(unix_now());
        let mut conn = self.shared.shards[shard].conn.clone();
        let entries: Vec<(String, Vec<u8>)> =
            self.run(shard, invocation.invoke_async(&mut conn)).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(client, info)| Some((client, codec::decode_info(&info)?)))
            .collect())
    }

    /// Presence counters of a channel, cluster-wide.
    pub(crate) async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, BrokerError> {
        let presence = self.presence(channel).await?;
        let users: std::collections::HashSet<&str> =
            presence.values().map(|info| info.user.as_str()).collect();
        Ok(PresenceStats {
            num_clients: u32::try_from(presence.len()).unwrap_or(u32::MAX),
            num_users: u32::try_from(users.len()).unwrap_or(u32::MAX),
        })
    }

    /// Publishes a payload on the cluster control channel (every node, this one included,
    /// receives it on its [`ControlReceiver`]).
    pub(crate) async fn publish_control(&self, payload: Bytes) -> Result<(), BrokerError> {
        let mut conn = self.shared.shards[0].conn.clone();
        let channel = self.control_channel();
        let command = self.shared.publish_command;
        self.run(0, async move {
            redis::cmd(command)
                .arg(channel)
                .arg(payload.as_ref())
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// Every shard answers commands, its breaker is closed, and its Pub/Sub connection is up
    /// with every local channel subscribed (when it runs one).
    pub(crate) fn is_ready(&self) -> bool {
        let fanout = self.shared.options.fanout;
        self.shared.shards.iter().all(|shard| {
            (!fanout || shard.pubsub_up.load(Ordering::Relaxed))
                && shard.command_up.load(Ordering::Relaxed)
                && shard.breaker_closed()
        })
    }

    /// Each shard's health, for the metrics.
    pub(crate) fn health(&self) -> Vec<ShardHealth> {
        let now_ms = unix_ms();
        let fanout = self.shared.options.fanout;
        self.shared
            .shards
            .iter()
            .enumerate()
            .map(|(index, shard)| {
                let (breaker, in_flight) = shard.breaker.as_ref().map_or((None, 0), |b| {
                    let b = b.lock();
                    (Some(b.state(tokio::time::Instant::now())), b.in_flight())
                });
                let alive = shard.pubsub_alive.load(Ordering::Relaxed);
                ShardHealth {
                    shard: index,
                    breaker,
                    commands_in_flight: in_flight,
                    rejected: shard.rejected.load(Ordering::Relaxed),
                    opened: shard.opened.load(Ordering::Relaxed),
                    pubsub_silent_for: (fanout && alive > 0)
                        .then(|| Duration::from_millis(now_ms.saturating_sub(alive))),
                }
            })
            .collect()
    }

    // === internals ===

    fn downgrade(&self) -> WeakEngine {
        WeakEngine(Arc::downgrade(&self.shared))
    }

    fn release(&self, channel: &str) {
        let mut channels = self.shared.channels.lock();
        let Some(state) = channels.get_mut(channel) else {
            return;
        };
        state.refs = state.refs.saturating_sub(1);
        if state.refs == 0 {
            channels.remove(channel);
            drop(channels);
            let shard = &self.shared.shards[self.shard_for(channel)];
            let _ = shard.pubsub.send(pubsub::Command::Unsubscribe {
                channel: channel.to_owned(),
            });
        }
    }

    async fn publish_raw(&self, channel: &str, message: Vec<u8>) -> Result<(), BrokerError> {
        let shard = self.shard_for(channel);
        let mut conn = self.shared.shards[shard].conn.clone();
        let target = self.pubsub_channel(channel);
        let command = self.shared.publish_command;
        self.run(shard, async move {
            redis::cmd(command)
                .arg(target)
                .arg(message)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    async fn write_presence(
        &self,
        channel: &str,
        client_id: &str,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        let ttl = ceil_secs(self.shared.options.presence_ttl).max(1);
        let shard = self.shard_for(channel);
        let mut invocation = self.shared.presence_add_script.prepare_invoke();
        invocation
            .key(self.shared.keys.presence_data(channel))
            .key(self.shared.keys.presence_expire(channel))
            .arg(client_id)
            .arg(codec::encode_info(info))
            .arg(unix_now() + ttl)
            .arg(ttl);
        let mut conn = self.shared.shards[shard].conn.clone();
        self.run(shard, invocation.invoke_async::<()>(&mut conn))
            .await
    }

    /// Runs one command under the command deadline and the shard's circuit breaker, keeping
    /// the shard's health flag. An open breaker fails the command at once.
    async fn run<T>(
        &self,
        shard: usize,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        let state = &self.shared.shards[shard];
        let ticket = match &state.breaker {
            None => None,
            Some(breaker) => {
                let (ticket, transition) = breaker::call(breaker, tokio::time::Instant::now());
                self.report(shard, transition);
                let Some(ticket) = ticket else {
                    state.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(BrokerError::Unavailable(
                        "redis circuit breaker open".to_owned(),
                    ));
                };
                Some(ticket)
            }
        };
        let up = &state.command_up;
        let (result, outcome) = match tokio::time::timeout(self.command_deadline(), command).await {
            Ok(Ok(value)) => {
                up.store(true, Ordering::Relaxed);
                (Ok(value), Outcome::Success)
            }
            Ok(Err(error)) => {
                // An error reply is Redis answering; a broken or refused connection is not.
                let down = error.is_io_error()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || error.is_timeout();
                if down {
                    up.store(false, Ordering::Relaxed);
                }
                debug!(%error, "redis command failed");
                let outcome = match (down, error.is_timeout()) {
                    (_, true) => Outcome::Timeout,
                    (true, false) => Outcome::Failure,
                    (false, false) => Outcome::Success,
                };
                (Err(BrokerError::Unavailable(error.to_string())), outcome)
            }
            Err(_) => {
                up.store(false, Ordering::Relaxed);
                (
                    Err(BrokerError::Unavailable(
                        "redis command timed out".to_owned(),
                    )),
                    Outcome::Timeout,
                )
            }
        };
        if let Some(ticket) = ticket {
            let transition = ticket.finish(outcome, tokio::time::Instant::now());
            self.report(shard, transition);
        }
        result
    }

    /// Logs and counts a change of a shard's breaker.
    fn report(&self, shard: usize, transition: Option<Transition>) {
        match transition {
            Some(Transition::Opened) => {
                self.shared.shards[shard]
                    .opened
                    .fetch_add(1, Ordering::Relaxed);
                warn!(
                    shard,
                    "redis circuit breaker opened: commands fail at once until a probe succeeds"
                );
            }
            Some(Transition::Closed) => {
                info!(shard, "redis circuit breaker closed: redis answers again");
            }
            None => {}
        }
    }

    fn command_deadline(&self) -> Duration {
        self.shared.options.io_timeout + self.shared.options.connect_timeout
    }

    fn shard_for(&self, channel: &str) -> usize {
        jump_hash(fnv1a(channel.as_bytes()), self.shared.shards.len())
    }

    fn pubsub_channel(&self, channel: &str) -> String {
        self.shared.keys.pubsub(channel)
    }

    fn control_channel(&self) -> String {
        self.shared.keys.control()
    }

    /// The channel named by a Pub/Sub channel of this prefix, if it is one.
    fn channel_of<'a>(&self, pubsub_channel: &'a str) -> Option<&'a str> {
        self.shared.keys.channel_of(pubsub_channel)
    }

    /// A history read saw the stream's top: gap detection of a local channel continues from
    /// there. Without it, a channel that has received no publication since it was subscribed
    /// here has no last position, and an epoch change before its first publication (the meta
    /// expired, or was lost) would pass unnoticed: its positioned subscribers hold a position
    /// in the old epoch that the new epoch's offsets would seem to continue.
    fn seed_position(&self, channel: &str, top: &StreamPosition) {
        let mut channels = self.shared.channels.lock();
        let Some(state) = channels.get_mut(channel) else {
            return;
        };
        let seed = match &state.last {
            None => true,
            Some(last) => state.seeded && last.epoch == top.epoch && last.offset < top.offset,
        };
        if seed {
            state.last = Some(top.clone());
            state.seeded = true;
        }
    }

    /// Handles one message of a channel: gap detection, then delivery.
    fn on_channel_message(&self, channel: &str, payload: &[u8]) {
        let Some(message) = codec::decode_message(payload) else {
            warn!(channel, "undecodable pub/sub message ignored");
            return;
        };
        let events = &self.shared.events;
        match message {
            codec::ChannelMessage::Publication {
                publication,
                position,
                previous,
            } => {
                let gap =
                    {
                        let mut channels = self.shared.channels.lock();
                        let Some(state) = channels.get_mut(channel) else {
                            return;
                        };
                        let gap = match (&state.last, &position) {
                            (Some(last), Some(now)) if state.seeded => last.epoch != now.epoch,
                            (Some(last), Some(now)) => {
                                last.epoch != now.epoch || now.offset != last.offset + 1
                            }
                            _ => false,
                        };
                        if let Some(now) = &position {
                            state.last = Some(now.clone());
                            state.seeded = false;
                            if state.high.as_ref().is_none_or(|high| {
                                high.epoch != now.epoch || high.offset < now.offset
                            }) {
                                state.high = Some(now.clone());
                            }
                        }
                        gap
                    };
                if gap {
                    debug!(channel, "publication gap: insufficient state");
                    events.on_insufficient_state(channel);
                }
                let event = super::PublicationEvent {
                    publication,
                    position,
                    previous,
                };
                events.on_publication(channel, &event);
            }
            codec::ChannelMessage::Join(info) => events.on_join(channel, &info),
            codec::ChannelMessage::Leave(info) => events.on_leave(channel, &info),
        }
    }

    /// Local channels of one shard.
    fn channels_of_shard(&self, shard: usize) -> Vec<String> {
        self.shared
            .channels
            .lock()
            .keys()
            .filter(|channel| self.shard_for(channel) == shard)
            .cloned()
            .collect()
    }

    /// After a Pub/Sub reconnect: what arrived while it was down is unknown, so every local
    /// channel of the shard restarts gap detection and its positioned subscribers recover.
    fn lost_continuity(&self, channels: &[String]) {
        {
            let mut map = self.shared.channels.lock();
            for channel in channels {
                if let Some(state) = map.get_mut(channel) {
                    state.last = None;
                    state.seeded = false;
                }
            }
        }
        for channel in channels {
            self.shared.events.on_insufficient_state(channel);
        }
    }

    fn is_local_channel(&self, channel: &str) -> bool {
        self.shared.channels.lock().contains_key(channel)
    }
}

impl fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEngine")
            .field("prefix", &self.shared.options.prefix)
            .field("shards", &self.shared.shards.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A handle that does not keep the engine alive (held by its own background tasks).
#[derive(Clone)]
struct WeakEngine(std::sync::Weak<Shared>);

impl WeakEngine {
    fn upgrade(&self) -> Option<RedisEngine> {
        self.0.upgrade().map(|shared| RedisEngine { shared })
    }
}

/// What a Pub/Sub task needs, gathered before the engine exists.
enum PubSubStarter {
    Standalone {
        shard: usize,
        client: pubsub::Source,
        commands: mpsc::UnboundedReceiver<pubsub::Command>,
        up: Arc<AtomicBool>,
        alive: Arc<AtomicU64>,
    },
    Cluster {
        conn: redis::cluster_async::ClusterConnection,
        pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
        commands: mpsc::UnboundedReceiver<pubsub::Command>,
        up: Arc<AtomicBool>,
        alive: Arc<AtomicU64>,
    },
}

/// One shard per standalone address.
fn standalone_shards(
    addresses: &[String],
    options: &RedisOptions,
) -> Result<(Vec<Shard>, Vec<PubSubStarter>), RedisStartError> {
    if addresses.is_empty() {
        return Err(RedisStartError::NoAddress);
    }
    let mut shards = Vec::with_capacity(addresses.len());
    let mut starters = Vec::with_capacity(addresses.len());
    for (shard, address) in addresses.iter().enumerate() {
        let bad = |e: redis::RedisError| RedisStartError::Address {
            address: address.clone(),
            message: e.to_string(),
        };
        let client = match &options.tls {
            Some(tls) => tls.client_for_url(address),
            None => redis::Client::open(address.as_str()),
        }
        .map_err(bad)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.io_timeout))
            .set_number_of_retries(1)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(bad)?;
        let (tx, commands) = mpsc::unbounded_channel();
        let up = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(AtomicU64::new(0));
        shards.push(Shard::new(
            Commands::Standalone(conn),
            tx,
            up.clone(),
            alive.clone(),
            options,
        ));
        starters.push(PubSubStarter::Standalone {
            shard,
            client: pubsub::Source::Fixed(Box::new(client)),
            commands,
            up,
            alive,
        });
    }
    Ok((shards, starters))
}

/// The Redis Cluster as one shard: a command connection, and a RESP3 connection whose push
/// messages (sharded Pub/Sub) go to the `sharded` task. Both connect in the background.
fn cluster_shard(
    seeds: &[String],
    options: &RedisOptions,
) -> Result<(Shard, PubSubStarter), RedisStartError> {
    if seeds.is_empty() {
        return Err(RedisStartError::NoAddress);
    }
    let bad = |e: redis::RedisError| RedisStartError::Address {
        address: seeds.join(","),
        message: e.to_string(),
    };
    let builder = || {
        let builder = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.io_timeout)
            .retries(CLUSTER_RETRIES);
        match &options.tls {
            Some(tls) => builder
                .tls(if tls.insecure {
                    redis::TlsMode::Insecure
                } else {
                    redis::TlsMode::Secure
                })
                .certs(tls.certificates()),
            None => builder,
        }
    };
    // The client library checks URLs lazily; a bad one is reported here, by itself.
    for seed in seeds {
        redis::Client::open(seed.as_str()).map_err(|e| RedisStartError::Address {
            address: seed.clone(),
            message: e.to_string(),
        })?;
    }
    let config = ClusterConfig::new()
        .set_connection_timeout(options.connect_timeout)
        .set_response_timeout(options.io_timeout);
    let conn = builder()
        .build()
        .map_err(bad)?
        .get_pending_async_connection_with_config(config.clone());
    let (push_tx, pushes) = mpsc::unbounded_channel();
    let pubsub = builder()
        .use_protocol(ProtocolVersion::RESP3)
        .push_sender(push_tx)
        .build()
        .map_err(bad)?
        .get_pending_async_connection_with_config(config);
    let (tx, commands) = mpsc::unbounded_channel();
    let up = Arc::new(AtomicBool::new(false));
    let alive = Arc::new(AtomicU64::new(0));
    let shard = Shard::new(
        Commands::Cluster(conn),
        tx,
        up.clone(),
        alive.clone(),
        options,
    );
    let starter = PubSubStarter::Cluster {
        conn: pubsub,
        pushes,
        commands,
        up,
        alive,
    };
    Ok((shard, starter))
}

/// Every [`HEALTH_PROBE_INTERVAL`], PINGs each shard that is not known to be healthy (its
/// last command failed, or its breaker is not closed): without traffic, that PING is the
/// half-open breaker's probe, so readiness comes back within about a second of Redis.
async fn health_prober(engine: WeakEngine, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEALTH_PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        for (index, shard) in engine.shared.shards.iter().enumerate() {
            if shard.command_up.load(Ordering::Relaxed) && shard.breaker_closed() {
                continue;
            }
            let mut conn = shard.conn.clone();
            let _ = engine
                .run(index, async move {
                    redis::cmd("PING").query_async::<()>(&mut conn).await
                })
                .await;
        }
    }
}

/// How often a shard that is not known to be healthy is probed.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Re-adds this node's presence entries every update interval, and probes each shard so
/// readiness recovers without traffic.
async fn presence_refresher(engine: WeakEngine, stop: CancellationToken) {
    let Some(interval) = engine
        .upgrade()
        .map(|e| e.shared.options.presence_update_interval)
    else {
        return;
    };
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        for shard in 0..engine.shared.shards.len() {
            let mut conn = engine.shared.shards[shard].conn.clone();
            let _ = engine
                .run(shard, async move {
                    redis::cmd("PING").query_async::<()>(&mut conn).await
                })
                .await;
        }
        let entries: Vec<((String, String), ClientInfo)> = engine
            .shared
            .presence
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ((channel, client), info) in entries {
            if let Err(error) = engine.write_presence(&channel, &client, &info).await {
                debug!(%error, channel, "presence refresh failed");
            }
        }
    }
}

fn parse_publish_result(value: &Value) -> Option<(u64, String, bool)> {
    let Value::Array(items) = value else {
        return None;
    };
    let offset = as_u64(items.first()?)?;
    let epoch = as_string(items.get(1)?)?;
    let cached = as_u64(items.get(2)?)? == 1;
    Some((offset, epoch, cached))
}

fn parse_history(value: &Value) -> Option<HistoryPage> {
    let Value::Array(items) = value else {
        return None;
    };
    let top = as_u64(items.first()?)?;
    let epoch = as_string(items.get(1)?)?;
    let Value::Array(entries) = items.get(2)? else {
        return None;
    };
    let mut publications = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(entry) = entry else {
            return None;
        };
        let id = as_string(entry.first()?)?;
        let offset: u64 = id.split('-').next()?.parse().ok()?;
        let Value::Array(fields) = entry.get(1)? else {
            return None;
        };
        let Some(Value::BulkString(data)) = fields.get(1) else {
            return None;
        };
        publications.push(Arc::new(codec::decode_publication(data, offset)?));
    }
    Some(HistoryPage {
        publications,
        top: StreamPosition { offset: top, epoch },
    })
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whole seconds, rounded up so a sub-second TTL does not become "no expiry".
/// Unix time in milliseconds.
pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh epoch: 8 random ASCII letters, as Centrifugo generates them.
fn new_epoch() -> String {
    let mut rng = rand::rng();
    (0..EPOCH_LEN)
        .map(|_| char::from(EPOCH_ALPHABET[rng.random_range(0..EPOCH_ALPHABET.len())]))
        .collect()
}

/// FNV-1a: a stable 64-bit hash (the same on every node and every release).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Jump consistent hash (Lamping and Veach, 2014): adding a shard moves only 1/n of the keys.
fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let buckets = i64::try_from(buckets.max(1)).unwrap_or(i64::MAX);
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // Exact in f64: the shifted key has at most 31 significant bits.
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    usize::try_from(b).unwrap_or(0)
}

/// How long an idempotent publish result is remembered (Centrifugo: 5 minutes).
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(5 * 60);
/// Upper bound of the command connection's reconnect backoff.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);
/// Retries of a cluster command after `MOVED`/`ASK`/`TRYAGAIN` or a lost node link, inside
/// the command deadline (the slot map is refreshed in between).
const CLUSTER_RETRIES: u32 = 3;
const EPOCH_LEN: usize = 8;
const EPOCH_ALPHABET: &[u8; 52] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

#[cfg(test)]
mod tests;
