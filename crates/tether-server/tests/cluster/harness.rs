//! Cluster test harness: `tether` processes sharing the Redis on 127.0.0.1:6379 (or the Redis
//! Cluster of `scripts/redis-cluster.sh`, or a NATS) under a unique prefix, a raw WebSocket
//! JSON client, an HTTP API helper and a TCP fault proxy.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub const SECRET: &str = "cluster-test-secret-key-long-enough";
pub const API_KEY: &str = "cluster-api-key";

pub fn redis_url() -> String {
    std::env::var("TETHER_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Seeds of the test Redis Cluster: `TETHER_TEST_REDIS_CLUSTER` (comma-separated, every seed a
/// master), or the 3-master cluster that `scripts/redis-cluster.sh start` brings up (idempotent;
/// run once per test process).
pub fn redis_cluster_seeds() -> Vec<String> {
    static SEEDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SEEDS
        .get_or_init(|| {
            if let Ok(seeds) = std::env::var("TETHER_TEST_REDIS_CLUSTER") {
                return seeds.split(',').map(str::to_owned).collect();
            }
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../scripts/redis-cluster.sh"
            );
            let status = std::process::Command::new("bash")
                .arg(script)
                .arg("start")
                .status()
                .unwrap();
            assert!(status.success(), "scripts/redis-cluster.sh start failed");
            (7101..=7103)
                .map(|port| format!("redis://127.0.0.1:{port}"))
                .collect()
        })
        .clone()
}

/// Deletes every key under `prefix` on every master of the test cluster (one `DEL` per key:
/// they span slots).
pub async fn delete_cluster_keys(prefix: &str) {
    for seed in redis_cluster_seeds() {
        let client = redis::Client::open(seed).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}.*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        for key in keys {
            let _: () = redis::cmd("DEL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
}

/// A unique prefix for one test's keys; [`cleanup`] removes them.
pub fn unique_prefix(name: &str) -> String {
    format!("tether-cluster-{name}-{}", uuid::Uuid::new_v4().simple())
}

/// Deletes every key under `prefix` (also how tests stand in for Redis losing its data).
pub async fn delete_keys(prefix: &str) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}.*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// Fills in what every test node needs: its HTTP address on `port`, the token secret and the
/// API key the helpers use.
pub fn complete_config(config: &mut Value, port: u16) {
    config["http_server"] = json!({ "address": "127.0.0.1", "port": port });
    config["client"]["token"] = json!({ "hmac_secret_key": SECRET });
    config["http_api"] = json!({ "key": API_KEY });
}

/// `tether serve --config <path>` as the tests run it: no inherited `TETHER_CONFIG`, WebSocket
/// only (several nodes must not race for the TCP port 8001), stdin and stdout closed, killed
/// when dropped. The caller decides where stderr goes.
pub fn serve_command(path: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    command
        .arg("serve")
        .arg("--config")
        .arg(path)
        .env_remove("TETHER_CONFIG")
        .env("TETHER_TCP_ENABLED", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `tether serve` process.
pub struct Node {
    pub addr: SocketAddr,
    child: Child,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Node {
    /// Starts a node on a free port with the Redis engine at `redis` under `prefix`, and
    /// waits until `/ready` answers 200.
    pub async fn start(prefix: &str, redis: &str) -> Self {
        Self::start_on_redis(prefix, json!({ "address": redis })).await
    }

    /// Like [`Node::start`], on the Redis Cluster with these seeds.
    pub async fn start_on_redis_cluster(prefix: &str, seeds: &[String]) -> Self {
        Self::start_on_redis(prefix, json!({ "cluster_address": seeds })).await
    }

    /// `target` is the `engine.redis` address key (`address` or `cluster_address`).
    async fn start_on_redis(prefix: &str, target: Value) -> Self {
        let mut config = json!({
            "client": { "presence_update_interval": "1s" },
            "engine": {
                "type": "redis",
                "redis": {
                    "prefix": prefix,
                    "presence_ttl": "5s",
                    // The defaults (1 s each): tighter, a loaded 2-core CI machine misses a
                    // Pub/Sub probe now and then and the node rebuilds its connection.
                }
            },
            "channel": {
                "without_namespace": {
                    "allow_subscribe_for_client": true,
                    "allow_publish_for_client": true,
                },
                "namespaces": [{
                    "name": "chat",
                    "presence": true,
                    "join_leave": true,
                    "history_size": 1000,
                    "history_ttl": "300s",
                    "force_recovery": true,
                    "allow_subscribe_for_client": true,
                    "allow_publish_for_client": true,
                    "allow_history_for_client": true,
                    "allow_presence_for_client": true,
                }],
            },
        });
        for (key, value) in target.as_object().unwrap() {
            config["engine"]["redis"][key] = value.clone();
        }
        Self::start_with(config).await
    }

    /// Starts a node on a free port with `config` (its `http_server`, `client.token`,
    /// `http_api` and `log` are set here), and waits until `/ready` answers 200.
    pub async fn start_with(mut config: Value) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tether-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        complete_config(&mut config, port);
        config["log"] = json!({ "level": "warn" });
        let path = dir.join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let child = serve_command(&path)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let node = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            _dir: TempDir(dir),
        };
        for _ in 0..200 {
            if node.ready().await == Some(200) {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node on port {port} never became ready");
    }

    /// HTTP status of `/ready`, `None` when the node does not answer.
    pub async fn ready(&self) -> Option<u16> {
        http(self.addr, "GET", "/ready", "", None)
            .await
            .map(|(s, _)| s)
    }

    /// POST /api/<method>; returns the JSON body.
    pub async fn api(&self, method: &str, body: Value) -> Value {
        let (status, body) = http(
            self.addr,
            "POST",
            &format!("/api/{method}"),
            &body.to_string(),
            Some(API_KEY),
        )
        .await
        .expect("api reachable");
        assert_eq!(status, 200, "{method}: {body}");
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        self.api("publish", json!({ "channel": channel, "data": data }))
            .await
    }

    /// SIGTERM: the node drains its clients and exits by itself (within 10 s).
    pub async fn terminate(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("node exits after SIGTERM")
            .unwrap();
    }

    /// SIGKILL: the node gets no chance to say goodbye.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let key = key
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{key}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((status, body))
}

pub fn token(user: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": user }),
        &key,
    )
    .unwrap()
}

#[path = "../support/json_client.rs"]
mod json_client;

pub use json_client::JsonClient as Client;

impl Client {
    /// Opens a WebSocket to `node` and connects as `user`.
    pub async fn connect(node: &Node, user: &str) -> Self {
        let mut client = Self::open_url(&node.ws_url()).await;
        client.connect_with(&token(user)).await;
        client
    }
}

/// Publication pushes in a message: `(offset, data["n"])`.
pub fn publication(message: &Value, channel: &str) -> Option<(u64, i64)> {
    let push = message.get("push")?;
    if push["channel"] != json!(channel) {
        return None;
    }
    let publication = push.get("pub")?;
    Some((
        publication["offset"].as_u64().unwrap_or(0),
        publication["data"]["n"].as_i64()?,
    ))
}

/// A TCP proxy in front of Redis (or NATS) that can be cut: while down it resets every
/// connection.
pub struct FaultProxy {
    pub url: String,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl FaultProxy {
    pub async fn start(target: &str) -> Self {
        let (scheme, address) = target.split_once("://").unwrap();
        let target: SocketAddr = address.trim_end_matches('/').parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                // Subscribe before looking at `up`: a cut between the two is then seen by
                // `changed()` instead of letting this link live through the outage.
                let mut cut_rx = cut2.subscribe();
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    // Biased: once cut, not one more byte is forwarded, so a command sent
                    // after the cut can never reach Redis (the outage is a clean partition).
                    tokio::select! {
                        biased;
                        _ = cut_rx.changed() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Self { url, up, cut }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Reads publications of `channel` until `count` arrived; other messages are skipped.
pub async fn collect(client: &mut Client, channel: &str, count: usize) -> Vec<(u64, i64)> {
    let mut out = Vec::new();
    while out.len() < count {
        let message = client.next().await;
        if let Some(p) = publication(&message, channel) {
            out.push(p);
        }
    }
    out
}

/// The `(offset, n)` of the publications in a subscribe or history result.
pub fn recovered_publications(result: &Value) -> Vec<(u64, i64)> {
    result["publications"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| {
                    (
                        p["offset"].as_u64().unwrap_or(0),
                        p["data"]["n"].as_i64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
