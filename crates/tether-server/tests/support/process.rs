//! The `tether` binary as the tests run it: a command with a clean environment, and a
//! `tether serve` process ([`Node`]) with its config in a directory of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Child;

use super::{API_KEY, Gateway, SECRET, free_port, http};

/// `tether args…` with no `TETHER_*` variable inherited from the test's environment.
pub(crate) fn tether(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tether"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TETHER_") {
            command.env_remove(key);
        }
    }
    command.args(args);
    command
}

/// [`tether`] as a Tokio command.
pub(crate) fn tether_async(args: &[&str]) -> tokio::process::Command {
    tether(args).into()
}

/// `tether serve --config <path>` as the tests run it: WebSocket only (several nodes must not
/// race for the TCP port 8001), stdin and stdout closed, killed when dropped. The caller
/// decides where stderr goes.
pub(crate) fn serve_command(path: &Path) -> tokio::process::Command {
    let mut command = tether_async(&["serve", "--config"]);
    command
        .arg(path)
        .env("TETHER_TCP_ENABLED", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Fills in what every test node needs: its HTTP address on `port`, the token secret and the
/// API key the helpers use.
pub(crate) fn complete_config(config: &mut Value, port: u16) {
    config["http_server"] = json!({ "address": "127.0.0.1", "port": port });
    config["client"]["token"] = json!({ "hmac_secret_key": SECRET });
    config["http_api"] = json!({ "key": API_KEY });
}

/// Runs `tether serve` with `config` (completed as [`complete_config`] does, on a free port)
/// until it exits, which it must by itself within 10 s: its exit code and stderr.
pub(crate) async fn serve_until_exit(mut config: Value) -> (Option<i32>, String) {
    complete_config(&mut config, free_port());
    let dir = TempDir::new();
    let path = dir.write_config(&config);
    let output = serve_command(&path).stderr(Stdio::piped()).output();
    let output = tokio::time::timeout(Duration::from_secs(10), output)
        .await
        .expect("tether exits by itself")
        .expect("run tether");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A fresh directory under the system's temporary one, removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tether-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// `name` in the directory.
    pub(crate) fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `config` as JSON to `config.json` in the directory; returns its path.
    pub(crate) fn write_config(&self, config: &Value) -> PathBuf {
        let path = self.join("config.json");
        std::fs::write(&path, config.to_string()).expect("write the config");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `tether serve` process.
pub(crate) struct Node {
    pub(crate) addr: SocketAddr,
    child: Child,
    /// Its stderr so far, when started by [`Node::spawn_logged`] (else it is inherited).
    log: Option<Arc<Mutex<String>>>,
    _dir: TempDir,
}

impl Node {
    /// Starts a node on a free port with `config` (its `http_server`, `client.token`,
    /// `http_api` and `log` are set here), stderr inherited; does not wait for it.
    pub(crate) fn spawn(config: Value) -> Self {
        Self::launch(config, Stdio::inherit())
    }

    /// [`Node::spawn`], but its stderr is kept for [`Node::log`] (and still copied to the
    /// test's stderr, line by line).
    pub(crate) fn spawn_logged(config: Value) -> Self {
        let mut node = Self::launch(config, Stdio::piped());
        let stderr = node.child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        node.log = Some(Arc::clone(&log));
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{line}");
                let mut log = log.lock();
                log.push_str(&line);
                log.push('\n');
            }
        });
        node
    }

    /// [`Node::spawn`], then waits until `/ready` answers 200.
    pub(crate) async fn start_with(config: Value) -> Self {
        Self::spawn(config).ready_within_10s().await
    }

    /// [`Node::spawn_logged`], then waits until `/ready` answers 200.
    pub(crate) async fn start_logged(config: Value) -> Self {
        Self::spawn_logged(config).ready_within_10s().await
    }

    /// What the node wrote to stderr so far; only for a node started by
    /// [`Node::spawn_logged`].
    pub(crate) fn log(&self) -> String {
        self.log
            .as_ref()
            .expect("a node started with spawn_logged")
            .lock()
            .clone()
    }

    fn launch(mut config: Value, stderr: Stdio) -> Self {
        let port = free_port();
        complete_config(&mut config, port);
        config["log"] = json!({ "level": "warn" });
        let dir = TempDir::new();
        let path = dir.write_config(&config);
        let child = serve_command(&path)
            .stderr(stderr)
            .spawn()
            .expect("start tether");
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            log: None,
            _dir: dir,
        }
    }

    async fn ready_within_10s(self) -> Self {
        let ready = http::wait_for_status(self.addr, "/ready", 200, Duration::from_secs(10)).await;
        assert!(ready, "node on {} never became ready", self.addr);
        self
    }

    /// HTTP status of `/ready`, `None` when the node does not answer.
    pub(crate) async fn ready(&self) -> Option<u16> {
        http::get_status(self.addr, "/ready").await
    }

    /// POST /api/<method>, which must answer 200; returns the JSON body.
    pub(crate) async fn api(&self, method: &str, body: impl Serialize) -> Value {
        let (status, body) = http::api(self.addr, method, body, Some(API_KEY))
            .await
            .expect("api reachable");
        assert_eq!(status, 200, "{method}: {body}");
        body
    }

    pub(crate) async fn publish(&self, channel: &str, data: Value) -> Value {
        self.api("publish", json!({ "channel": channel, "data": data }))
            .await
    }

    /// Sends SIGTERM; the node drains its clients and exits by itself.
    pub(crate) fn sigterm(&self) {
        let pid = self.child.id().expect("node running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success());
    }

    /// SIGTERM, then waits for the exit (within 10 s); returns its status.
    pub(crate) async fn terminate(mut self) -> ExitStatus {
        self.sigterm();
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("node exits after SIGTERM")
            .expect("wait for the node")
    }

    /// SIGKILL: the node gets no chance to say goodbye.
    pub(crate) async fn kill(mut self) {
        self.child.start_kill().expect("kill the node");
        let _ = self.child.wait().await;
    }

    /// The exit status, once the node has exited.
    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("node status")
    }
}

impl Gateway for Node {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}
