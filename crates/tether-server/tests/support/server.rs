//! A real server in-process on 127.0.0.1:0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{
    API_KEY, Config, ConnHandle, Gateway, Namespace, NamespaceOptions, SECRET, Server, ServerNode,
    http, user_token,
};

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    /// The raw TCP transport's address; `None` with `tcp.enabled` off.
    pub(crate) tcp: Option<SocketAddr>,
    /// The server's node, for tests that look into its state.
    pub(crate) node: Arc<ServerNode>,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }

    /// POST /api/<method>; returns (status, body as JSON or Null).
    pub(crate) async fn api(&self, method: &str, body: impl Serialize) -> (u16, Value) {
        self.api_with_key(method, body, Some(API_KEY)).await
    }

    pub(crate) async fn api_with_key(
        &self,
        method: &str,
        body: impl Serialize,
        key: Option<&str>,
    ) -> (u16, Value) {
        http::api(self.addr, method, body, key)
            .await
            .expect("api reachable")
    }

    /// A client of `user` subscribed to `channel` over a socket with a small receive window
    /// (so the kernel buffers less for it), which reads nothing more: a stalled reader, or a
    /// dead network path. Returns it with its connection's handle on the server.
    pub(crate) async fn stalled_subscriber(
        &self,
        user: &str,
        channel: &str,
    ) -> (WebSocketStream<TcpStream>, ConnHandle) {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(self.addr).await.expect("connect");
        let (mut stalled, _) = tokio_tungstenite::client_async(self.ws_url(), stream)
            .await
            .expect("ws upgrade");
        let hello = [
            json!({"id": 1, "connect": {"token": user_token(user)}}).to_string(),
            json!({"id": 2, "subscribe": {"channel": channel}}).to_string(),
        ]
        .join("\n");
        stalled
            .send(Message::Text(hello.into()))
            .await
            .expect("ws send");
        let mut subscribed = false;
        while !subscribed {
            let msg = tokio::time::timeout(Duration::from_secs(5), stalled.next())
                .await
                .expect("a reply in time")
                .expect("the connection open")
                .expect("a frame");
            subscribed = msg.to_text().unwrap_or_default().contains(r#""id":2"#);
        }
        let conn = self
            .node
            .hub()
            .all_conns()
            .into_iter()
            .find(|c| &*c.user() == user)
            .expect("stalled connection registered");
        (stalled, conn)
    }

    /// Waits until GET /ready answers 200 (the Redis engine's Pub/Sub is up).
    pub(crate) async fn wait_ready(&self) {
        let ready = http::wait_for_status(self.addr, "/ready", 200, Duration::from_secs(5)).await;
        assert!(ready, "not ready");
    }
}

impl Gateway for TestServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A config for tests: port 0, known secret and API key, a few namespaces.
pub(crate) fn config() -> Config {
    let mut config = Config::default();
    config.http_server.port = 0;
    config.tcp.port = 0;
    // Tests stop servers with clients still connected: drain them quickly.
    config.shutdown.drain_window = Duration::from_millis(100);
    config.client.token.hmac_secret_key = SECRET.to_owned();
    config.http_api.key = API_KEY.to_owned();
    config.channel.without_namespace.allow_subscribe_for_client = true;
    config.channel.without_namespace.allow_publish_for_client = true;
    let chat = NamespaceOptions {
        presence: true,
        join_leave: true,
        force_push_join_leave: true,
        history_size: 10,
        history_ttl: Duration::from_secs(300),
        force_recovery: true,
        allow_subscribe_for_client: true,
        allow_publish_for_client: true,
        allow_history_for_client: true,
        allow_presence_for_client: true,
        ..Default::default()
    };
    config.channel.namespaces.push(Namespace {
        name: "chat".to_owned(),
        options: chat,
    });
    config
}

/// Binds a server with `config` and runs it until [`TestServer::stop`].
pub(crate) async fn start(config: Config) -> TestServer {
    let server = Server::bind(config).await.expect("bind");
    let addr = server.local_addr();
    let tcp = server.tcp_addr();
    let node = server.node().clone();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(server.run(stop.clone()));
    TestServer {
        addr,
        tcp,
        node,
        stop,
        handle,
    }
}

/// Why a server with `config` does not start, with every cause (`error: cause: cause…`);
/// panics when it starts.
pub(crate) async fn start_error(config: Config) -> String {
    let Err(error) = Server::bind(config).await else {
        panic!("the server started");
    };
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
