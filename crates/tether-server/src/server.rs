//! Wiring and lifecycle of one tether node: the only module that knows every other.
//!
//! [`Server`] builds the [`Node`], binds the listeners (HTTP/WebSocket, and raw TCP when
//! `tcp.enabled`), owns the admission limits it hands to the transports, runs the accept
//! loops, the heartbeat sweeper and the cluster control loop, and shuts down gracefully on
//! a cancellation token (SIGTERM / SIGINT for `tether serve`):
//!
//! 1. drain: [`Node::draining`] is cancelled, so `/ready` answers 503 and new client
//!    connections are refused (the raw TCP listener closes, upgrades get 503) while the API
//!    keeps serving; every connection is told to reconnect elsewhere (3001) in jittered
//!    batches spread over `shutdown.drain_window`;
//! 2. stop: the HTTP listener closes, [`Node::shutdown`] is cancelled, in-flight API calls
//!    finish, sessions clean up, background loops end;
//! 3. `run` returns by `shutdown.timeout` after the request at the latest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::seq::SliceRandom;
use tether_proto::codes::DisconnectCode;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, debug_span, field, info, warn};

use crate::config::Config;
use crate::consumers::Consumers;
pub use crate::node::{Node, StartError};
pub use crate::proxy::ProxyBuildError;
use crate::transport::Entry;
use crate::transport::limits::Admission;

/// A bound, not yet running node.
#[derive(Debug)]
pub struct Server {
    node: Arc<Node>,
    /// Connection counts and the connection rate (`client.connection_limit` and friends),
    /// checked by the transports before a connection is registered.
    admission: Admission,
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The raw TCP listener and its address; `None` when `tcp.enabled` is off.
    tcp: Option<(TcpListener, SocketAddr)>,
    /// The async consumers, connected; they start consuming when the server runs.
    consumers: Consumers,
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
        let admission = Admission::new(&config.client);
        let node = Node::new(config).await?;
        let consumers = Consumers::connect(&node)
            .await
            .map_err(|e| StartError::Consumer(e.to_string()))?;
        let (listener, local_addr) = bind_listener(addr).await?;
        let tcp = match tcp_addr {
            Some(addr) => Some(bind_listener(addr).await?),
            None => None,
        };
        Ok(Self {
            node,
            admission,
            listener,
            local_addr,
            tcp,
            consumers,
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
            admission,
            listener,
            local_addr,
            tcp,
            consumers,
        } = self;
        info!(%local_addr, "tether listening");
        let tcp = tcp.map(|(listener, tcp_addr)| {
            info!(%tcp_addr, "tether listening for raw tcp clients");
            listener
        });
        let tracker = TaskTracker::new();
        node.events.start();
        consumers.spawn(&tracker);
        tracker.spawn(sweeper(node.clone()));
        if let Some(control) = node.take_control() {
            tracker.spawn(node.cluster.clone().run(control, node.shutdown.clone()));
        }
        let entry = Arc::new(Entry {
            admission,
            api: crate::api::router(node.clone()),
        });
        let accept = Acceptor {
            node: &node,
            entry: &entry,
            listener: &listener,
            tracker: &tracker,
        };
        accept.run(tcp.as_ref(), stop.cancelled()).await;

        // Drain: /ready turns 503 and client connections are refused from here on; the API
        // keeps serving while clients are told to reconnect elsewhere in jittered batches.
        let settings = node.config.shutdown.clone();
        let deadline = Instant::now() + settings.timeout;
        info!(
            connections = node.hub.all_conns().len(),
            drain_window = %humantime::format_duration(settings.drain_window),
            "shutting down: draining client connections"
        );
        node.draining.cancel();
        drop(tcp);
        accept
            .run(None, drain_connections(&node, settings.drain_window))
            .await;

        // Stop: no more accepts; in-flight API calls finish, sessions clean up, background
        // loops end — all by the deadline.
        drop(listener);
        node.shutdown.cancel();
        tracker.close();
        if tokio::time::timeout_at(deadline, tracker.wait())
            .await
            .is_err()
        {
            warn!("tasks still running at the shutdown deadline; exiting anyway");
        }
        // The sessions' disconnects (and, on one node, the offlines still in their grace)
        // go to the backend before the process ends.
        node.events.close(deadline).await;
        if Instant::now() < deadline {
            // What the sessions announced on their way out (leaves) reaches the other nodes.
            if tokio::time::timeout_at(deadline, node.engine.flush())
                .await
                .is_err()
            {
                debug!("engine flush cut short by the shutdown deadline");
            }
            info!("shutdown complete");
        }
        // The disk engine's clean close (queue written, synced, checkpointed) keeps every
        // epoch across the restart, so it is not cut short by the deadline; publishes still
        // in flight fail with the temporary error.
        node.engine.close().await;
    }
}

/// The accept loops of a running node.
struct Acceptor<'a> {
    node: &'a Arc<Node>,
    entry: &'a Arc<Entry>,
    listener: &'a TcpListener,
    tracker: &'a TaskTracker,
}

impl Acceptor<'_> {
    /// Spawns a connection's task, instrumented with its span only when the span is
    /// enabled: a disabled span still takes 40 bytes in every idle connection's task.
    fn spawn_connection(&self, serve: impl Future<Output = ()> + Send + 'static, span: Span) {
        if span.is_disabled() {
            self.tracker.spawn(serve);
        } else {
            self.tracker.spawn(serve.instrument(span));
        }
    }

    /// Accepts on the HTTP listener (and the raw TCP one, when given) until `until` completes.
    async fn run(&self, tcp: Option<&TcpListener>, until: impl Future<Output = ()>) {
        let mut until = std::pin::pin!(until);
        loop {
            tokio::select! {
                () = &mut until => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // One span per connection, at debug level: an enabled span costs
                        // memory in the subscriber's registry for the connection's whole life,
                        // so it is recorded only when logging at debug or finer.
                        let span = debug_span!(
                            "conn", transport = "ws", %peer, client = field::Empty, user = field::Empty
                        );
                        let serve = crate::transport::handle_connection(
                            self.node.clone(),
                            self.entry.clone(),
                            stream,
                            peer,
                        );
                        self.spawn_connection(serve, span);
                    }
                    Err(error) => {
                        // Per-connection accept errors are skipped; resource errors back off.
                        warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                accepted = accept_tcp(tcp) => match accepted {
                    Ok((stream, peer)) => {
                        let span = debug_span!(
                            "conn", transport = "tcp", %peer, client = field::Empty, user = field::Empty
                        );
                        // In the span: the driver is made before the future (see tcp.rs).
                        let serve = span.in_scope(|| {
                            crate::transport::tcp::handle_connection(
                                self.node.clone(),
                                &self.entry.admission,
                                stream,
                                peer,
                            )
                        });
                        self.spawn_connection(serve, span);
                    }
                    Err(error) => {
                        warn!(%error, "tcp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }
}

/// Tells every client connection to reconnect elsewhere (3001), in jittered batches spread
/// over `window` so the clients do not all come back at the same instant. Connections that
/// registered meanwhile (an upgrade already past its checks) are closed at the end.
async fn drain_connections(node: &Node, window: Duration) {
    let mut conns = node.hub.all_conns();
    if !conns.is_empty() {
        // The thread-local rng is not `Send`: use it before the first await.
        let schedule = {
            let mut rng = rand::rng();
            conns.shuffle(&mut rng);
            drain_schedule(conns.len(), window, &mut rng)
        };
        let start = Instant::now();
        for (at, batch) in schedule {
            tokio::time::sleep_until(start + at).await;
            debug!(size = batch.len(), "closing a batch of connections (3001)");
            for conn in &conns[batch] {
                conn.close(DisconnectCode::SHUTDOWN.into());
            }
        }
    }
    for conn in node.hub.all_conns() {
        conn.close(DisconnectCode::SHUTDOWN.into());
    }
}

/// When each batch of a drain of `n` connections is closed: at most one batch per
/// [`DRAIN_BATCH_GAP`] of the window, consecutive index ranges of (nearly) equal size, batch
/// `i` at a random point of its own slot `[i, i + 1) * window / batches`, so the times rise.
fn drain_schedule(
    n: usize,
    window: Duration,
    rng: &mut impl Rng,
) -> Vec<(Duration, std::ops::Range<usize>)> {
    if n == 0 {
        return Vec::new();
    }
    let slots = (window.as_millis() / DRAIN_BATCH_GAP.as_millis()).max(1);
    let batches = n.min(usize::try_from(slots).unwrap_or(usize::MAX));
    let slot = window / u32::try_from(batches).unwrap_or(u32::MAX);
    (0..batches)
        .map(|i| {
            let jitter = slot.mul_f64(rng.random::<f64>());
            let at = slot * u32::try_from(i).unwrap_or(u32::MAX) + jitter;
            (at, i * n / batches..(i + 1) * n / batches)
        })
        .collect()
}

/// The accept queue asked for; the kernel caps it at `net.core.somaxconn` (4096 on current
/// Linux). Tokio's default, 1024, overflows when thousands of clients reconnect at once
/// after a restart: each dropped SYN costs its client a 1 s retransmission.
const LISTEN_BACKLOG: u32 = 65_535;

async fn bind_listener(addr: String) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind {
        addr: addr.clone(),
        source,
    };
    let resolved = tokio::net::lookup_host(&addr)
        .await
        .map_err(bind_error)?
        .next()
        .ok_or_else(|| {
            bind_error(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "the address resolves to nothing",
            ))
        })?;
    let socket = if resolved.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(bind_error)?;
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(resolved).map_err(bind_error)?;
    let listener = socket.listen(LISTEN_BACKLOG).map_err(bind_error)?;
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
pub async fn serve(config: Config) -> Result<(), StartError> {
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
/// Shortest time between two drain batches: finer spreading buys nothing.
const DRAIN_BATCH_GAP: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn drain_schedule_covers_every_connection_once_in_rising_slots() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let window = Duration::from_secs(5);
        for n in [1, 3, 99, 100, 101, 10_000] {
            let plan = drain_schedule(n, window, &mut rng);
            assert!(plan.len() <= 100, "{n}: at most one batch per 50 ms");
            assert_eq!(plan.len(), n.min(100));
            let mut next = 0;
            let mut last_at = Duration::ZERO;
            for (at, batch) in &plan {
                assert_eq!(batch.start, next, "{n}: consecutive ranges");
                assert!(!batch.is_empty());
                next = batch.end;
                assert!(*at >= last_at && *at < window, "{n}: {at:?}");
                last_at = *at;
            }
            assert_eq!(next, n);
        }
        assert!(drain_schedule(0, window, &mut rng).is_empty());
    }

    #[test]
    fn drain_schedule_spreads_over_the_window() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let window = Duration::from_secs(2);
        let plan = drain_schedule(1000, window, &mut rng);
        let first = plan.first().unwrap().0;
        let last = plan.last().unwrap().0;
        assert!(first < Duration::from_millis(50), "{first:?}");
        assert!(last >= Duration::from_millis(1950), "{last:?}");
        // A zero window closes everyone at once, in one batch.
        let plan = drain_schedule(10, Duration::ZERO, &mut rng);
        assert_eq!(plan, vec![(Duration::ZERO, 0..10)]);
    }
}
