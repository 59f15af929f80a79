//! Helpers for integration tests: a real server on 127.0.0.1:0 and a raw WebSocket client.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::needless_pass_by_value
)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tether_server::config::{Config, Namespace, NamespaceOptions};
use tether_server::server::Server;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-secret-key-for-integration";
pub const API_KEY: &str = "test-api-key";

pub struct TestServer {
    pub addr: SocketAddr,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub fn from_parts(
        addr: SocketAddr,
        stop: CancellationToken,
        handle: tokio::task::JoinHandle<()>,
    ) -> Self {
        Self { addr, stop, handle }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// POST /api/<method>; returns (status, body as JSON or Null).
    pub async fn api(&self, method: &str, body: Value) -> (u16, Value) {
        self.api_with_key(method, body, Some(API_KEY)).await
    }

    pub async fn api_with_key(&self, method: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = body.to_string();
        let key_header = key
            .map(|k| format!("X-API-Key: {k}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST /api/{method} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{key_header}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response).to_string();
        let status: u16 = text[9..12].parse().unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

/// A config for tests: port 0, known secret and API key, a few namespaces.
pub fn config() -> Config {
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

pub async fn start(config: Config) -> TestServer {
    let server = Server::bind(config).await.expect("bind");
    let addr = server.local_addr();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(server.run(stop.clone()));
    TestServer { addr, stop, handle }
}

pub fn token(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

pub fn user_token(user: &str) -> String {
    token(json!({ "sub": user }))
}

/// A JWKS endpoint that answers nothing until `release` is sent, then an empty key set to
/// every request. Returns its URL and the sender that releases it.
pub async fn stalled_jwks() -> (String, tokio::sync::watch::Sender<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let (release, released) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut released = released.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = released.wait_for(|&go| go).await;
                let body = r#"{"keys":[]}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, release)
}

#[path = "../support/json_client.rs"]
mod json_client;

pub use json_client::JsonClient as Client;

impl Client {
    pub async fn open(server: &TestServer) -> Self {
        Self::open_url(&server.ws_url()).await
    }

    pub async fn connected(server: &TestServer, user: &str) -> (Self, Value) {
        let mut client = Self::open(server).await;
        let reply = client.connect_with(&user_token(user)).await;
        (client, reply)
    }
}
