//! Test support: a real tether in-process on 127.0.0.1:0, and a TCP fault proxy that can
//! delay, blackhole (stop forwarding without closing), refuse (accept and drop) and reset
//! connections between the client and the server.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::needless_pass_by_value,
    reason = "test helpers panic on failure by design"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use tether_client::{ClientEvent, ClientEvents, SubscriptionEvent, SubscriptionEvents};
use tether_server::config::{Config, Namespace, NamespaceOptions};
use tether_server::server::{Node, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "client-tests-secret-key";
/// Server heartbeats in tests: ping every 2 s, pong within 1 s.
pub const PING: Duration = Duration::from_secs(2);
pub const PONG: Duration = Duration::from_secs(1);

/// Which transport a test runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Tcp,
}

pub struct TestServer {
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    pub node: Arc<Node>,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(config()).await
    }

    pub async fn start_with(config: Config) -> Self {
        let server = Server::bind(config).await.expect("bind");
        let http = server.local_addr();
        let tcp = server.tcp_addr().expect("tcp enabled");
        let node = server.node().clone();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(server.run(stop.clone()));
        Self {
            http,
            tcp,
            node,
            stop,
            handle,
        }
    }

    /// The server's own address for a transport.
    pub fn upstream(&self, transport: Transport) -> SocketAddr {
        match transport {
            Transport::Ws => self.http,
            Transport::Tcp => self.tcp,
        }
    }

    /// A client URL for `transport` pointing at `addr` (the server or a proxy).
    pub fn url(transport: Transport, addr: SocketAddr) -> String {
        match transport {
            Transport::Ws => format!("ws://{addr}/connection/websocket"),
            Transport::Tcp => format!("tcp://{addr}"),
        }
    }

    /// Registered connections on the server (connected or still authenticating).
    pub fn num_clients(&self) -> u32 {
        self.node.hub().stats().num_clients
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}

/// Port 0 everywhere, fast heartbeats, and a `chat` namespace with history and recovery.
pub fn config() -> Config {
    let mut config = Config::default();
    config.http_server.port = 0;
    config.tcp.port = 0;
    config.client.token.hmac_secret_key = SECRET.to_owned();
    config.client.ping_interval = PING;
    config.client.pong_timeout = PONG;
    config.channel.without_namespace.allow_subscribe_for_client = true;
    config.channel.without_namespace.allow_publish_for_client = true;
    config.channel.namespaces.push(Namespace {
        name: "chat".to_owned(),
        options: NamespaceOptions {
            presence: true,
            history_size: 1000,
            history_ttl: Duration::from_secs(300),
            force_recovery: true,
            allow_subscribe_for_client: true,
            allow_publish_for_client: true,
            allow_history_for_client: true,
            allow_presence_for_client: true,
            ..Default::default()
        },
    });
    config
}

pub fn token(user: &str) -> String {
    token_with(json!({ "sub": user }))
}

pub fn token_with(claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// Waits for the first client event matching `pred`, skipping others; panics after `within`.
pub async fn wait_client(
    events: &mut ClientEvents,
    within: Duration,
    pred: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    tokio::time::timeout(within, async {
        loop {
            let event = events.next().await.expect("client events ended");
            if pred(&event) {
                return event;
            }
        }
    })
    .await
    .expect("client event not seen in time")
}

/// Waits for the first subscription event matching `pred`; panics after `within`.
pub async fn wait_sub(
    events: &mut SubscriptionEvents,
    within: Duration,
    pred: impl Fn(&SubscriptionEvent) -> bool,
) -> SubscriptionEvent {
    tokio::time::timeout(within, async {
        loop {
            let event = events.next().await.expect("subscription events ended");
            if pred(&event) {
                return event;
            }
        }
    })
    .await
    .expect("subscription event not seen in time")
}

/// Polls `cond` every 50 ms until it holds; panics after `within`.
pub async fn eventually(within: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === fault proxy ===

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Forward,
    /// Forward each chunk after this delay.
    Delay(Duration),
    /// Stop forwarding without closing: bytes are read and discarded; new connections are
    /// accepted and held without reaching the server.
    Blackhole,
    /// Accept new connections and close them at once.
    Refuse,
}

/// A TCP proxy in front of one upstream address, controlled by the test.
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<ProxyShared>,
    accept: JoinHandle<()>,
}

struct ProxyShared {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    /// One token per live connection; cancelling it resets both sides.
    links: Mutex<Vec<CancellationToken>>,
    accepted: AtomicUsize,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ProxyShared {
            upstream,
            mode: Mutex::new(Mode::Forward),
            links: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Self {
            addr,
            shared,
            accept,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock() = mode;
    }

    /// Resets (RST) every live connection.
    pub fn reset_all(&self) {
        for link in self.shared.links.lock().drain(..) {
            link.cancel();
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<ProxyShared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let mode = *shared.mode.lock();
        if mode == Mode::Refuse {
            drop(client);
            continue;
        }
        let cancel = CancellationToken::new();
        shared.links.lock().push(cancel.clone());
        tokio::spawn(serve_link(client, shared.clone(), cancel, mode));
    }
}

async fn serve_link(
    client: TcpStream,
    shared: Arc<ProxyShared>,
    cancel: CancellationToken,
    mode: Mode,
) {
    if mode == Mode::Blackhole {
        // Held open, never forwarded, until reset.
        cancel.cancelled().await;
        reset(&client);
        return;
    }
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        reset(&client);
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    tokio::select! {
        () = cancel.cancelled() => {
            reset(client_write.as_ref());
            reset(upstream_write.as_ref());
        }
        () = pump(&mut client_read, &mut upstream_write, &shared) => {}
        () = pump(&mut upstream_read, &mut client_write, &shared) => {}
    }
}

/// Copies one direction per the current mode; on end of input, half-closes the other side.
async fn pump(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, shared: &ProxyShared) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if *shared.mode.lock() == Mode::Blackhole {
                    // A blackhole swallows closes too: the other side never learns.
                    std::future::pending::<()>().await;
                }
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let mode = *shared.mode.lock();
        match mode {
            Mode::Blackhole => continue,
            Mode::Delay(delay) => tokio::time::sleep(delay).await,
            Mode::Forward | Mode::Refuse => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Closes with RST: linger 0, then the socket is dropped by the caller.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Deletes every key under `prefix` in the Redis on 127.0.0.1:6379 (one Lua call over a
/// plain RESP connection, so the tests need no Redis client library).
pub async fn delete_redis_keys(prefix: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let script = "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
                  redis.call('DEL', k) n = n + 1 end return n";
    let pattern = format!("{prefix}*");
    let args = ["EVAL", script, "0", pattern.as_str()];
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let Ok(mut stream) = tokio::net::TcpStream::connect("127.0.0.1:6379").await else {
        return;
    };
    if stream.write_all(command.as_bytes()).await.is_ok() {
        let mut reply = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut reply)).await;
    }
}
