//! The Redis engine over TLS (`engine.redis.tls`): a `redis-server` of the test's own that
//! speaks only TLS and demands client certificates, signed by a test CA, and tether nodes
//! that trust that CA (or not) and present a client certificate (or not).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::tls::TestCa;
use support::{Client, Config, EngineKind, TempDir, TlsClientConfig, config, free_port, start};

/// A TLS-only Redis (no plaintext port) that requires a client certificate from the CA.
struct TlsRedis {
    child: Child,
    port: u16,
    ca: TestCa,
    _dir: TempDir,
}

impl TlsRedis {
    fn start() -> Self {
        let ca = TestCa::new();
        let server = ca.issue(&["localhost", "127.0.0.1"]);
        let dir = TempDir::new();
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write ca");
        std::fs::write(dir.join("server.pem"), &server.cert_pem).expect("write cert");
        std::fs::write(dir.join("server.key"), &server.key_pem).expect("write key");
        let port = free_port();
        let path = |name: &str| dir.join(name).display().to_string();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &path("server.pem")])
            .args(["--tls-key-file", &path("server.key")])
            .args(["--tls-ca-cert-file", &path("ca.pem")])
            .args(["--tls-auth-clients", "yes"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        // Up when its port accepts a TCP connection (the TLS handshake is tether's business).
        let up = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "the TLS redis-server never listened");
        Self {
            child,
            port,
            ca,
            _dir: dir,
        }
    }

    /// A node config on this Redis with `tls`.
    fn config(&self, tls: TlsClientConfig) -> Config {
        let mut cfg = config();
        cfg.engine.kind = EngineKind::Redis;
        cfg.engine.redis.address = vec![format!("redis://127.0.0.1:{}", self.port)];
        cfg.engine.redis.prefix = format!("tls-{}", uuid::Uuid::new_v4().simple());
        cfg.engine.redis.tls = tls;
        cfg
    }

    /// A TLS object trusting the CA and presenting a client certificate it signed.
    fn trusting_with_identity(&self) -> TlsClientConfig {
        let client = self.ca.issue(&["tether-node"]);
        TlsClientConfig {
            enabled: true,
            server_ca_pem: self.ca.cert_pem(),
            cert_pem: client.cert_pem,
            key_pem: client.key_pem,
            ..TlsClientConfig::default()
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_node_publishes_and_delivers_through_a_tls_redis_with_a_client_certificate() {
    let redis = TlsRedis::start();
    let mut cfg = redis.config(redis.trusting_with_identity());
    cfg.channel.without_namespace.history_size = 10;
    cfg.channel.without_namespace.history_ttl = Duration::from_secs(60);
    let server = start(cfg).await;
    let mut client = Client::connect(&server, "tls").await;
    client.subscribe(json!({"channel": "news"})).await;
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "news", "data": {"over": "tls"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["offset"], 1, "{body}");
    let push = client.wait_for(|m| m["push"]["pub"].is_object()).await;
    assert_eq!(
        push["push"]["pub"]["data"],
        json!({"over": "tls"}),
        "{push}"
    );
    let (_, history) = server
        .api("history", json!({"channel": "news", "limit": 10}))
        .await;
    assert_eq!(
        history["result"]["publications"][0]["data"],
        json!({"over": "tls"}),
        "{history}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_node_that_does_not_trust_the_server_or_has_no_client_certificate_publishes_nothing() {
    let redis = TlsRedis::start();
    let other_ca = TestCa::new();
    let mut untrusting = redis.trusting_with_identity();
    untrusting.server_ca_pem = other_ca.cert_pem();
    let mut anonymous = redis.trusting_with_identity();
    anonymous.cert_pem.clear();
    anonymous.key_pem.clear();
    for tls in [untrusting, anonymous] {
        let server = start(redis.config(tls)).await;
        let (status, body) = server
            .api("publish", json!({"channel": "news", "data": {}}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(body["error"]["code"], 100, "{body}");
        server.stop().await;
    }
}
