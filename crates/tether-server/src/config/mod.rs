//! Typed configuration of one tether node: what it is, its defaults, and its rules.
//!
//! Keys mirror Centrifugo v6 config names (`http_server.port`, `client.token.hmac_secret_key`,
//! `channel.namespaces`, ...) so an existing Centrifugo config ports with few edits. A config is
//! built by [`Config::load`]: defaults, then a file (JSON, YAML or TOML, by extension), then
//! `TETHER_*` environment overrides, then [`Config::validate`] — all before any port is bound.
//! Every error names the key it is about (`client.ping_interval: ...`).
//!
//! Durations are `Duration` in memory and humantime strings (`"25s"`, `"720h"`) on disk.
//! The file and environment machinery lives in the `load` submodule; this file holds the
//! shape, the defaults with their reasons, validation and channel-to-namespace lookup.
//! [`TokenConfig`] is owned by [`crate::auth`] and re-exported here; its validation stays here.

mod consumers;
mod load;
mod proxy;

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::auth::TokenConfig;
use crate::auth::redacted;
pub use consumers::{
    AmqpConsumerConfig, CONSUMER_TYPES, ConsumerConfig, DataModeFields,
    NatsJetStreamConsumerConfig, PostgresConsumerConfig, PublicationDataMode,
    RedisStreamConsumerConfig, StreamPublicationDataMode,
};
pub use load::{EnvSource, ProcessEnv};
pub use proxy::{
    ChannelProxyConfig, ClientProxyConfig, DEFAULT_PROXY_NAME, EnabledProxy, NamedProxy, PemError,
    ProxyConfig, ProxyDisconnectConfig, ProxyErrorConfig, ProxyEvent, ProxyGrpcConfig,
    ProxyHttpConfig, RpcConfig, RpcNamespace, RpcNamespaceOptions, RpcPingConfig,
    StatusToCodeTransform, TlsClientConfig,
};

/// The whole configuration of one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where the node listens for WebSocket clients and the HTTP API.
    pub http_server: HttpServerConfig,
    /// Client connection behaviour: authentication, heartbeats, limits.
    pub client: ClientConfig,
    /// Channel naming rules and per-namespace options.
    pub channel: ChannelConfig,
    /// The server HTTP API (`POST /api/<method>`).
    pub http_api: HttpApiConfig,
    /// WebSocket transport limits.
    pub websocket: WebSocketConfig,
    /// The raw TCP transport (Protobuf, varint-length-delimited) on its own port.
    pub tcp: TcpConfig,
    /// Logging.
    pub log: LogConfig,
    /// Identity of this node in a cluster.
    pub node: NodeConfig,
    /// Where positions, history and presence live: `memory` (one node) or `redis` (a
    /// cluster of nodes sharing Redis).
    pub engine: EngineConfig,
    /// An alternative fan-out broker between nodes (NATS), without history; with it the
    /// engine keeps only presence.
    pub broker: BrokerConfig,
    /// Graceful shutdown on SIGTERM / SIGINT: the drain window and the exit deadline.
    pub shutdown: ShutdownConfig,
    /// Client RPC: the `"default"` RPC proxy and RPC namespaces.
    pub rpc: RpcConfig,
    /// Named backend proxies that namespaces and RPC namespaces refer to by name.
    pub proxies: Vec<NamedProxy>,
    /// Lifecycle events (online/offline, connect/disconnect, occupied/vacated,
    /// subscribe/unsubscribe) POSTed to the backend (tether's own; Centrifugo has none).
    pub webhook: WebhookConfig,
    /// The user status API (Centrifugo PRO's `update_user_status`, `get_user_status`,
    /// `delete_user_status`).
    pub user_status: UserStatusConfig,
    /// Async consumers: an outbox table, streams and queues the node reads server API
    /// commands from (Centrifugo's `consumers`, plus RabbitMQ).
    pub consumers: Vec<ConsumerConfig>,
}

/// Lifecycle events delivered to the backend (`webhook.*`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookConfig {
    /// Where events are POSTed (`http://` or `https://`); empty: no events.
    pub endpoint: String,
    /// Key of the `X-Tether-Signature: sha256=<hex>` HMAC-SHA256 of each body; empty: the
    /// header is not sent.
    pub secret: String,
    /// Event types to deliver; empty: all of them.
    pub events: Vec<String>,
    /// Deadline of one POST; a request over it is retried.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most events in one POST.
    pub batch_max_size: usize,
    /// How long a batch that is not full waits for more events.
    #[serde(with = "humantime_serde")]
    pub batch_max_delay: Duration,
    /// A user (or channel) left by its last connection (or subscriber) goes offline (is
    /// vacated) only when nobody came back within this time.
    #[serde(with = "humantime_serde")]
    pub offline_grace: Duration,
    /// Most events waiting for delivery on this node; more are dropped, counted in
    /// `tether_webhook_dropped_total` and logged.
    pub buffer_size: usize,
    /// TLS of an `https://` endpoint (as a proxy's `http.tls`: own CA, client certificate).
    pub tls: TlsClientConfig,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("endpoint", &self.endpoint)
            .field("secret", &redacted(&self.secret))
            .field("events", &self.events)
            .field("timeout", &self.timeout)
            .field("batch_max_size", &self.batch_max_size)
            .field("batch_max_delay", &self.batch_max_delay)
            .field("offline_grace", &self.offline_grace)
            .field("buffer_size", &self.buffer_size)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            secret: String::new(),
            events: Vec::new(),
            timeout: Duration::from_secs(5),
            batch_max_size: 1000,
            batch_max_delay: Duration::from_millis(50),
            offline_grace: Duration::from_secs(5),
            buffer_size: 100_000,
            tls: TlsClientConfig::default(),
        }
    }
}

/// Every lifecycle event type, as `webhook.events` names them.
pub const EVENT_TYPES: [&str; 8] = [
    "user_online",
    "user_offline",
    "connect",
    "disconnect",
    "channel_occupied",
    "channel_vacated",
    "subscribe",
    "unsubscribe",
];

/// The user status API (`user_status.*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserStatusConfig {
    /// Keep user statuses: the client RPC `update_user_status` and the server API methods.
    pub enabled: bool,
    /// How long a status is kept after its last update.
    #[serde(with = "humantime_serde")]
    pub expire_interval: Duration,
}

impl Default for UserStatusConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            expire_interval: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The engine (Centrifugo v6 `engine.*`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// `memory`, `disk` or `redis`.
    #[serde(rename = "type")]
    pub kind: EngineKind,
    /// Options of the Redis engine.
    pub redis: RedisEngineConfig,
    /// Options of the disk engine.
    pub disk: DiskEngineConfig,
}

/// The disk engine (`engine.disk.*`, tether's own: Centrifugo has no such engine).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiskEngineConfig {
    /// The store's directory; created if missing, locked while a node uses it.
    pub path: String,
    /// `always`: a publish is acknowledged once its record is on disk (concurrent publishes
    /// share a sync). `interval`: once written to the OS, synced every `fsync_interval`; a
    /// machine crash may lose the last interval's publications, and then every stream that
    /// may have lost one gets a new epoch.
    pub fsync: DiskFsync,
    /// How often the log is synced in `interval` mode.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Size of one segment file of the log, in bytes.
    pub segment_size: u64,
    /// How often the index is checkpointed (bounding the log replayed on start) and segments
    /// nothing refers to any more are deleted.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

/// When the disk engine acknowledges a publish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFsync {
    /// After the record is on disk.
    #[default]
    Always,
    /// After the record is written to the OS; synced every `fsync_interval`.
    Interval,
}

impl Default for DiskEngineConfig {
    fn default() -> Self {
        Self {
            path: "./tether-data".to_owned(),
            fsync: DiskFsync::Always,
            fsync_interval: Duration::from_millis(100),
            segment_size: 16 << 20,
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}

/// Which engine a node runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Embedded, single node.
    #[default]
    Memory,
    /// Embedded, single node, history and positions kept on local disk.
    Disk,
    /// Redis shared by every node.
    Redis,
}

/// The Redis engine (`engine.redis.*`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisEngineConfig {
    /// Standalone Redis: `redis://host:port[/db]`, one or a list; channels are sharded over a
    /// list by a consistent hash of their name, so every node must list the same addresses in
    /// the same order. Empty (the default) means `redis://127.0.0.1:6379` unless
    /// `cluster_address` is set; the two are mutually exclusive.
    #[serde(deserialize_with = "one_or_many")]
    pub address: Vec<String>,
    /// Redis Cluster (Redis >= 7): seed node URLs `redis://host:port`, one or a list; the rest
    /// of the topology is discovered. Channels are spread over the cluster's slots and Pub/Sub
    /// is sharded (`SPUBLISH`/`SSUBSCRIBE`).
    #[serde(deserialize_with = "one_or_many")]
    pub cluster_address: Vec<String>,
    /// Redis Sentinel: sentinels as `host:port`, one or a list. The master monitored as
    /// `sentinel_master_name` is discovered through them and followed across failovers;
    /// excludes `address` and `cluster_address`.
    #[serde(deserialize_with = "one_or_many")]
    pub sentinel_address: Vec<String>,
    /// The name the sentinels monitor the master under (required with `sentinel_address`).
    pub sentinel_master_name: String,
    /// ACL user on the sentinels.
    pub sentinel_user: String,
    /// Password of the sentinels. A secret: kept out of `Debug` output.
    pub sentinel_password: String,
    /// Connection name (`CLIENT SETNAME`) on the sentinels.
    pub sentinel_client_name: String,
    /// TLS to the sentinels (Centrifugo's TLS object).
    pub sentinel_tls: TlsClientConfig,
    /// TLS to the Redis servers: the `address` shards, the `cluster_address` nodes, or the
    /// master found through the sentinels (Centrifugo's TLS object; a `rediss://` address
    /// uses TLS with the system's roots even without it).
    pub tls: TlsClientConfig,
    /// ACL user on the master found through the sentinels (with `address`, the URL carries
    /// it).
    pub user: String,
    /// Password of the master found through the sentinels (with `address`, the URL carries
    /// it). A secret: kept out of `Debug` output.
    pub password: String,
    /// Database number on the master found through the sentinels (with `address`, the URL
    /// carries it).
    pub db: i64,
    /// Prefix of every key and Pub/Sub channel, so deployments can share a Redis.
    pub prefix: String,
    /// Limit on establishing a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Limit on one command's round trip; a publish that exceeds it fails (error 100).
    #[serde(with = "humantime_serde")]
    pub io_timeout: Duration,
    /// How long a presence entry lives without a refresh; must exceed
    /// `client.presence_update_interval`.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// The circuit breaker of each shard's commands (tether's own keys).
    pub circuit_breaker: RedisBreakerConfig,
}

/// The circuit breaker of each Redis shard's commands (`engine.redis.circuit_breaker.*`):
/// while a shard is down or frozen, commands fail at once with the temporary error instead of
/// each waiting its deadline. Live fan-out (Pub/Sub) never goes through it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisBreakerConfig {
    /// On by default; off, every command waits its full deadline while Redis is away.
    pub enabled: bool,
    /// Commands waiting this long with no command answered meanwhile open it: a frozen Redis
    /// is noticed long before the first command's deadline. `0s` turns this rule off.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Failed commands in a row that open it (0: this rule off).
    pub consecutive_failures: u32,
    /// Share of failed commands in `window` (at least 10 of them) that opens it.
    pub failure_ratio: f64,
    /// The window `failure_ratio` counts over.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long it stays open before one command probes the shard again.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for RedisBreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            // Redis answers in well under a millisecond on a healthy network; a tenth of a
            // second of silence with commands waiting is a stall, and at 100 commands/s it
            // lets about 10 pile up.
            stall_timeout: Duration::from_millis(100),
            consecutive_failures: 3,
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(1),
        }
    }
}

// === impl RedisEngineConfig ===

impl fmt::Debug for RedisEngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEngineConfig")
            .field("address", &self.address)
            .field("cluster_address", &self.cluster_address)
            .field("sentinel_address", &self.sentinel_address)
            .field("sentinel_master_name", &self.sentinel_master_name)
            .field("sentinel_user", &self.sentinel_user)
            .field("sentinel_password", &redacted(&self.sentinel_password))
            .field("sentinel_client_name", &self.sentinel_client_name)
            .field("sentinel_tls", &self.sentinel_tls)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("db", &self.db)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("presence_ttl", &self.presence_ttl)
            .field("circuit_breaker", &self.circuit_breaker)
            .finish()
    }
}

impl RedisEngineConfig {
    /// The standalone shards: `address`, or a local Redis when it is empty.
    pub fn standalone_addresses(&self) -> Vec<String> {
        if self.address.is_empty() {
            vec![DEFAULT_REDIS_ADDRESS.to_owned()]
        } else {
            self.address.clone()
        }
    }
}

/// An alternative broker (`broker.*`, Centrifugo v6's names).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerConfig {
    /// Use a broker other than the engine for fan-out between nodes and the cluster control
    /// channel; the engine (`memory`: per node, `redis`: shared) keeps only presence. No
    /// namespace may have history: the NATS broker keeps none.
    pub enabled: bool,
    /// `nats`.
    #[serde(rename = "type")]
    pub kind: BrokerKind,
    /// Options of the NATS broker.
    pub nats: NatsBrokerConfig,
}

/// Which broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// NATS core subjects.
    #[default]
    Nats,
}

/// The NATS broker (`broker.nats.*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsBrokerConfig {
    /// Server URL, `nats://host:port`.
    pub url: String,
    /// First token(s) of every subject (`{prefix}.client.{channel}`, `{prefix}.control`,
    /// `{prefix}.node.{id}`), so deployments can share one NATS.
    pub prefix: String,
    /// Limit on connecting, at start (the node does not start without NATS) and on every
    /// reconnect.
    #[serde(with = "humantime_serde")]
    pub dial_timeout: Duration,
    /// Limit on handing one message to the connection and on confirming a subscription; a
    /// publish that exceeds it fails (error 100).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Centrifugo's wildcard subscriptions (`*`, `>` in channel names). Not supported: must
    /// stay `false`, and such channels are refused (error 107).
    pub allow_wildcards: bool,
}

/// Listening address of the HTTP server (WebSocket endpoint and HTTP API share it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpServerConfig {
    /// IP address or host name to bind. Loopback by default so that a node started without a
    /// config is not reachable from the network until someone decides it should be.
    pub address: String,
    /// TCP port. 0 is refused by [`Config::load`] (an ephemeral port is for tests only).
    pub port: u16,
    /// Largest request head (request line, headers and the blank line) in bytes; a longer
    /// one is answered with 431 before anything else happens.
    pub max_request_head_size: usize,
    /// Most headers in one request head; more is answered with 431.
    pub max_request_headers: usize,
}

/// Client connection options (Centrifugo `client.*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientConfig {
    /// Keys and claim checks for connection tokens (and subscription tokens unless
    /// `subscription_token.enabled`).
    pub token: TokenConfig,
    /// A separate key set for subscription tokens.
    pub subscription_token: SubscriptionTokenConfig,
    /// Connect without a token, and every channel permission check passes. For local
    /// experiments only; tokens that are sent are still verified.
    pub insecure: bool,
    /// Connect without a token as the anonymous user `""`.
    pub allow_anonymous_connect_without_token: bool,
    /// Refuse connection tokens with an empty `sub` (close 3507).
    pub disallow_anonymous_connection_tokens: bool,
    /// Interval between server pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long the server waits for a pong after a ping before closing with 3012. Must be
    /// smaller than `ping_interval`.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// How long a connection may stay open without sending connect (then 3502).
    #[serde(with = "humantime_serde")]
    pub stale_close_delay: Duration,
    /// Grace period after a connection token expires before the close with 3005.
    #[serde(with = "humantime_serde")]
    pub expired_close_delay: Duration,
    /// Grace period after a subscription token expires before unsubscribing.
    #[serde(with = "humantime_serde")]
    pub expired_sub_close_delay: Duration,
    /// Maximum channels per connection (error 106 beyond it).
    pub channel_limit: usize,
    /// Maximum connections per user; 0 disables the limit.
    pub user_connection_limit: usize,
    /// Bound of a connection's outbound queue in bytes; overflow disconnects with 3008.
    pub queue_max_size: usize,
    /// Largest `limit` a client may ask for in a history call.
    pub history_max_publication_limit: usize,
    /// Most publications a recovery may return before it is refused as not recovered.
    pub recovery_max_publication_limit: usize,
    /// How often a connection refreshes its presence entries.
    #[serde(with = "humantime_serde")]
    pub presence_update_interval: Duration,
    /// Origins allowed to open a WebSocket from a browser (patterns like `https://*.example.com`).
    pub allowed_origins: Vec<String>,
    /// Server-side subscription of every user to a personal channel.
    pub subscribe_to_user_personal_channel: PersonalChannelConfig,
    /// Most client connections (WebSocket and raw TCP) on this node; over it an upgrade is
    /// answered with 503 and a raw TCP connection is closed. 0 disables the limit.
    pub connection_limit: usize,
    /// Most client connections from one IP address; over it as for `connection_limit`.
    /// 0 disables the limit.
    pub ip_connection_limit: usize,
    /// New client connections per second on this node (a token bucket with a burst of one
    /// second's worth); over it an upgrade is answered with 503 before it happens and a raw
    /// TCP connection is closed. 0 disables the limit.
    pub connection_rate_limit: u32,
    /// Commands per second of one connection (a token bucket): over it a command gets error
    /// 111; persistently over it the connection is closed with 3013.
    pub command_rate_limit: CommandRateLimit,
    /// Time to receive a complete HTTP request head after the TCP accept; slow or silent
    /// upgrades (and API requests) are closed after it.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// The connect and refresh proxies.
    pub proxy: ClientProxyConfig,
}

/// A connection's command rate limit (`client.command_rate_limit`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandRateLimit {
    /// Commands per second refilled into the bucket; 0 disables the limit. Pongs are free.
    pub rate: f64,
    /// Bucket size: commands a connection may send at once.
    pub burst: u32,
    /// Rejected commands within `window` that close the connection with 3013 (0 never
    /// closes it).
    pub disconnect_after: u32,
    /// The period over which rejections are counted.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

/// Graceful shutdown (`shutdown.*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShutdownConfig {
    /// Client connections are told to reconnect elsewhere (3001) in jittered batches spread
    /// over this window, so they do not all come back at the same instant.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// The process exits this long after the signal at the latest, whatever is still open.
    /// Must be longer than `drain_window`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// Separate keys for subscription tokens (Centrifugo `client.subscription_token`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscriptionTokenConfig {
    /// Use `token` below for subscription tokens instead of `client.token`.
    pub enabled: bool,
    /// The key set, written inline beside `enabled`.
    #[serde(flatten)]
    pub token: TokenConfig,
}

/// Personal channel subscription (Centrifugo `client.subscribe_to_user_personal_channel`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PersonalChannelConfig {
    /// Subscribe every non-anonymous connection to `#<user>` (or `<ns>:#<user>`).
    pub enabled: bool,
    /// Namespace of the personal channel; empty = no namespace.
    pub personal_channel_namespace: String,
    /// Keep at most one connection per user (needs presence in that namespace).
    pub single_connection: bool,
}

/// Channel naming and namespaces (Centrifugo `channel.*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelConfig {
    /// Longest accepted channel name in bytes.
    pub max_length: usize,
    /// Prefix of private channels, which need a subscription token.
    pub private_prefix: String,
    /// Separates a namespace from the rest of a channel name.
    pub namespace_boundary: String,
    /// Starts the user list of a user-limited channel (`dialog#42,43`).
    pub user_boundary: String,
    /// Separates users in a user-limited channel.
    pub user_separator: String,
    /// Default TTL of a stream's meta (epoch and top offset); namespaces may override it.
    #[serde(with = "humantime_serde")]
    pub history_meta_ttl: Duration,
    /// Options of channels without a namespace.
    pub without_namespace: NamespaceOptions,
    /// Named option sets; a channel `ns:rest` uses the one named `ns`.
    pub namespaces: Vec<Namespace>,
    /// The channel proxies called `"default"`, which namespaces turn on per event.
    pub proxy: ChannelProxyConfig,
}

/// One named set of channel options.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    /// Name, matching `^[-a-zA-Z0-9_]{2,}$`.
    #[serde(default)]
    pub name: String,
    /// The options, written inline beside `name`.
    #[serde(flatten)]
    pub options: NamespaceOptions,
}

/// Channel options (Centrifugo namespace options). All off / zero by default; proxy names
/// are `"default"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamespaceOptions {
    /// Keep presence (client id -> client info).
    pub presence: bool,
    /// Emit join/leave events.
    pub join_leave: bool,
    /// Deliver join/leave to every subscriber, not only those who asked.
    pub force_push_join_leave: bool,
    /// Publications kept in history; history is on when this and `history_ttl` are > 0.
    pub history_size: usize,
    /// How long history is kept.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Stream meta TTL; `None` inherits `channel.history_meta_ttl`.
    #[serde(with = "humantime_serde")]
    pub history_meta_ttl: Option<Duration>,
    /// Every subscription is positioned.
    pub force_positioning: bool,
    /// Clients may ask for positioning.
    pub allow_positioning: bool,
    /// Every subscription is recoverable.
    pub force_recovery: bool,
    /// Clients may ask for recovery.
    pub allow_recovery: bool,
    /// Recovery mode of forced recovery.
    pub force_recovery_mode: RecoveryMode,
    /// Any non-anonymous client may subscribe.
    pub allow_subscribe_for_client: bool,
    /// Anonymous clients may subscribe too (with `allow_subscribe_for_client`).
    pub allow_subscribe_for_anonymous: bool,
    /// Subscribers may publish.
    pub allow_publish_for_subscriber: bool,
    /// Any non-anonymous client may publish.
    pub allow_publish_for_client: bool,
    /// Anonymous clients may publish.
    pub allow_publish_for_anonymous: bool,
    /// Subscribers may read history.
    pub allow_history_for_subscriber: bool,
    /// Any non-anonymous client may read history.
    pub allow_history_for_client: bool,
    /// Anonymous clients may read history.
    pub allow_history_for_anonymous: bool,
    /// Subscribers may read presence.
    pub allow_presence_for_subscriber: bool,
    /// Any non-anonymous client may read presence.
    pub allow_presence_for_client: bool,
    /// Anonymous clients may read presence.
    pub allow_presence_for_anonymous: bool,
    /// Enable `#`-limited channels.
    pub allow_user_limited_channels: bool,
    /// Regex for the part after `ns:` of client-side subscriptions; empty = none.
    pub channel_regex: String,
    /// Delta types clients may negotiate (`"fossil"`).
    pub allowed_delta_types: Vec<String>,
    /// Mark every publication as a delta candidate.
    pub delta_publish: bool,
    /// Ask a proxy whether a client may subscribe (clients without a subscription token,
    /// channels that are not user-limited).
    pub subscribe_proxy_enabled: bool,
    /// `"default"` (`channel.proxy.subscribe`) or the name of a `proxies` entry.
    pub subscribe_proxy_name: String,
    /// Ask a proxy whether (and what) a client may publish.
    pub publish_proxy_enabled: bool,
    /// `"default"` (`channel.proxy.publish`) or the name of a `proxies` entry.
    pub publish_proxy_name: String,
    /// Extend subscriptions at `expire_at` through a proxy.
    pub sub_refresh_proxy_enabled: bool,
    /// `"default"` (`channel.proxy.sub_refresh`) or the name of a `proxies` entry.
    pub sub_refresh_proxy_name: String,
    /// Subscriptions stream from a gRPC proxy; excludes the subscribe, publish and sub
    /// refresh proxies in the same namespace.
    pub subscribe_stream_proxy_enabled: bool,
    /// `"default"` (`channel.proxy.subscribe_stream`) or the name of a `proxies` entry.
    pub subscribe_stream_proxy_name: String,
    /// The stream is bidirectional: client publications go to the backend over it.
    pub subscribe_stream_proxy_bidirectional: bool,
}

/// How a recoverable subscription recovers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecoveryMode {
    /// Send every missed publication.
    #[default]
    Stream,
    /// Send only the latest publication.
    Cache,
}

/// Server HTTP API options (Centrifugo `http_api.*`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpApiConfig {
    /// API key expected in `X-API-Key` or `Authorization: apikey <key>`.
    pub key: String,
    /// Accept API calls without a key.
    pub insecure: bool,
    /// How errors are reported.
    pub error_mode: ApiErrorMode,
}

/// How the HTTP API reports errors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiErrorMode {
    /// Errors inside a 200 JSON body, as Centrifugo does by default.
    #[default]
    Default,
    /// Errors mapped to HTTP status codes.
    Transport,
}

/// WebSocket transport options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebSocketConfig {
    /// Largest accepted message in bytes; larger closes with 1009.
    pub message_size_limit: usize,
}

/// Raw TCP transport options: the Protobuf protocol as a byte stream of
/// uvarint-length-delimited commands and replies, for native apps and devices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpConfig {
    /// Listen for raw TCP clients.
    pub enabled: bool,
    /// IP address or host name to bind; loopback by default, like `http_server.address`.
    pub address: String,
    /// TCP port. 0 is refused by [`Config::load`] while enabled (tests bind port 0 by hand).
    pub port: u16,
}

/// Logging options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// One of `none`, `trace`, `debug`, `info`, `warn`, `error`; `RUST_LOG` overrides it.
    pub level: String,
    /// Line format.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Node identity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// Node name; empty means the host name (or `tether`), filled in by [`Config::load`].
    pub name: String,
}

/// A channel's namespace is not configured (client error 102).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown channel namespace {name:?}")]
pub struct UnknownNamespace {
    /// The namespace part of the channel.
    pub name: String,
}

/// Why a configuration was refused. Every message names the key (or file, or variable).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file's extension is not `.json`, `.yaml`, `.yml` or `.toml`.
    #[error("config file {path}: unsupported extension, use .json, .yaml, .yml or .toml")]
    UnsupportedFormat {
        /// The file.
        path: String,
    },
    /// The file is not valid JSON, YAML or TOML.
    #[error("cannot parse config file {path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// The file has a key tether does not know.
    #[error("{key}: unknown key")]
    UnknownKey {
        /// Dotted path of the key, e.g. `http_server.prot`.
        key: String,
    },
    /// An environment variable's value does not fit its key's type.
    #[error("{var}: {message} (sets {key})")]
    Env {
        /// The variable, e.g. `TETHER_CLIENT_INSECURE`.
        var: String,
        /// Dotted path of the key it sets.
        key: String,
        /// What is wrong with the value.
        message: String,
    },
    /// A value has the wrong type, or breaks a rule.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted path of the key, e.g. `channel.namespaces[1].name`.
        key: String,
        /// What is wrong, lowercase.
        message: String,
    },
}

// === impl Config ===

impl Config {
    /// Reads `path` (format by extension `.json`/`.yaml`/`.yml`/`.toml`; no file = defaults),
    /// applies `TETHER_*` overrides from `env`, fills in `node.name`, then validates. Port 0
    /// is refused here (and only here) so tests can build a `Config` on port 0 by hand.
    pub fn load(path: Option<&Path>, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        Self::load_with_warnings(path, env).map(|(config, _)| config)
    }

    /// Like [`Config::load`], and also returns warnings (e.g. `TETHER_*` variables that match
    /// no key) for the caller to log once logging is set up.
    pub fn load_with_warnings(
        path: Option<&Path>,
        env: &dyn EnvSource,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let (mut config, warnings) = load::load(path, env)?;
        if config.http_server.port == 0 {
            return Err(invalid("http_server.port", "must not be 0"));
        }
        if config.tcp.enabled && config.tcp.port == 0 {
            return Err(invalid("tcp.port", "must not be 0"));
        }
        if config.node.name.is_empty() {
            config.node.name = default_node_name();
        }
        config.validate()?;
        Ok((config, warnings))
    }

    /// Checks the rules that types cannot express. Errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_client()?;
        self.validate_channel()?;
        validate_log_level(&self.log.level)?;
        self.validate_engine()?;
        if self.websocket.message_size_limit == 0 {
            return Err(invalid(
                "websocket.message_size_limit",
                "must be greater than 0",
            ));
        }
        self.validate_tcp()?;
        self.validate_limits()?;
        self.validate_proxies()?;
        self.validate_webhook()?;
        consumers::validate(&self.consumers)?;
        Ok(())
    }

    fn validate_webhook(&self) -> Result<(), ConfigError> {
        if self.user_status.enabled && self.user_status.expire_interval < Duration::from_secs(1) {
            return Err(invalid(
                "user_status.expire_interval",
                "must be at least 1s",
            ));
        }
        let webhook = &self.webhook;
        if let Some(unknown) = webhook
            .events
            .iter()
            .find(|kind| !EVENT_TYPES.contains(&kind.as_str()))
        {
            return Err(invalid(
                "webhook.events",
                format!(
                    "unknown event type {unknown:?}; known: {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
        if webhook.endpoint.is_empty() {
            return Ok(());
        }
        match webhook.endpoint.parse::<hyper::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => {
                return Err(invalid(
                    "webhook.endpoint",
                    format!("{:?} is not an http:// or https:// URL", webhook.endpoint),
                ));
            }
        }
        if webhook.batch_max_size == 0 {
            return Err(invalid("webhook.batch_max_size", "must be greater than 0"));
        }
        if webhook.buffer_size == 0 {
            return Err(invalid("webhook.buffer_size", "must be greater than 0"));
        }
        if webhook.timeout.is_zero() {
            return Err(invalid("webhook.timeout", "must be positive"));
        }
        Ok(())
    }

    /// Proxy rules (compat-proxy §2.1 "Validation", §8). Proxy objects are checked only
    /// where they are used: connect/refresh when enabled, `channel.proxy.<event>` and
    /// `rpc.proxy` when some namespace enables that event under the name `"default"`, and
    /// every `proxies` entry always.
    fn validate_proxies(&self) -> Result<(), ConfigError> {
        for (index, named) in self.proxies.iter().enumerate() {
            let key = format!("proxies[{index}]");
            if named.name == DEFAULT_PROXY_NAME {
                return Err(invalid(
                    format!("{key}.name"),
                    "proxy name default is reserved",
                ));
            }
            if !is_valid_proxy_name(&named.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?} must match ^[-a-zA-Z0-9_.]{{2,}}$", named.name),
                ));
            }
            if self.proxies[..index]
                .iter()
                .any(|other| other.name == named.name)
            {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("duplicate proxy name {:?}", named.name),
                ));
            }
            validate_proxy(&named.proxy, &key)?;
        }
        for (key, enabled) in [
            ("client.proxy.connect", &self.client.proxy.connect),
            ("client.proxy.refresh", &self.client.proxy.refresh),
        ] {
            if enabled.enabled {
                validate_proxy(&enabled.proxy, key)?;
            }
        }
        self.validate_channel_proxies()?;
        self.validate_rpc_proxies()
    }

    fn validate_channel_proxies(&self) -> Result<(), ConfigError> {
        for (key, options) in self.channel.all_namespace_options() {
            if options.subscribe_stream_proxy_enabled
                && (options.subscribe_proxy_enabled
                    || options.publish_proxy_enabled
                    || options.sub_refresh_proxy_enabled)
            {
                return Err(invalid(
                    format!("{key}.subscribe_stream_proxy_enabled"),
                    "can not be used together with subscribe, publish or sub_refresh proxies",
                ));
            }
            for event in ProxyEvent::CHANNEL {
                let Some(name) = options.proxy_name(event) else {
                    continue;
                };
                let (proxy_key, proxy) = if name == DEFAULT_PROXY_NAME {
                    // Every channel event has a "default" object, so this never skips.
                    let Some(proxy) = self.proxy(event, name) else {
                        continue;
                    };
                    let proxy_key = format!("channel.proxy.{event}");
                    validate_proxy(proxy, &proxy_key)?;
                    (proxy_key, proxy)
                } else {
                    let index = self
                        .proxies
                        .iter()
                        .position(|named| named.name == name)
                        .ok_or_else(|| {
                            invalid(
                                format!("{key}.{event}_proxy_name"),
                                format!("{event} proxy with name {name:?} not found"),
                            )
                        })?;
                    (format!("proxies[{index}]"), &self.proxies[index].proxy)
                };
                // Centrifugo refuses to start with such a proxy: streams exist only over
                // gRPC.
                if event == ProxyEvent::SubscribeStream && proxy.endpoint.starts_with("http") {
                    return Err(invalid(
                        format!("{proxy_key}.endpoint"),
                        format!(
                            "only GRPC endpoints supported for the subscribe_stream proxy \
                             (used by {key})"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_rpc_proxies(&self) -> Result<(), ConfigError> {
        let rpc = &self.rpc;
        for (index, ns) in rpc.namespaces.iter().enumerate() {
            let key = format!("rpc.namespaces[{index}].name");
            if !is_valid_proxy_name(&ns.name) {
                return Err(invalid(
                    key,
                    format!("{:?} must match ^[-a-zA-Z0-9_.]{{2,}}$", ns.name),
                ));
            }
            if rpc.namespaces[..index]
                .iter()
                .any(|other| other.name == ns.name)
            {
                return Err(invalid(
                    key,
                    format!("duplicate rpc namespace name {:?}", ns.name),
                ));
            }
        }
        let namespaces =
            std::iter::once(("rpc.without_namespace".to_owned(), &rpc.without_namespace)).chain(
                rpc.namespaces
                    .iter()
                    .enumerate()
                    .map(|(index, ns)| (format!("rpc.namespaces[{index}]"), &ns.options)),
            );
        for (key, options) in namespaces {
            if !options.proxy_enabled {
                continue;
            }
            if options.proxy_name == DEFAULT_PROXY_NAME {
                validate_proxy(&rpc.proxy, "rpc.proxy")?;
            } else if self.named_proxy(&options.proxy_name).is_none() {
                return Err(invalid(
                    format!("{key}.proxy_name"),
                    format!("proxy {} not found for rpc", options.proxy_name),
                ));
            }
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let rate = &self.client.command_rate_limit;
        if !rate.rate.is_finite() || rate.rate < 0.0 {
            return Err(invalid(
                "client.command_rate_limit.rate",
                "must be a number >= 0",
            ));
        }
        if rate.rate > 0.0 && rate.burst == 0 {
            return Err(invalid(
                "client.command_rate_limit.burst",
                "must be greater than 0 when rate is set",
            ));
        }
        if rate.disconnect_after > 0 && rate.window.is_zero() {
            return Err(invalid(
                "client.command_rate_limit.window",
                "must be greater than 0 when disconnect_after is set",
            ));
        }
        if self.client.handshake_timeout.is_zero() {
            return Err(invalid(
                "client.handshake_timeout",
                "must be greater than 0",
            ));
        }
        if self.http_server.max_request_head_size < MIN_REQUEST_HEAD_SIZE {
            return Err(invalid(
                "http_server.max_request_head_size",
                format!("must be at least {MIN_REQUEST_HEAD_SIZE}"),
            ));
        }
        if self.http_server.max_request_headers == 0 {
            return Err(invalid(
                "http_server.max_request_headers",
                "must be greater than 0",
            ));
        }
        let shutdown = &self.shutdown;
        if shutdown.timeout <= shutdown.drain_window {
            return Err(invalid(
                "shutdown.timeout",
                format!(
                    "must be longer than shutdown.drain_window ({})",
                    humantime::format_duration(shutdown.drain_window)
                ),
            ));
        }
        Ok(())
    }

    fn validate_tcp(&self) -> Result<(), ConfigError> {
        let tcp = &self.tcp;
        if !tcp.enabled {
            return Ok(());
        }
        if tcp.address.trim().is_empty() {
            return Err(invalid("tcp.address", "must not be empty"));
        }
        if tcp.port != 0
            && tcp.port == self.http_server.port
            && tcp.address == self.http_server.address
        {
            return Err(invalid(
                "tcp.port",
                format!(
                    "must differ from http_server.port ({}) on the same address",
                    self.http_server.port
                ),
            ));
        }
        Ok(())
    }

    /// Namespace options for `channel`: a leading `private_prefix` is stripped, the part
    /// before the first `namespace_boundary` names the namespace; no boundary means
    /// `without_namespace`.
    ///
    /// A linear scan: deployments have a handful of namespaces, and comparing short strings
    /// beats hashing them at that size.
    pub fn namespace_for(&self, channel: &str) -> Result<&NamespaceOptions, UnknownNamespace> {
        let Some(name) = self.namespace_name(channel) else {
            return Ok(&self.channel.without_namespace);
        };
        self.channel
            .namespaces
            .iter()
            .find(|ns| ns.name == name)
            .map(|ns| &ns.options)
            .ok_or_else(|| UnknownNamespace {
                name: name.to_owned(),
            })
    }

    /// The namespace part of `channel` (see [`Config::namespace_for`]), `None` when the channel
    /// has no namespace boundary.
    pub fn namespace_name<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let prefix = &self.channel.private_prefix;
        let rest = if prefix.is_empty() {
            channel
        } else {
            channel.strip_prefix(prefix.as_str()).unwrap_or(channel)
        };
        let boundary = &self.channel.namespace_boundary;
        if boundary.is_empty() {
            return None;
        }
        rest.split_once(boundary.as_str()).map(|(name, _)| name)
    }

    /// True when a connection or subscription token key of any kind is configured.
    pub fn has_token_key(&self) -> bool {
        self.client.token.has_key()
    }

    /// The proxy object for `event` under `name`, as a namespace names it.
    ///
    /// Connect and refresh ignore `name`: they are `client.proxy.<event>`, and `None` unless
    /// enabled. For the other events `"default"` is `channel.proxy.<event>` (or `rpc.proxy`)
    /// and any other name is the `proxies` entry with that name (`None` if there is none;
    /// [`Config::validate`] refuses configs that refer to a missing one).
    pub fn proxy(&self, event: ProxyEvent, name: &str) -> Option<&ProxyConfig> {
        let connection = match event {
            ProxyEvent::Connect => Some(&self.client.proxy.connect),
            ProxyEvent::Refresh => Some(&self.client.proxy.refresh),
            _ => None,
        };
        if let Some(enabled) = connection {
            return enabled.enabled.then_some(&enabled.proxy);
        }
        if name != DEFAULT_PROXY_NAME {
            return self.named_proxy(name);
        }
        let channel = &self.channel.proxy;
        match event {
            ProxyEvent::Subscribe => Some(&channel.subscribe),
            ProxyEvent::Publish => Some(&channel.publish),
            ProxyEvent::SubRefresh => Some(&channel.sub_refresh),
            ProxyEvent::SubscribeStream => Some(&channel.subscribe_stream),
            ProxyEvent::Rpc => Some(&self.rpc.proxy),
            ProxyEvent::Connect | ProxyEvent::Refresh => None,
        }
    }

    /// RPC options for `method`: when `rpc.namespace_boundary` is non-empty and occurs in
    /// the method, the part before its first occurrence names the namespace (error 104 when
    /// unknown); otherwise `rpc.without_namespace`.
    pub fn rpc_namespace_for(
        &self,
        method: &str,
    ) -> Result<&RpcNamespaceOptions, UnknownNamespace> {
        let boundary = &self.rpc.namespace_boundary;
        let name = if boundary.is_empty() {
            None
        } else {
            method.split_once(boundary.as_str()).map(|(name, _)| name)
        };
        let Some(name) = name else {
            return Ok(&self.rpc.without_namespace);
        };
        self.rpc
            .namespaces
            .iter()
            .find(|ns| ns.name == name)
            .map(|ns| &ns.options)
            .ok_or_else(|| UnknownNamespace {
                name: name.to_owned(),
            })
    }

    /// The `proxies` entry called `name`.
    fn named_proxy(&self, name: &str) -> Option<&ProxyConfig> {
        self.proxies
            .iter()
            .find(|proxy| proxy.name == name)
            .map(|proxy| &proxy.proxy)
    }

    fn validate_client(&self) -> Result<(), ConfigError> {
        let c = &self.client;
        if c.ping_interval <= c.pong_timeout {
            return Err(invalid(
                "client.ping_interval",
                format!(
                    "must be greater than client.pong_timeout ({} <= {})",
                    humantime::format_duration(c.ping_interval),
                    humantime::format_duration(c.pong_timeout)
                ),
            ));
        }
        validate_token(&c.token, "client.token")?;
        if c.subscription_token.enabled {
            if !c.subscription_token.token.has_key() {
                return Err(invalid(
                    "client.subscription_token",
                    "enabled but no hmac_secret_key, rsa_public_key or ecdsa_public_key is set",
                ));
            }
            validate_token(&c.subscription_token.token, "client.subscription_token")?;
        }
        if c.queue_max_size == 0 {
            return Err(invalid("client.queue_max_size", "must be greater than 0"));
        }
        let personal = &c.subscribe_to_user_personal_channel;
        if personal.enabled {
            let key = "client.subscribe_to_user_personal_channel.personal_channel_namespace";
            let options = if personal.personal_channel_namespace.is_empty() {
                &self.channel.without_namespace
            } else {
                self.channel
                    .namespaces
                    .iter()
                    .find(|ns| ns.name == personal.personal_channel_namespace)
                    .map(|ns| &ns.options)
                    .ok_or_else(|| {
                        invalid(
                            key,
                            format!(
                                "namespace {:?} is not defined in channel.namespaces",
                                personal.personal_channel_namespace
                            ),
                        )
                    })?
            };
            if personal.single_connection && !options.presence {
                return Err(invalid(
                    "client.subscribe_to_user_personal_channel.single_connection",
                    "needs presence enabled in the personal channel namespace",
                ));
            }
        }
        Ok(())
    }

    fn validate_engine(&self) -> Result<(), ConfigError> {
        let disk = &self.engine.disk;
        if self.engine.kind == EngineKind::Disk {
            if disk.path.trim().is_empty() {
                return Err(invalid("engine.disk.path", "must not be empty"));
            }
            if !(MIN_SEGMENT..=MAX_SEGMENT).contains(&disk.segment_size) {
                return Err(invalid(
                    "engine.disk.segment_size",
                    "must be between 64 KiB and 1 GiB",
                ));
            }
            if disk.fsync == DiskFsync::Interval && disk.fsync_interval.is_zero() {
                return Err(invalid(
                    "engine.disk.fsync_interval",
                    "must be positive with fsync = \"interval\"",
                ));
            }
            if disk.checkpoint_interval.is_zero() {
                return Err(invalid(
                    "engine.disk.checkpoint_interval",
                    "must be positive",
                ));
            }
            if self.broker.enabled {
                return Err(invalid(
                    "engine.type",
                    "the disk engine is for a single node; it does not combine with broker.enabled",
                ));
            }
        }
        let redis = &self.engine.redis;
        if self.engine.kind == EngineKind::Redis {
            if !redis.cluster_address.is_empty() && !redis.address.is_empty() {
                return Err(invalid(
                    "engine.redis.cluster_address",
                    "set either engine.redis.address (standalone Redis) or \
                     engine.redis.cluster_address (Redis Cluster), not both",
                ));
            }
            self.validate_sentinel()?;
            for (key, addresses) in [
                ("engine.redis.address", &redis.address),
                ("engine.redis.cluster_address", &redis.cluster_address),
            ] {
                if let Some(bad) = addresses
                    .iter()
                    .find(|a| !(a.starts_with("redis://") || a.starts_with("rediss://")))
                {
                    return Err(invalid(key, format!("{bad:?} must be a redis:// URL")));
                }
            }
            if redis.presence_ttl <= self.client.presence_update_interval {
                return Err(invalid(
                    "engine.redis.presence_ttl",
                    "must be greater than client.presence_update_interval",
                ));
            }
            let breaker = &redis.circuit_breaker;
            if breaker.enabled {
                if !(breaker.failure_ratio > 0.0 && breaker.failure_ratio <= 1.0) {
                    return Err(invalid(
                        "engine.redis.circuit_breaker.failure_ratio",
                        "must be greater than 0 and at most 1",
                    ));
                }
                for (key, value) in [("window", breaker.window), ("open_for", breaker.open_for)] {
                    if value.is_zero() {
                        return Err(invalid(
                            format!("engine.redis.circuit_breaker.{key}"),
                            "must be greater than 0",
                        ));
                    }
                }
            }
        }
        if redis.prefix.is_empty() || redis.prefix.contains(['{', '}']) {
            return Err(invalid(
                "engine.redis.prefix",
                "must be non-empty and contain no braces (they delimit hash tags)",
            ));
        }
        if redis.io_timeout.is_zero() || redis.connect_timeout.is_zero() {
            return Err(invalid(
                "engine.redis.io_timeout",
                "timeouts must be greater than 0",
            ));
        }
        self.validate_broker()
    }

    fn validate_sentinel(&self) -> Result<(), ConfigError> {
        let redis = &self.engine.redis;
        if redis.sentinel_address.is_empty() {
            if !redis.sentinel_master_name.is_empty() {
                return Err(invalid(
                    "engine.redis.sentinel_master_name",
                    "needs engine.redis.sentinel_address",
                ));
            }
            if !redis.user.is_empty() || !redis.password.is_empty() || redis.db != 0 {
                return Err(invalid(
                    "engine.redis.password",
                    "user, password and db apply to the master found through \
                     engine.redis.sentinel_address; a redis:// URL carries its own",
                ));
            }
            return Ok(());
        }
        if !redis.address.is_empty() || !redis.cluster_address.is_empty() {
            return Err(invalid(
                "engine.redis.sentinel_address",
                "set one of engine.redis.address, engine.redis.cluster_address and \
                 engine.redis.sentinel_address",
            ));
        }
        if let Some(bad) = redis.sentinel_address.iter().find(|a| !is_host_port(a)) {
            return Err(invalid(
                "engine.redis.sentinel_address",
                format!("{bad:?} must be host:port"),
            ));
        }
        if redis.sentinel_master_name.is_empty() {
            return Err(invalid(
                "engine.redis.sentinel_master_name",
                "required with engine.redis.sentinel_address",
            ));
        }
        for (key, tls) in [
            ("engine.redis.tls", &redis.tls),
            ("engine.redis.sentinel_tls", &redis.sentinel_tls),
        ] {
            if tls.enabled && !tls.server_name.is_empty() {
                return Err(invalid(
                    format!("{key}.server_name"),
                    "not supported for Redis: the certificate must name the host of the address",
                ));
            }
        }
        if redis.db < 0 {
            return Err(invalid("engine.redis.db", "must not be negative"));
        }
        Ok(())
    }

    fn validate_broker(&self) -> Result<(), ConfigError> {
        let nats = &self.broker.nats;
        if !nats.url.starts_with("nats://") || nats.url.len() == "nats://".len() {
            return Err(invalid(
                "broker.nats.url",
                format!("{:?} must be a nats://host:port URL", nats.url),
            ));
        }
        if !is_valid_subject_prefix(&nats.prefix) {
            return Err(invalid(
                "broker.nats.prefix",
                "must be non-empty dot-separated tokens without whitespace, '*' or '>'",
            ));
        }
        if nats.dial_timeout.is_zero() || nats.write_timeout.is_zero() {
            return Err(invalid(
                "broker.nats.dial_timeout",
                "timeouts must be greater than 0",
            ));
        }
        if nats.allow_wildcards {
            return Err(invalid(
                "broker.nats.allow_wildcards",
                "wildcard subscriptions are not supported; channels with '*' or '>' are refused",
            ));
        }
        if !self.broker.enabled {
            return Ok(());
        }
        // NATS keeps no history: refused here, at start, rather than failing every publish
        // into the namespace at run time.
        let namespaces = std::iter::once((
            "channel.without_namespace".to_owned(),
            &self.channel.without_namespace,
        ))
        .chain(
            self.channel
                .namespaces
                .iter()
                .enumerate()
                .map(|(index, ns)| (format!("channel.namespaces[{index}]"), &ns.options)),
        );
        for (key, options) in namespaces {
            if options.history_enabled() {
                return Err(invalid(
                    format!("{key}.history_size"),
                    "history (and recovery) is not available with the nats broker (broker.enabled); \
                     use engine.type = \"redis\" without a broker for history",
                ));
            }
        }
        Ok(())
    }

    fn validate_channel(&self) -> Result<(), ConfigError> {
        let ch = &self.channel;
        if ch.max_length == 0 {
            return Err(invalid("channel.max_length", "must be greater than 0"));
        }
        for (key, value) in [
            ("channel.namespace_boundary", &ch.namespace_boundary),
            ("channel.user_boundary", &ch.user_boundary),
            ("channel.user_separator", &ch.user_separator),
        ] {
            if value.is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        validate_namespace_options(&ch.without_namespace, "channel.without_namespace", ch)?;
        for (index, ns) in ch.namespaces.iter().enumerate() {
            let key = format!("channel.namespaces[{index}]");
            if !is_valid_namespace_name(&ns.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?} must match ^[-a-zA-Z0-9_]{{2,}}$", ns.name),
                ));
            }
            if ch.namespaces[..index]
                .iter()
                .any(|other| other.name == ns.name)
            {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("duplicate namespace name {:?}", ns.name),
                ));
            }
            validate_namespace_options(&ns.options, &key, ch)?;
        }
        Ok(())
    }
}

// === impl ClientConfig ===

impl ClientConfig {
    /// The key set subscription tokens are verified with: `subscription_token` when enabled,
    /// else `token`.
    pub fn subscription_token_config(&self) -> &TokenConfig {
        if self.subscription_token.enabled {
            &self.subscription_token.token
        } else {
            &self.token
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            token: TokenConfig::default(),
            subscription_token: SubscriptionTokenConfig::default(),
            insecure: false,
            allow_anonymous_connect_without_token: false,
            disallow_anonymous_connection_tokens: false,
            // Centrifugo's default; below the common 60 s idle timeout of load balancers.
            ping_interval: Duration::from_secs(25),
            // Centrifugo's default; a pong must arrive well before the next ping is due.
            pong_timeout: Duration::from_secs(8),
            // Centrifugo's default: time to send connect after the upgrade.
            stale_close_delay: Duration::from_secs(10),
            // Centrifugo's default: time for the SDK to refresh an expired token.
            expired_close_delay: Duration::from_secs(25),
            // Centrifugo's default, same reason for subscription tokens.
            expired_sub_close_delay: Duration::from_secs(25),
            // Centrifugo's default.
            channel_limit: 128,
            // Off, as in Centrifugo.
            user_connection_limit: 0,
            // Centrifugo's default: 1 MiB of pending bytes before a slow client is dropped.
            queue_max_size: 1024 * 1024,
            // Centrifugo's default.
            history_max_publication_limit: 300,
            // Centrifugo's default.
            recovery_max_publication_limit: 300,
            // Centrifugo's default; presence entries expire a little after this.
            presence_update_interval: Duration::from_secs(27),
            allowed_origins: Vec::new(),
            subscribe_to_user_personal_channel: PersonalChannelConfig::default(),
            // Off, as in Centrifugo: the file descriptor limit is the usual bound, and a
            // number that fits one machine is wrong for the next.
            connection_limit: 0,
            // Off: behind a load balancer or a carrier NAT many users share one address, and
            // a default would cut them off.
            ip_connection_limit: 0,
            // Off, as in Centrifugo: a mass reconnect after a deploy is legitimate traffic;
            // set it to what the node can authenticate per second.
            connection_rate_limit: 0,
            command_rate_limit: CommandRateLimit::default(),
            // The bound the old fixed constant had: generous for a slow mobile link, short
            // enough that silent sockets do not pile up.
            handshake_timeout: Duration::from_secs(10),
            proxy: ClientProxyConfig::default(),
        }
    }
}

impl Default for CommandRateLimit {
    fn default() -> Self {
        Self {
            // Well above what an SDK sends in normal use (a few commands per second), well
            // below what a runaway loop sends.
            rate: 100.0,
            // Room for connect plus a subscribe for every channel up to the default
            // `channel_limit` (128) in one batch, as SDKs send after a reconnect.
            burst: 256,
            // A client that keeps hammering after a hundred 111s in ten seconds is not
            // backing off: close it (3013, reconnect with backoff).
            disconnect_after: 100,
            window: Duration::from_secs(10),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            // Long enough to spread a node's clients over time, short next to a rolling
            // update.
            drain_window: Duration::from_secs(5),
            // Under Kubernetes' default 30 s termination grace period, with room for the
            // drain window and in-flight API calls.
            timeout: Duration::from_secs(20),
        }
    }
}

// === impl HttpApiConfig ===

// The API key stays out of logs.
impl fmt::Debug for HttpApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpApiConfig")
            .field("key", &redacted(&self.key))
            .field("insecure", &self.insecure)
            .field("error_mode", &self.error_mode)
            .finish()
    }
}

// === impl NamespaceOptions ===

impl NamespaceOptions {
    /// History is kept when both `history_size` and `history_ttl` are non-zero.
    pub fn history_enabled(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }

    /// The name of the proxy this namespace uses for a channel `event` (`subscribe`,
    /// `publish`, `sub_refresh`, `subscribe_stream`), `None` when the namespace does not
    /// enable it. Connect, refresh and RPC are not namespace options: always `None`.
    pub fn proxy_name(&self, event: ProxyEvent) -> Option<&str> {
        let (enabled, name) = match event {
            ProxyEvent::Subscribe => (self.subscribe_proxy_enabled, &self.subscribe_proxy_name),
            ProxyEvent::Publish => (self.publish_proxy_enabled, &self.publish_proxy_name),
            ProxyEvent::SubRefresh => {
                (self.sub_refresh_proxy_enabled, &self.sub_refresh_proxy_name)
            }
            ProxyEvent::SubscribeStream => (
                self.subscribe_stream_proxy_enabled,
                &self.subscribe_stream_proxy_name,
            ),
            ProxyEvent::Connect | ProxyEvent::Refresh | ProxyEvent::Rpc => return None,
        };
        enabled.then_some(name.as_str())
    }
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        Self {
            presence: false,
            join_leave: false,
            force_push_join_leave: false,
            history_size: 0,
            history_ttl: Duration::ZERO,
            history_meta_ttl: None,
            force_positioning: false,
            allow_positioning: false,
            force_recovery: false,
            allow_recovery: false,
            force_recovery_mode: RecoveryMode::default(),
            allow_subscribe_for_client: false,
            allow_subscribe_for_anonymous: false,
            allow_publish_for_subscriber: false,
            allow_publish_for_client: false,
            allow_publish_for_anonymous: false,
            allow_history_for_subscriber: false,
            allow_history_for_client: false,
            allow_history_for_anonymous: false,
            allow_presence_for_subscriber: false,
            allow_presence_for_client: false,
            allow_presence_for_anonymous: false,
            allow_user_limited_channels: false,
            channel_regex: String::new(),
            allowed_delta_types: Vec::new(),
            delta_publish: false,
            // Proxies are off; when turned on without a name, Centrifugo uses the
            // `channel.proxy.<event>` object, called "default".
            subscribe_proxy_enabled: false,
            subscribe_proxy_name: DEFAULT_PROXY_NAME.to_owned(),
            publish_proxy_enabled: false,
            publish_proxy_name: DEFAULT_PROXY_NAME.to_owned(),
            sub_refresh_proxy_enabled: false,
            sub_refresh_proxy_name: DEFAULT_PROXY_NAME.to_owned(),
            subscribe_stream_proxy_enabled: false,
            subscribe_stream_proxy_name: DEFAULT_PROXY_NAME.to_owned(),
            subscribe_stream_proxy_bidirectional: false,
        }
    }
}

// === Defaults ===

impl Default for HttpServerConfig {
    fn default() -> Self {
        Self {
            // Loopback: a config-less node must not be reachable from the network.
            address: "127.0.0.1".to_owned(),
            // Centrifugo's default port.
            port: 8000,
            // Browsers send well under 2 KiB; cookies can push it further. 8 KiB is what
            // common proxies (nginx `large_client_header_buffers` per line) allow.
            max_request_head_size: 8 * 1024,
            // Real upgrade requests carry 10–20 headers.
            max_request_headers: 64,
        }
    }
}

impl ChannelConfig {
    /// The options of the namespace-less channels and of every namespace, each with its
    /// config key (`channel.without_namespace`, `channel.namespaces[<index>]`).
    pub fn all_namespace_options(&self) -> impl Iterator<Item = (String, &NamespaceOptions)> {
        std::iter::once((
            "channel.without_namespace".to_owned(),
            &self.without_namespace,
        ))
        .chain(
            self.namespaces
                .iter()
                .enumerate()
                .map(|(index, ns)| (format!("channel.namespaces[{index}]"), &ns.options)),
        )
    }
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            // Centrifugo's default.
            max_length: 255,
            private_prefix: "$".to_owned(),
            namespace_boundary: ":".to_owned(),
            user_boundary: "#".to_owned(),
            user_separator: ",".to_owned(),
            // Centrifugo's default (30 days): a stream's epoch outlives its history by far, so
            // a client returning after the history TTL learns "not recovered" truthfully.
            history_meta_ttl: Duration::from_secs(720 * 3600),
            without_namespace: NamespaceOptions::default(),
            namespaces: Vec::new(),
            proxy: ChannelProxyConfig::default(),
        }
    }
}

impl Default for RedisEngineConfig {
    fn default() -> Self {
        Self {
            // Centrifugo's default: a local Redis.
            // Empty: Centrifugo's default, a local Redis (see `standalone_addresses`), unless
            // a cluster is configured instead.
            address: Vec::new(),
            cluster_address: Vec::new(),
            sentinel_address: Vec::new(),
            sentinel_master_name: String::new(),
            sentinel_user: String::new(),
            sentinel_password: String::new(),
            sentinel_client_name: String::new(),
            sentinel_tls: TlsClientConfig::default(),
            tls: TlsClientConfig::default(),
            user: String::new(),
            password: String::new(),
            db: 0,
            prefix: "tether".to_owned(),
            // Connecting to a reachable Redis takes milliseconds; a second means it is not.
            connect_timeout: Duration::from_secs(1),
            // Centrifugo's read/write timeout: a publish fails fast rather than hanging the
            // API call while Redis is away.
            io_timeout: Duration::from_secs(1),
            // Centrifugo's default, two refreshes at the default 27 s update interval.
            presence_ttl: Duration::from_secs(60),
            circuit_breaker: RedisBreakerConfig::default(),
        }
    }
}

impl Default for NatsBrokerConfig {
    fn default() -> Self {
        Self {
            // Centrifugo's defaults.
            url: "nats://127.0.0.1:4222".to_owned(),
            prefix: "tether".to_owned(),
            dial_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            allow_wildcards: false,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        // Centrifugo's default (64 KiB).
        Self {
            message_size_limit: 65536,
        }
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            // Loopback for the same reason as the HTTP server: reachable from the network only
            // once someone decides it should be.
            address: "127.0.0.1".to_owned(),
            // The port after the HTTP server's default 8000.
            port: 8001,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

// === helpers ===

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

fn validate_token(token: &TokenConfig, prefix: &str) -> Result<(), ConfigError> {
    if !token.hmac_previous_secret_key.is_empty() && token.hmac_previous_secret_key_valid_until <= 0
    {
        return Err(invalid(
            format!("{prefix}.hmac_previous_secret_key_valid_until"),
            "must be set (unix seconds) when hmac_previous_secret_key is set",
        ));
    }
    if token.leeway > MAX_TOKEN_LEEWAY {
        return Err(invalid(
            format!("{prefix}.leeway"),
            format!(
                "must be at most {} (got {})",
                humantime::format_duration(MAX_TOKEN_LEEWAY),
                humantime::format_duration(token.leeway)
            ),
        ));
    }
    crate::auth::TokenVerifier::check_config(token).map_err(|err| {
        let key = match err {
            crate::auth::AuthConfigError::RsaPublicKey(_) => "rsa_public_key",
            crate::auth::AuthConfigError::EcdsaPublicKey(_) => "ecdsa_public_key",
            crate::auth::AuthConfigError::JwksEndpoint(_) => "jwks_public_endpoint",
        };
        invalid(format!("{prefix}.{key}"), err.to_string())
    })?;
    Ok(())
}

/// Smallest `http_server.max_request_head_size`: a WebSocket upgrade head with its required
/// headers does not fit in less.
pub const MIN_REQUEST_HEAD_SIZE: usize = 256;

/// Largest `client.token.leeway`: more clock skew than this hides real clock problems and
/// stretches every token's life.
pub const MAX_TOKEN_LEEWAY: Duration = Duration::from_secs(30);

/// Bounds of `engine.disk.segment_size`: a segment must hold the largest publication, and
/// offsets within one are 32-bit.
const MIN_SEGMENT: u64 = 64 << 10;
const MAX_SEGMENT: u64 = 1 << 30;

/// The standalone Redis used when neither `engine.redis.address` nor
/// `engine.redis.cluster_address` is set (Centrifugo's default).
pub const DEFAULT_REDIS_ADDRESS: &str = "redis://127.0.0.1:6379";

fn validate_namespace_options(
    options: &NamespaceOptions,
    key: &str,
    channel: &ChannelConfig,
) -> Result<(), ConfigError> {
    let has_size = options.history_size > 0;
    let has_ttl = !options.history_ttl.is_zero();
    if has_size != has_ttl {
        return Err(invalid(
            format!("{key}.history_size"),
            "history_size and history_ttl must be set together",
        ));
    }
    let history = options.history_enabled();
    for (name, on) in [
        ("force_recovery", options.force_recovery),
        ("allow_recovery", options.allow_recovery),
        ("force_positioning", options.force_positioning),
        ("allow_positioning", options.allow_positioning),
    ] {
        if on && !history {
            return Err(invalid(
                format!("{key}.{name}"),
                "needs history (history_size and history_ttl)",
            ));
        }
    }
    if history {
        let (meta_key, meta_ttl) = match options.history_meta_ttl {
            Some(ttl) => (format!("{key}.history_meta_ttl"), ttl),
            None => (
                "channel.history_meta_ttl".to_owned(),
                channel.history_meta_ttl,
            ),
        };
        if meta_ttl < options.history_ttl {
            return Err(invalid(
                meta_key,
                format!(
                    "must be at least {key}.history_ttl ({} < {})",
                    humantime::format_duration(meta_ttl),
                    humantime::format_duration(options.history_ttl)
                ),
            ));
        }
    }
    if !options.channel_regex.is_empty()
        && let Err(error) = regex::Regex::new(&options.channel_regex)
    {
        return Err(invalid(
            format!("{key}.channel_regex"),
            format!("invalid regex: {error}"),
        ));
    }
    for delta in &options.allowed_delta_types {
        if delta != "fossil" {
            return Err(invalid(
                format!("{key}.allowed_delta_types"),
                format!("unknown delta type {delta:?}, only \"fossil\" is supported"),
            ));
        }
    }
    Ok(())
}

/// A NATS subject prefix: dot-separated non-empty tokens, no whitespace, no wildcard.
fn is_valid_subject_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && !prefix.split('.').any(str::is_empty)
        && !prefix.contains(['*', '>'])
        && !prefix.chars().any(char::is_whitespace)
}

fn validate_log_level(level: &str) -> Result<(), ConfigError> {
    match level.to_ascii_lowercase().as_str() {
        "none" | "trace" | "debug" | "info" | "warn" | "error" => Ok(()),
        _ => Err(invalid(
            "log.level",
            format!("{level:?} is not one of none, trace, debug, info, warn, error"),
        )),
    }
}

/// `^[-a-zA-Z0-9_.]{2,}$`, as Centrifugo requires of proxy and RPC namespace names.
fn is_valid_proxy_name(name: &str) -> bool {
    name.len() >= 2
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The rules of one proxy object in use; `key` is where it sits (`proxies[2]`,
/// `client.proxy.connect`).
fn validate_proxy(proxy: &ProxyConfig, key: &str) -> Result<(), ConfigError> {
    if proxy.endpoint.trim().is_empty() {
        return Err(invalid(
            format!("{key}.endpoint"),
            "must be set when the proxy is used",
        ));
    }
    if proxy.timeout.is_zero() {
        return Err(invalid(format!("{key}.timeout"), "must be greater than 0"));
    }
    for (index, transform) in proxy.http.status_to_code_transforms.iter().enumerate() {
        let key = format!("{key}.http.status_to_code_transforms[{index}]");
        if transform.status_code == 0 {
            return Err(invalid(format!("{key}.status_code"), "must be set"));
        }
        let to_error = transform.to_error.code > 0;
        let to_disconnect = transform.to_disconnect.code > 0;
        if to_error == to_disconnect {
            return Err(invalid(
                key,
                "set exactly one of to_error.code and to_disconnect.code",
            ));
        }
        if !transform.to_disconnect.reason.is_ascii() {
            return Err(invalid(
                format!("{key}.to_disconnect.reason"),
                "must be ASCII",
            ));
        }
    }
    Ok(())
}

/// `^[-a-zA-Z0-9_]{2,}$`, as Centrifugo requires.
fn is_valid_namespace_name(name: &str) -> bool {
    name.len() >= 2
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The host name when the OS tells it, else `tether`.
fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "tether".to_owned())
}

/// A string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) if one.is_empty() => Vec::new(),
        OneOrMany::One(one) => one.split(',').map(|s| s.trim().to_owned()).collect(),
        OneOrMany::Many(many) => many,
    })
}

/// `host:port` (`[v6]:port` for an IPv6 literal), as a sentinel's address is written.
fn is_host_port(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    !host.is_empty()
        && !host.contains(['/', '@', ' '])
        && port.parse::<u16>().is_ok_and(|port| port != 0)
}

/// True when `address` only accepts connections from this machine.
pub fn is_loopback_address(address: &str) -> bool {
    if address.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let trimmed = address.trim_start_matches('[').trim_end_matches(']');
    trimmed.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests;
