//! Wiring and lifecycle of one tether node.
//!
//! [`Node`] is everything a session or an API call needs (config, hub, broker, token
//! verifiers, clock), shared behind an `Arc`. [`Server`] binds the listeners (HTTP/WebSocket,
//! and raw TCP when `tcp.enabled`), runs the accept loop and the heartbeat sweeper, and shuts down on a cancellation token: stop accepting,
//! tell every connection to reconnect elsewhere (3001), and wait for them with a deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use regex::Regex;
use tether_proto::codes::DisconnectCode;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, field, info, info_span, warn};

use crate::api::cluster::Cluster;
use crate::auth::TokenVerifier;
use crate::broker::redis::{ControlReceiver, RedisStartError};
use crate::broker::{Engine, MemoryBroker, RedisEngine, RedisOptions};
use crate::config::{Config, EngineKind};
use crate::hub::{Hub, HubEvents, SweepSettings};
use crate::metrics::Metrics;
use crate::session::Now;

/// Everything shared by the sessions and the API of one node.
#[derive(Debug)]
pub struct Node {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Connection, user and channel registries; fan-out.
    pub hub: Hub,
    /// Positions, history and presence (the configured engine).
    pub engine: Engine,
    /// Prometheus metrics of this node (`/metrics`).
    pub metrics: Arc<Metrics>,
    /// Verifies connection tokens (and subscription tokens unless a separate key is set).
    pub tokens: TokenVerifier,
    /// Verifies subscription tokens when `client.subscription_token.enabled`.
    pub sub_tokens: Option<TokenVerifier>,
    /// Server version reported to clients (`ConnectResult.version`).
    pub version: String,
    /// This node's unique id (`info` API).
    pub id: String,
    /// This node's name (`info` API).
    pub name: String,
    /// Cancelled when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// Compiled `channel_regex` of every namespace, by pattern.
    channel_regexes: HashMap<String, Regex>,
    /// Other nodes and open surveys (cluster-wide `info` and `channels`).
    pub cluster: Cluster,
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
    /// Builds a node from a validated config.
    pub fn new(config: Config) -> Result<Arc<Self>, StartError> {
        let tokens = TokenVerifier::new(&config.client.token)?;
        let sub_tokens = if config.client.subscription_token.enabled {
            Some(TokenVerifier::new(&config.client.subscription_token.token)?)
        } else {
            None
        };
        let metrics = Arc::new(Metrics::new());
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
        let (engine, control) = match config.engine.kind {
            EngineKind::Memory => (Engine::Memory(MemoryBroker::new(events)), None),
            EngineKind::Redis => {
                let redis = &config.engine.redis;
                let options = RedisOptions {
                    addresses: redis.address.clone(),
                    prefix: redis.prefix.clone(),
                    connect_timeout: redis.connect_timeout,
                    io_timeout: redis.io_timeout,
                    presence_ttl: redis.presence_ttl,
                    presence_update_interval: config.client.presence_update_interval,
                };
                let (engine, control) = RedisEngine::start(options, events)?;
                (Engine::Redis(engine), Some(control))
            }
        };
        let name = if config.node.name.is_empty() {
            "tether".to_owned()
        } else {
            config.node.name.clone()
        };
        Ok(Arc::new(Self {
            config: Arc::new(config),
            hub,
            engine,
            metrics,
            tokens,
            sub_tokens,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            id: uuid::Uuid::new_v4().to_string(),
            name,
            shutdown: CancellationToken::new(),
            channel_regexes,
            cluster: Cluster::default(),
            control: parking_lot::Mutex::new(control),
            started: Instant::now(),
        }))
    }

    /// The current time in every form the session needs.
    pub fn now(&self) -> Now {
        let instant = Instant::now();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Now {
            instant,
            unix,
            ms: self.clock_ms(instant),
        }
    }

    /// Milliseconds since the node started (the sweeper's time base).
    pub fn clock_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Delay of a new connection's first ping: uniform in `[interval/2, interval)` so a mass
    /// reconnect does not ping in lock-step.
    pub fn first_ping_delay_ms(&self) -> u64 {
        let interval = self.config.client.ping_interval.as_millis() as u64;
        if interval < 2 {
            return interval;
        }
        rand::rng().random_range(interval / 2..interval)
    }

    /// Whether a channel passes its namespace's `channel_regex` (checked against the part
    /// after the namespace boundary; no pattern passes everything).
    pub fn channel_matches_regex(&self, pattern: &str, channel: &str) -> bool {
        if pattern.is_empty() {
            return true;
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
    pub async fn timed<T>(
        &self,
        op: &'static str,
        operation: impl std::future::Future<Output = Result<T, crate::broker::BrokerError>>,
    ) -> Result<T, crate::broker::BrokerError> {
        let started = Instant::now();
        let result = operation.await;
        self.metrics
            .engine_op(op, started.elapsed(), result.is_err());
        result
    }

    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn sweep_settings(&self) -> SweepSettings {
        SweepSettings {
            ping_interval_ms: self.config.client.ping_interval.as_millis() as u64,
            pong_timeout_ms: self.config.client.pong_timeout.as_millis() as u64,
        }
    }
}

/// A bound, not yet running node.
#[derive(Debug)]
pub struct Server {
    node: Arc<Node>,
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The raw TCP listener and its address; `None` when `tcp.enabled` is off.
    tcp: Option<(TcpListener, SocketAddr)>,
}

impl Server {
    /// Builds the node and binds its HTTP/WebSocket port, and the raw TCP port when
    /// `tcp.enabled`.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let addr = format!("{}:{}", config.http_server.address, config.http_server.port);
        let tcp_addr = config
            .tcp
            .enabled
            .then(|| format!("{}:{}", config.tcp.address, config.tcp.port));
        let node = Node::new(config)?;
        let (listener, local_addr) = bind_listener(addr).await?;
        let tcp = match tcp_addr {
            Some(addr) => Some(bind_listener(addr).await?),
            None => None,
        };
        Ok(Self {
            node,
            listener,
            local_addr,
            tcp,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound raw TCP address, when the TCP transport is enabled.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().map(|(_, addr)| *addr)
    }

    /// The node behind this server.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Serves until `stop` is cancelled, then drains.
    pub async fn run(self, stop: CancellationToken) {
        let Self {
            node,
            listener,
            local_addr,
            tcp,
        } = self;
        info!(%local_addr, "tether listening");
        let tcp = tcp.map(|(listener, tcp_addr)| {
            info!(%tcp_addr, "tether listening for raw tcp clients");
            listener
        });
        let tracker = TaskTracker::new();
        tracker.spawn(sweeper(node.clone()));
        if let Some(control) = node.control.lock().take() {
            tracker.spawn(crate::api::cluster::run(node.clone(), control));
        }
        let api = crate::api::router(node.clone());
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    debug!("stop requested; no longer accepting");
                    break;
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let span = info_span!(
                            "conn", transport = "ws", %peer, client = field::Empty, user = field::Empty
                        );
                        tracker.spawn(
                            crate::transport::handle_connection(node.clone(), stream, peer, api.clone())
                                .instrument(span),
                        );
                    }
                    Err(error) => {
                        // Per-connection accept errors are skipped; resource errors back off.
                        warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                accepted = accept_tcp(tcp.as_ref()) => match accepted {
                    Ok((stream, peer)) => {
                        let span = info_span!(
                            "conn", transport = "tcp", %peer, client = field::Empty, user = field::Empty
                        );
                        tracker.spawn(
                            crate::transport::tcp::handle_connection(node.clone(), stream, peer)
                                .instrument(span),
                        );
                    }
                    Err(error) => {
                        warn!(%error, "tcp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        drop(tcp);
        for conn in node.hub.all_conns() {
            conn.close(DisconnectCode::SHUTDOWN.into());
        }
        node.shutdown.cancel();
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            warn!("connections still open after the shutdown grace period");
        }
    }
}

async fn bind_listener(addr: String) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((listener, local_addr))
}

/// Accepts on the raw TCP listener; never completes when there is none.
async fn accept_tcp(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Runs one node until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal.cancel();
    });
    server.run(stop).await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Heartbeats and expiries for every connection, about once a second.
async fn sweeper(node: Arc<Node>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = node.shutdown.cancelled() => return,
            now = tick.tick() => {
                node.hub.sweep(node.clock_ms(now), node.sweep_settings());
                node.engine.sweep(now);
                node.metrics.upkeep();
            }
        }
    }
}

/// How often the sweeper wakes; heartbeat deadlines are this coarse.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How long shutdown waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
