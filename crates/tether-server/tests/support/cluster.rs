//! Cluster tests' support: nodes sharing the Redis on 127.0.0.1:6379 (or the Redis Cluster of
//! `scripts/redis-cluster.sh`, or a NATS) under a unique prefix, reading publications, and a
//! TCP fault proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{Client, Node};

pub(crate) fn redis_url() -> String {
    std::env::var("TETHER_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Seeds of the test Redis Cluster: `TETHER_TEST_REDIS_CLUSTER` (comma-separated, every seed a
/// master), or the 3-master cluster that `scripts/redis-cluster.sh start` brings up (idempotent;
/// run once per test process).
pub(crate) fn redis_cluster_seeds() -> Vec<String> {
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
                .expect("run scripts/redis-cluster.sh");
            assert!(status.success(), "scripts/redis-cluster.sh start failed");
            (7101..=7103)
                .map(|port| format!("redis://127.0.0.1:{port}"))
                .collect()
        })
        .clone()
}

/// A Redis Sentinel deployment of `scripts/redis-sentinel.sh` on its own ports (data nodes
/// on `port` and `port + 1`, one sentinel on `port + 10`, master name `tether`): started (or
/// found up) by [`RedisSentinel::start`], driven through the script.
pub(crate) struct RedisSentinel {
    pub(crate) port: u16,
}

impl RedisSentinel {
    pub(crate) const MASTER_NAME: &str = "tether";

    /// `scripts/redis-sentinel.sh start` on `port` (idempotent; waits until healthy).
    pub(crate) fn start(port: u16) -> Self {
        let sentinel = Self { port };
        sentinel.script(&["start"]);
        sentinel
    }

    /// Runs the script with these arguments; its stdout.
    pub(crate) fn script(&self, args: &[&str]) -> String {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/redis-sentinel.sh"
        );
        let output = std::process::Command::new("bash")
            .arg(script)
            .args(args)
            .env("TETHER_REDIS_SENTINEL_PORT", self.port.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run scripts/redis-sentinel.sh");
        assert!(output.status.success(), "redis-sentinel.sh {args:?} failed");
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    /// The sentinel's `host:port`.
    pub(crate) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port + 10)
    }

    /// The current master's `redis://` URL, as the sentinel names it.
    pub(crate) fn master_url(&self) -> String {
        format!("redis://{}", self.script(&["master"]))
    }

    /// Deletes every key under `prefix` on the current master.
    pub(crate) async fn delete_keys(&self, prefix: &str) {
        delete_keys_at(&self.master_url(), prefix).await;
    }
}

/// A unique prefix for one test's keys; [`delete_keys`] removes them.
pub(crate) fn unique_prefix(name: &str) -> String {
    format!("tether-cluster-{name}-{}", uuid::Uuid::new_v4().simple())
}

/// Deletes every key under `prefix` (also how tests stand in for Redis losing its data).
pub(crate) async fn delete_keys(prefix: &str) {
    delete_keys_at(&redis_url(), prefix).await;
}

/// Deletes every key under `prefix` on every master of the test cluster.
pub(crate) async fn delete_cluster_keys(prefix: &str) {
    for seed in redis_cluster_seeds() {
        delete_keys_at(&seed, prefix).await;
    }
}

/// Deletes every key under `prefix` in the Redis at `url`, one `DEL` per key (on a cluster
/// they span slots).
async fn delete_keys_at(url: &str, prefix: &str) {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}.*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    for key in keys {
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
}

impl Node {
    /// Starts a node on a free port with the Redis engine at `redis` under `prefix`, and
    /// waits until `/ready` answers 200.
    pub(crate) async fn start(prefix: &str, redis: &str) -> Self {
        Self::start_on_redis(prefix, &json!({ "address": redis })).await
    }

    /// Like [`Node::start`], with top-level config sections added (`{"webhook": {...}}`).
    pub(crate) async fn start_with_sections(prefix: &str, redis: &str, sections: &Value) -> Self {
        let mut config = Self::redis_config(prefix, &json!({ "address": redis }));
        for (key, value) in sections.as_object().expect("an object") {
            config[key] = value.clone();
        }
        Self::start_with(config).await
    }

    /// Like [`Node::start`], on the Redis Cluster with these seeds.
    pub(crate) async fn start_on_redis_cluster(prefix: &str, seeds: &[String]) -> Self {
        Self::start_on_redis(prefix, &json!({ "cluster_address": seeds })).await
    }

    /// Like [`Node::start`], on the master of this Sentinel deployment.
    pub(crate) async fn start_on_redis_sentinel(prefix: &str, sentinel: &RedisSentinel) -> Self {
        Self::start_on_redis(
            prefix,
            &json!({
                "sentinel_address": [sentinel.address()],
                "sentinel_master_name": RedisSentinel::MASTER_NAME,
            }),
        )
        .await
    }

    /// `target` is the `engine.redis` address key (`address`, `cluster_address`, or the
    /// `sentinel_*` keys).
    async fn start_on_redis(prefix: &str, target: &Value) -> Self {
        Self::start_with(Self::redis_config(prefix, target)).await
    }

    /// The config of a cluster node (see [`Node::start_on_redis`]).
    fn redis_config(prefix: &str, target: &Value) -> Value {
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
        for (key, value) in target.as_object().expect("an object") {
            config["engine"]["redis"][key] = value.clone();
        }
        config
    }
}

/// Publication pushes in a message: `(offset, data["n"])`.
pub(crate) fn publication(message: &Value, channel: &str) -> Option<(u64, i64)> {
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
pub(crate) struct FaultProxy {
    pub(crate) url: String,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl FaultProxy {
    pub(crate) async fn start(target: &str) -> Self {
        let (scheme, address) = target.split_once("://").expect("a URL");
        let target: SocketAddr = address
            .trim_end_matches('/')
            .parse()
            .expect("an IP address and port");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let url = format!(
            "{scheme}://{}",
            listener.local_addr().expect("proxy address")
        );
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
    pub(crate) fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub(crate) fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Reads publications of `channel` until `count` arrived; other messages are skipped.
pub(crate) async fn collect(client: &mut Client, channel: &str, count: usize) -> Vec<(u64, i64)> {
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
pub(crate) fn recovered_publications(result: &Value) -> Vec<(u64, i64)> {
    result["publications"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| {
                    (
                        p["offset"].as_u64().unwrap_or(0),
                        p["data"]["n"].as_i64().expect("a number n"),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
