//! [`Node`]: the context every layer of one node shares — the validated config, the hub,
//! the engine, the token verifiers, the metrics, cluster control, the shutdown and drain
//! signals and the clock ([`Now`]) — and how it is built ([`Node::new`], [`StartError`]).
//!
//! It is built and shared behind an `Arc` by the server; sessions, transports and the API
//! reach each other's data only through it. Nothing here runs a loop: the server starts the
//! sweeper and the control loop, and owns admission limits.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;
use regex::Regex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::TokenVerifier;
use crate::breaker;
use crate::broker::lifecycle::Lifecycle;
use crate::broker::nats::NatsStartError;
use crate::broker::redis::RedisStartError;
use crate::broker::{
    BrokerError, ControlReceiver, DiskBroker, DiskOpenError, DiskOptions, Engine, Fsync,
    MemoryBroker, NatsBroker, NatsOptions, PresenceStore, RedisDeployment, RedisEngine,
    RedisOptions, RedisTls, SentinelOptions,
};
use crate::cluster::{Cluster, NodeInfo};
use crate::config::{Config, DiskFsync, EngineKind, TlsClientConfig};
use crate::events::{Events, WebhookError};
use crate::hub::{Hub, HubEvents, SweepSettings};
use crate::metrics::Metrics;
use crate::proxy::{Proxies, ProxyBuildError};

/// The time as a session sees it: wall-clock Unix seconds (for token expiry) and the node
/// clock (the sweeper's time base).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    /// Unix time in seconds.
    pub unix: i64,
    /// Milliseconds on the node clock (the sweeper's time base).
    pub ms: u64,
}

/// Everything shared by the sessions and the API of one node.
#[derive(Debug)]
pub struct Node {
    /// The validated configuration.
    pub(crate) config: Arc<Config>,
    /// Connection, user and channel registries; fan-out.
    pub(crate) hub: Hub,
    /// Positions, history and presence (the configured engine).
    pub(crate) engine: Engine,
    /// Prometheus metrics of this node (`/metrics`).
    pub(crate) metrics: Arc<Metrics>,
    /// Verifies connection tokens (and subscription tokens unless a separate key is set).
    pub(crate) tokens: TokenVerifier,
    /// Verifies subscription tokens when `client.subscription_token.enabled`.
    pub(crate) sub_tokens: Option<TokenVerifier>,
    /// Server version reported to clients (`ConnectResult.version`).
    pub(crate) version: String,
    /// Cancelled when the node starts shutting down.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when a shutdown was requested and client connections are being drained:
    /// `/ready` answers 503 and new client connections are refused from then on.
    pub(crate) draining: CancellationToken,
    /// Compiled `channel_regex` of every namespace, by pattern.
    channel_regexes: HashMap<String, Regex>,
    /// Cluster control: other nodes, surveys, commands for every node's connections.
    pub(crate) cluster: Arc<Cluster>,
    /// The backend proxies the config enables.
    pub(crate) proxies: Proxies,
    /// Lifecycle events for the backend's webhook, and the user status store.
    pub(crate) events: Events,
    /// The engine's control channel, taken by the control loop when the server runs.
    control: parking_lot::Mutex<Option<ControlReceiver>>,
    started: Instant,
}

/// Failures while starting a node.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A token key in the config could not be loaded.
    #[error("invalid token key configuration")]
    Auth(#[from] crate::auth::AuthConfigError),
    /// The configured engine could not be built.
    #[error("cannot start the engine")]
    Engine(#[from] RedisStartError),
    /// The disk engine's store could not be opened (`engine.disk.path`).
    #[error("cannot open the disk engine's store")]
    Disk(#[from] DiskOpenError),
    /// A backend proxy could not be built from its config.
    #[error("invalid proxy configuration")]
    Proxy(#[from] ProxyBuildError),
    /// The webhook could not be set up (`webhook.endpoint`, `webhook.tls`).
    #[error("invalid webhook configuration: {0}")]
    Webhook(String),
    /// An async consumer could not connect (`consumers[]`).
    #[error("{0}")]
    Consumer(String),
    /// The NATS broker could not connect (`broker.nats.url` unreachable within
    /// `broker.nats.dial_timeout`).
    #[error("cannot start the nats broker")]
    Broker(#[from] NatsStartError),
    /// The listen address could not be bound.
    #[error("cannot bind {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Node {
    /// Builds a node from a validated config. With the NATS broker this connects to NATS and
    /// fails when it does not answer within the dial timeout.
    pub async fn new(config: Config) -> Result<Arc<Self>, StartError> {
        let tokens = TokenVerifier::new(&config.client.token)?;
        let sub_tokens = if config.client.subscription_token.enabled {
            Some(TokenVerifier::new(&config.client.subscription_token.token)?)
        } else {
            None
        };
        let metrics = Arc::new(Metrics::new());
        let proxies = Proxies::new(&config, &metrics)?;
        let hub = Hub::with_metrics(metrics.clone());
        let channel_regexes = std::iter::once(&config.channel.without_namespace)
            .chain(config.channel.namespaces.iter().map(|ns| &ns.options))
            .filter(|options| !options.channel_regex.is_empty())
            .filter_map(|options| {
                // Validated with the config; a pattern that fails here is skipped.
                Regex::new(&options.channel_regex)
                    .ok()
                    .map(|re| (options.channel_regex.clone(), re))
            })
            .collect();
        let events = Arc::new(HubEvents(hub.clone()));
        let id = uuid::Uuid::new_v4().to_string();
        let (engine, control) = build_engine(&config, &id, events).await?;
        let lifecycle = match &engine {
            Engine::Redis(redis)
            | Engine::Nats {
                presence: PresenceStore::Redis(redis),
                ..
            } => Lifecycle::Redis(redis.clone()),
            Engine::Memory(_)
            | Engine::Disk(_)
            | Engine::Nats {
                presence: PresenceStore::Memory(_),
                ..
            } => Lifecycle::Local(Arc::default()),
        };
        let events = Events::new(&config, &id, lifecycle, &hub, &metrics)
            .map_err(|error: WebhookError| StartError::Webhook(error.to_string()))?;
        let name = if config.node.name.is_empty() {
            "tether".to_owned()
        } else {
            config.node.name.clone()
        };
        let version = env!("CARGO_PKG_VERSION").to_owned();
        let cluster = Arc::new(Cluster::new(
            NodeInfo {
                uid: id,
                name,
                version: version.clone(),
                ..NodeInfo::default()
            },
            hub.clone(),
            engine.clone(),
        ));
        Ok(Arc::new(Self {
            config: Arc::new(config),
            hub,
            engine,
            metrics,
            tokens,
            sub_tokens,
            version,
            shutdown: CancellationToken::new(),
            draining: CancellationToken::new(),
            channel_regexes,
            cluster,
            proxies,
            events,
            control: parking_lot::Mutex::new(control),
            started: Instant::now(),
        }))
    }

    /// Connection, user and channel registries of this node.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The current time in every form the session needs.
    pub(crate) fn now(&self) -> Now {
        let instant = Instant::now();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Now {
            unix,
            ms: self.clock_ms(instant),
        }
    }

    /// Milliseconds since the node started (the sweeper's time base).
    pub(crate) fn clock_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Delay of a new connection's first ping: uniform in `[interval/2, interval)` so a mass
    /// reconnect does not ping in lock-step.
    pub(crate) fn first_ping_delay_ms(&self) -> u64 {
        let interval = self.config.client.ping_interval.as_millis() as u64;
        if interval < 2 {
            return interval;
        }
        rand::rng().random_range(interval / 2..interval)
    }

    /// Whether a channel passes its namespace's `channel_regex` (checked against the part
    /// after the namespace boundary; without a pattern the name must be ASCII).
    pub(crate) fn channel_matches_regex(&self, pattern: &str, channel: &str) -> bool {
        if pattern.is_empty() {
            return channel.is_ascii();
        }
        let boundary = self.config.channel.namespace_boundary.as_str();
        let name = channel
            .split_once(boundary)
            .map_or(channel, |(_, rest)| rest);
        self.channel_regexes
            .get(pattern)
            .is_none_or(|re| re.is_match(name))
    }

    /// Runs one engine operation, recording its latency and failure in the metrics.
    pub(crate) async fn timed<T>(
        &self,
        op: &'static str,
        operation: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let started = Instant::now();
        let result = operation.await;
        self.metrics
            .engine_op(op, started.elapsed(), result.is_err());
        result
    }

    /// True once a shutdown was requested: the node is telling its clients to go elsewhere.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Takes the engine's control channel (once: the server's control loop owns it).
    pub(crate) fn take_control(&self) -> Option<ControlReceiver> {
        self.control.lock().take()
    }

    /// The heartbeat settings of the sweep.
    pub(crate) fn sweep_settings(&self) -> SweepSettings {
        SweepSettings {
            ping_interval_ms: self.config.client.ping_interval.as_millis() as u64,
            pong_timeout_ms: self.config.client.pong_timeout.as_millis() as u64,
        }
    }
}

/// TLS to Redis from Centrifugo's TLS object at `key`: `None` unless `enabled`.
fn redis_tls(tls: &TlsClientConfig, key: &'static str) -> Result<Option<RedisTls>, StartError> {
    if !tls.enabled {
        return Ok(None);
    }
    let bad = |message: String| RedisStartError::Tls { key, message };
    let identity = match (
        tls.cert_pem_bytes().map_err(|e| bad(e.to_string()))?,
        tls.key_pem_bytes().map_err(|e| bad(e.to_string()))?,
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(bad("cert_pem and key_pem must be set together".to_owned()).into()),
    };
    Ok(Some(RedisTls {
        root_ca: tls.server_ca_pem_bytes().map_err(|e| bad(e.to_string()))?,
        identity,
        insecure: tls.insecure_skip_verify,
    }))
}

/// Opens the disk engine's store (a replay: blocking work, off the runtime's threads).
async fn open_disk(config: &Config, events: Arc<HubEvents>) -> Result<DiskBroker, StartError> {
    let disk = &config.engine.disk;
    let options = DiskOptions {
        path: disk.path.clone().into(),
        fsync: match disk.fsync {
            DiskFsync::Always => Fsync::Always,
            DiskFsync::Interval => Fsync::Interval(disk.fsync_interval),
        },
        segment_size: disk.segment_size,
        checkpoint_interval: disk.checkpoint_interval,
    };
    let opened = tokio::task::spawn_blocking(move || DiskBroker::open(options, events)).await;
    let opened = opened.unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()));
    Ok(opened?)
}

/// The configured engine and its control channel (`None` for a single node). With the NATS
/// broker, NATS carries fan-out and control and the engine keeps only presence.
async fn build_engine(
    config: &Config,
    node_id: &str,
    events: Arc<HubEvents>,
) -> Result<(Engine, Option<ControlReceiver>), StartError> {
    let redis = &config.engine.redis;
    let tls = redis_tls(&redis.tls, "engine.redis.tls")?;
    let sentinel_tls = redis_tls(&redis.sentinel_tls, "engine.redis.sentinel_tls")?;
    let redis_options = |fanout| {
        let deployment = if !redis.sentinel_address.is_empty() {
            RedisDeployment::Sentinel(SentinelOptions {
                addresses: redis.sentinel_address.clone(),
                master_name: redis.sentinel_master_name.clone(),
                sentinel_user: redis.sentinel_user.clone(),
                sentinel_password: redis.sentinel_password.clone(),
                sentinel_client_name: redis.sentinel_client_name.clone(),
                user: redis.user.clone(),
                password: redis.password.clone(),
                db: redis.db,
                sentinel_tls: sentinel_tls.clone(),
            })
        } else if redis.cluster_address.is_empty() {
            RedisDeployment::Shards(redis.standalone_addresses())
        } else {
            RedisDeployment::Cluster(redis.cluster_address.clone())
        };
        RedisOptions {
            deployment,
            prefix: redis.prefix.clone(),
            connect_timeout: redis.connect_timeout,
            io_timeout: redis.io_timeout,
            presence_ttl: redis.presence_ttl,
            presence_update_interval: config.client.presence_update_interval,
            fanout,
            breaker: redis.circuit_breaker.enabled.then(|| {
                let breaker = &redis.circuit_breaker;
                breaker::Settings {
                    window: breaker.window,
                    min_calls: 10,
                    failure_ratio: breaker.failure_ratio,
                    consecutive_failures: breaker.consecutive_failures,
                    stall: (!breaker.stall_timeout.is_zero()).then_some(breaker.stall_timeout),
                    open_for: breaker.open_for,
                }
            }),
            tls: tls.clone(),
        }
    };
    if !config.broker.enabled {
        return Ok(match config.engine.kind {
            EngineKind::Memory => (Engine::Memory(MemoryBroker::new(events)), None),
            EngineKind::Disk => (Engine::Disk(open_disk(config, events).await?), None),
            EngineKind::Redis => {
                let (engine, control) = RedisEngine::start(redis_options(true), events)?;
                (Engine::Redis(engine), Some(control))
            }
        });
    }
    let nats = &config.broker.nats;
    let options = NatsOptions {
        url: nats.url.clone(),
        prefix: nats.prefix.clone(),
        dial_timeout: nats.dial_timeout,
        write_timeout: nats.write_timeout,
        node_id: node_id.to_owned(),
    };
    let (broker, control) = NatsBroker::start(options, events.clone()).await?;
    let presence = match config.engine.kind {
        // The config refuses the disk engine with a broker.
        EngineKind::Memory | EngineKind::Disk => PresenceStore::Memory(MemoryBroker::new(events)),
        EngineKind::Redis => {
            // Its control receiver stays silent (no Pub/Sub side): NATS carries control.
            let (engine, _control) = RedisEngine::start(redis_options(false), events)?;
            PresenceStore::Redis(engine)
        }
    };
    Ok((Engine::Nats { broker, presence }, Some(control)))
}
