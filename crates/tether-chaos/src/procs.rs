//! Processes the suite starts: `redis-server`, `tether serve` nodes and client processes,
//! optionally inside a network namespace (`ip netns exec` execs, so the pid is the
//! program's). Every pid goes to the run directory's `pids` file, which
//! `scripts/chaos.sh` kills on an interrupted run; dropping a [`Proc`] kills it.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::publisher::API_KEY;

/// A child process.
#[derive(Debug)]
pub(crate) struct Proc {
    /// What it is, for messages.
    pub(crate) name: String,
    /// Its pid.
    pub(crate) pid: u32,
    child: Child,
}

/// Where a run keeps its files: configs, logs and the `pids` file.
#[derive(Clone, Debug)]
pub(crate) struct RunDir(pub(crate) PathBuf);

impl RunDir {
    /// `name` inside it.
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn record_pid(&self, pid: u32) {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.join("pids"))
        {
            let _ = writeln!(file, "{pid}");
        }
    }
}

/// Options of [`Proc::spawn`].
#[derive(Debug, Default)]
pub(crate) struct Spawn<'a> {
    /// Namespace to run in.
    pub(crate) netns: Option<&'a str>,
    /// Environment additions.
    pub(crate) env: Vec<(&'a str, String)>,
    /// Where stderr (and stdout unless piped) goes.
    pub(crate) log: Option<PathBuf>,
    /// Pipe stdin and stdout (client processes).
    pub(crate) piped: bool,
}

impl Proc {
    /// Starts `program args…`.
    pub(crate) fn spawn(
        dir: &RunDir,
        name: &str,
        program: &Path,
        args: &[String],
        options: &Spawn<'_>,
    ) -> anyhow::Result<Self> {
        let mut command = match options.netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(program);
                command
            }
            None => Command::new(program),
        };
        command.args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TETHER_") {
                command.env_remove(key);
            }
        }
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let log = match &options.log {
            Some(path) => Stdio::from(
                std::fs::File::create(path).with_context(|| format!("create {path:?}"))?,
            ),
            None => Stdio::null(),
        };
        if options.piped {
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log);
        } else {
            let out = match &options.log {
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .append(true)
                        .open(path)
                        .with_context(|| format!("open {path:?}"))?,
                ),
                None => Stdio::null(),
            };
            command.stdin(Stdio::null()).stdout(out).stderr(log);
        }
        command.kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("start {name} ({})", program.display()))?;
        let pid = child.id().context("a pid")?;
        dir.record_pid(pid);
        Ok(Self {
            name: name.to_owned(),
            pid,
            child,
        })
    }

    /// The child, to take its pipes.
    pub(crate) fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// SIGKILL, and reap it.
    pub(crate) async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`).
    pub(crate) fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .context("run kill")?;
        anyhow::ensure!(
            status.success(),
            "kill -{signal} {} ({})",
            self.pid,
            self.name
        );
        Ok(())
    }

    /// Waits up to `timeout` for it to exit by itself; kills it after that.
    pub(crate) async fn wait_or_kill(&mut self, timeout: Duration) {
        if tokio::time::timeout(timeout, self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }
}

/// Polls `check` every 100 ms until it is true or `timeout` passes.
pub(crate) async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status of `GET path` at `addr` (`None`: no answer within a second).
pub(crate) async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await.ok()?;
        let text = std::str::from_utf8(&head[..n]).ok()?;
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()
        .flatten()
}

/// `redis-cli -h host -p port args…` (in `netns` when given); its trimmed stdout.
pub(crate) fn redis_cli(netns: Option<&str>, host: &str, port: u16, args: &[&str]) -> String {
    let mut command = match netns {
        Some(ns) => {
            let mut command = std::process::Command::new("ip");
            command.args(["netns", "exec", ns, "redis-cli"]);
            command
        }
        None => std::process::Command::new("redis-cli"),
    };
    command
        .args(["-h", host, "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null());
    command
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Where a node finds Redis.
#[derive(Clone, Debug)]
pub(crate) enum RedisTarget {
    /// One standalone Redis at this URL.
    Standalone(String),
    /// Sentinels at these `host:port`s monitoring this master name.
    Sentinel(Vec<String>, String),
}

/// Timing options of a node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeTiming {
    /// `client.ping_interval`.
    pub(crate) ping: Duration,
    /// `client.pong_timeout`.
    pub(crate) pong: Duration,
    /// `client.connection_rate_limit` (0: off).
    pub(crate) connection_rate_limit: u32,
}

/// The config of a node listening on `address:port` with Redis at `redis` under `prefix`:
/// insecure clients (no tokens), the API key, and the recoverable namespace `chaos`.
pub(crate) fn node_config(
    address: &str,
    port: u16,
    redis: &RedisTarget,
    prefix: &str,
    timing: NodeTiming,
) -> Value {
    let mut engine = json!({ "prefix": prefix });
    match redis {
        RedisTarget::Standalone(url) => engine["address"] = json!([url]),
        RedisTarget::Sentinel(sentinels, name) => {
            engine["sentinel_address"] = json!(sentinels);
            engine["sentinel_master_name"] = json!(name);
        }
    }
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    json!({
        "http_server": { "address": address, "port": port },
        "tcp": { "enabled": false },
        "http_api": { "key": API_KEY },
        "client": {
            "insecure": true,
            "token": { "hmac_secret_key": "tether-chaos-secret" },
            "ping_interval": secs(timing.ping),
            "pong_timeout": secs(timing.pong),
            "connection_rate_limit": timing.connection_rate_limit,
        },
        "shutdown": { "drain_window": "100ms" },
        "engine": { "type": "redis", "redis": engine },
        "channel": {
            "namespaces": [{
                "name": "chaos",
                "history_size": 10000,
                "history_ttl": "600s",
                "force_recovery": true,
                "allow_subscribe_for_client": true,
            }],
        },
    })
}

/// Writes `config` to `path`.
pub(crate) fn write_config(path: &Path, config: &Value) -> anyhow::Result<()> {
    std::fs::write(path, config.to_string()).with_context(|| format!("write {path:?}"))
}
