//! The scenarios and the run of one: bring up Redis and the nodes (in namespaces, or on
//! loopback for Sentinel), start the client processes, publish at a fixed rate, inject the
//! fault, let it settle, stop, audit, tear everything down — whatever failed.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::watch;

use crate::audit::{Ack, Acks, audit_client};
use crate::events::{Event, Line, now_ms};
use crate::netns::Topology;
use crate::procs::{
    NodeTiming, Proc, RedisTarget, RunDir, Spawn, http_status, node_config, redis_cli, wait_until,
    write_config,
};
use crate::proxy::{self, Faults};
use crate::publisher;
use crate::report::{RunResult, StormResult, median};

/// A scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    /// Redis SIGKILLed, restarted empty after the fault time.
    RedisKill,
    /// Redis SIGSTOPped for the fault time.
    RedisFreeze,
    /// Node 2's link to Redis down for the fault time.
    RedisPartition,
    /// Node 2 SIGKILLed: its clients move to node 1.
    NodeKill,
    /// Node 2's link to its clients down for the fault time.
    NodePartition,
    /// Delay and loss-like stalls between the clients and the nodes for the fault time.
    ClientDelayLoss,
    /// `SENTINEL FAILOVER` of a master with one replica.
    SentinelFailover,
    /// The Sentinel-monitored master SIGKILLed; the replica takes over.
    SentinelKillMaster,
    /// The node SIGKILLed and restarted with thousands of clients on it.
    ReconnectStorm,
}

impl Kind {
    /// Every scenario, in the order the suite runs them.
    pub(crate) const ALL: [Self; 9] = [
        Self::RedisKill,
        Self::RedisFreeze,
        Self::RedisPartition,
        Self::NodeKill,
        Self::NodePartition,
        Self::ClientDelayLoss,
        Self::SentinelFailover,
        Self::SentinelKillMaster,
        Self::ReconnectStorm,
    ];

    /// The name on the command line and in results.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::RedisKill => "redis-kill",
            Self::RedisFreeze => "redis-freeze",
            Self::RedisPartition => "redis-partition",
            Self::NodeKill => "node-kill",
            Self::NodePartition => "node-partition",
            Self::ClientDelayLoss => "client-delay-loss",
            Self::SentinelFailover => "sentinel-failover",
            Self::SentinelKillMaster => "sentinel-kill-master",
            Self::ReconnectStorm => "reconnect-storm",
        }
    }

    fn sentinel(self) -> bool {
        matches!(self, Self::SentinelFailover | Self::SentinelKillMaster)
    }
}

/// How big and long the runs are.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The `tether` binary.
    pub(crate) tether: PathBuf,
    /// This binary (client processes are `<self> clients …`).
    pub(crate) this: PathBuf,
    /// The repository's `scripts/` directory (for `redis-sentinel.sh`).
    pub(crate) scripts: PathBuf,
    /// Where runs keep their files.
    pub(crate) dir: RunDir,
    /// Subscribers in the ordinary scenarios.
    pub(crate) clients: usize,
    /// Channels they spread over.
    pub(crate) channels: usize,
    /// Publishes per second.
    pub(crate) rate: f64,
    /// How long a fault lasts.
    pub(crate) fault: Duration,
    /// How long the run goes on after the fault ended (before the drain).
    pub(crate) settle: Duration,
    /// Clients in the reconnect storm.
    pub(crate) storm_clients: usize,
    /// Clients per storm process (bounded by the file limit).
    pub(crate) storm_per_process: usize,
    /// `client.connection_rate_limit` in the storm.
    pub(crate) storm_rate_limit: u32,
    /// Base port of the Sentinel deployment.
    pub(crate) sentinel_port: u16,
    /// Commit recorded in the results.
    pub(crate) commit: String,
    /// Self-check: clients hide every n-th publication from the auditor (0: off).
    pub(crate) drop_every: u64,
}

const NODE_PORT: u16 = 8000;
const SENTINEL_MASTER: &str = "tether";

/// The deployment of one run.
struct Env {
    topology: Option<Topology>,
    redis: Option<Proc>,
    sentinel: Option<u16>,
    nodes: Vec<Option<Proc>>,
    node_addrs: Vec<SocketAddr>,
    node_netns: Vec<Option<String>>,
    configs: Vec<PathBuf>,
    client_addrs: Vec<SocketAddr>,
    faults: Option<Arc<Faults>>,
    dir: RunDir,
    tether: PathBuf,
    scripts: PathBuf,
    log_level: String,
    generation: usize,
}

impl Env {
    async fn up(kind: Kind, s: &Settings, tag: u32) -> anyhow::Result<Self> {
        let storm = kind == Kind::ReconnectStorm;
        let timing = if storm {
            // 15,000 connections pinged every 2 s would be the load, not the storm.
            NodeTiming {
                ping: Duration::from_secs(10),
                pong: Duration::from_secs(5),
                connection_rate_limit: s.storm_rate_limit,
            }
        } else {
            // Short pings: a partitioned link is noticed within seconds.
            NodeTiming {
                ping: Duration::from_secs(2),
                pong: Duration::from_secs(1),
                connection_rate_limit: 0,
            }
        };
        let nodes = if storm { 1 } else { 2 };
        let prefix = format!("tether-chaos-{tag}");
        let mut env = Self {
            topology: None,
            redis: None,
            sentinel: None,
            nodes: Vec::new(),
            node_addrs: Vec::new(),
            node_netns: Vec::new(),
            configs: Vec::new(),
            client_addrs: Vec::new(),
            faults: None,
            dir: s.dir.clone(),
            tether: s.tether.clone(),
            scripts: s.scripts.clone(),
            log_level: if storm {
                "warn,tether_server::transport=debug".to_owned()
            } else {
                "warn".to_owned()
            },
            generation: 0,
        };
        if kind.sentinel() {
            env.sentinel = Some(s.sentinel_port);
            env.sentinel_script(&["stop"])?;
            env.sentinel_script(&["start"])?;
            let target = RedisTarget::Sentinel(
                vec![format!("127.0.0.1:{}", s.sentinel_port + 10)],
                SENTINEL_MASTER.to_owned(),
            );
            for k in 1..=nodes {
                let port = free_port()?;
                let path = env.dir.join(&format!("node{k}.json"));
                write_config(
                    &path,
                    &node_config("127.0.0.1", port, &target, &prefix, timing),
                )?;
                env.configs.push(path);
                env.node_addrs
                    .push(SocketAddr::from(([127, 0, 0, 1], port)));
                env.node_netns.push(None);
            }
        } else {
            let topology = Topology::create(tag, nodes)?;
            for k in 1..=nodes {
                let target =
                    RedisTarget::Standalone(format!("redis://{}:6379", topology.redis_addr_for(k)));
                let path = env.dir.join(&format!("node{k}.json"));
                write_config(
                    &path,
                    &node_config("0.0.0.0", NODE_PORT, &target, &prefix, timing),
                )?;
                env.configs.push(path);
                env.node_addrs
                    .push(SocketAddr::from((topology.node_addr(k), NODE_PORT)));
                env.node_netns.push(Some(topology.node_ns(k)));
            }
            env.topology = Some(topology);
            env.start_redis().await?;
        }
        for i in 0..nodes {
            env.nodes.push(None);
            env.start_node(i)?;
        }
        for i in 0..nodes {
            env.wait_ready(i, Duration::from_secs(20)).await?;
        }
        env.client_addrs = env.node_addrs.clone();
        if kind == Kind::ClientDelayLoss {
            let faults = Arc::new(Faults::default());
            faults.delay_ms.store(200, Ordering::Relaxed);
            faults.stall_per_mille.store(50, Ordering::Relaxed);
            faults.stall_ms.store(250, Ordering::Relaxed);
            let mut proxied = Vec::new();
            for addr in &env.node_addrs {
                let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
                proxied.push(proxy::start(listen, *addr, faults.clone()).await?);
            }
            env.client_addrs = proxied;
            env.faults = Some(faults);
        }
        Ok(env)
    }

    fn sentinel_script(&self, args: &[&str]) -> anyhow::Result<String> {
        let port = self.sentinel.context("no sentinel deployment")?;
        let output = std::process::Command::new("bash")
            .arg(self.scripts.join("redis-sentinel.sh"))
            .args(args)
            .env("TETHER_REDIS_SENTINEL_PORT", port.to_string())
            .env("TMPDIR", &self.dir.0)
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("run scripts/redis-sentinel.sh")?;
        anyhow::ensure!(output.status.success(), "redis-sentinel.sh {args:?} failed");
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    async fn start_redis(&mut self) -> anyhow::Result<()> {
        let topology = self.topology.as_ref().context("no topology")?;
        let ns = topology.redis_ns();
        let data = self.dir.join("redis");
        std::fs::create_dir_all(&data)?;
        let args: Vec<String> = [
            "--bind",
            "0.0.0.0",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .chain([data.display().to_string()])
        .collect();
        self.generation += 1;
        let proc = Proc::spawn(
            &self.dir,
            "redis",
            std::path::Path::new("redis-server"),
            &args,
            &Spawn {
                netns: Some(&ns),
                log: Some(self.dir.join(&format!("redis-{}.log", self.generation))),
                ..Spawn::default()
            },
        )?;
        self.redis = Some(proc);
        let up = wait_until(Duration::from_secs(10), || {
            let ns = ns.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    redis_cli(Some(&ns), "127.0.0.1", 6379, &["PING"]) == "PONG"
                })
                .await
                .unwrap_or(false)
            }
        })
        .await;
        anyhow::ensure!(up, "redis did not answer PING");
        Ok(())
    }

    fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.generation += 1;
        let log = self
            .dir
            .join(&format!("node{}-{}.log", i + 1, self.generation));
        let args = vec![
            "serve".to_owned(),
            "--config".to_owned(),
            self.configs[i].display().to_string(),
        ];
        let proc = Proc::spawn(
            &self.dir,
            &format!("node{}", i + 1),
            &self.tether,
            &args,
            &Spawn {
                netns: self.node_netns[i].as_deref(),
                env: vec![("RUST_LOG", self.log_level.clone())],
                log: Some(log),
                piped: false,
            },
        )?;
        self.nodes[i] = Some(proc);
        Ok(())
    }

    /// The log file of the node's current process.
    fn node_log(&self, i: usize) -> PathBuf {
        self.dir
            .join(&format!("node{}-{}.log", i + 1, self.generation))
    }

    async fn wait_ready(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let addr = self.node_addrs[i];
        let ready = wait_until(timeout, || async move {
            http_status(addr, "/ready").await == Some(200)
        })
        .await;
        anyhow::ensure!(ready, "node {} at {addr} not ready", i + 1);
        Ok(())
    }

    async fn down(&mut self) {
        for node in self.nodes.iter_mut().flatten() {
            node.kill().await;
        }
        if let Some(redis) = self.redis.as_mut() {
            // A frozen Redis must be thawed to die cleanly.
            let _ = redis.signal("CONT");
            redis.kill().await;
        }
        if let Some(mut topology) = self.topology.take() {
            topology.destroy();
        }
        if self.sentinel.is_some() {
            let _ = self.sentinel_script(&["stop"]);
        }
    }

    fn sentinel_master_port(&self) -> anyhow::Result<u16> {
        let master = self.sentinel_script(&["master"])?;
        master
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("master address {master:?}"))
    }
}

/// A free TCP port on loopback.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// When the fault happened, and what was seen.
#[derive(Debug, Default)]
struct Fault {
    start: u64,
    end: u64,
    notes: Vec<String>,
}

async fn inject(kind: Kind, env: &mut Env, s: &Settings) -> anyhow::Result<Fault> {
    let mut fault = Fault {
        start: now_ms(),
        ..Fault::default()
    };
    match kind {
        Kind::RedisKill => {
            if let Some(redis) = env.redis.as_mut() {
                redis.kill().await;
            }
            tokio::time::sleep(s.fault).await;
            env.start_redis().await?;
            fault.notes.push("redis restarted empty".to_owned());
        }
        Kind::RedisFreeze => {
            let redis = env.redis.as_ref().context("no redis")?;
            redis.signal("STOP")?;
            tokio::time::sleep(s.fault).await;
            redis.signal("CONT")?;
        }
        Kind::RedisPartition => {
            let topology = env.topology.as_ref().context("no topology")?;
            topology.set_back(2, false)?;
            tokio::time::sleep(s.fault).await;
            topology.set_back(2, true)?;
        }
        Kind::NodeKill => {
            if let Some(node) = env.nodes[1].as_mut() {
                node.kill().await;
            }
            env.nodes[1] = None;
        }
        Kind::NodePartition => {
            let topology = env.topology.as_ref().context("no topology")?;
            topology.set_front(2, false)?;
            tokio::time::sleep(s.fault).await;
            topology.set_front(2, true)?;
        }
        Kind::ClientDelayLoss => {
            let faults = env.faults.as_ref().context("no proxy")?;
            let before = faults.chunks.load(Ordering::Relaxed);
            faults.on.store(true, Ordering::Relaxed);
            tokio::time::sleep(s.fault).await;
            faults.on.store(false, Ordering::Relaxed);
            fault.notes.push(format!(
                "{} of {} chunks stalled 250 ms on top of 200 ms each way",
                faults.stalled.load(Ordering::Relaxed),
                faults.chunks.load(Ordering::Relaxed) - before
            ));
        }
        Kind::SentinelFailover | Kind::SentinelKillMaster => {
            let old = env.sentinel_master_port()?;
            let sentinel = env.sentinel.context("no sentinel")? + 10;
            if kind == Kind::SentinelFailover {
                let reply = redis_cli(
                    None,
                    "127.0.0.1",
                    sentinel,
                    &["SENTINEL", "FAILOVER", SENTINEL_MASTER],
                );
                anyhow::ensure!(reply == "OK", "SENTINEL FAILOVER: {reply}");
            } else {
                env.sentinel_script(&["kill", &old.to_string()])?;
            }
            let mut new = old;
            for _ in 0..300 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                new = env.sentinel_master_port().unwrap_or(old);
                if new != old {
                    break;
                }
            }
            anyhow::ensure!(new != old, "no failover from {old}");
            fault.end = now_ms();
            fault.notes.push(format!(
                "master {old} -> {new} in {} ms",
                fault.end - fault.start
            ));
            if kind == Kind::SentinelKillMaster {
                env.sentinel_script(&["restart", &old.to_string()])?;
            }
            return Ok(fault);
        }
        Kind::ReconnectStorm => {
            if let Some(node) = env.nodes[0].as_mut() {
                node.kill().await;
            }
            tokio::time::sleep(s.fault).await;
            env.start_node(0)?;
            env.wait_ready(0, Duration::from_secs(20)).await?;
        }
    }
    fault.end = now_ms();
    Ok(fault)
}

/// Runs scenario `kind` once; everything it started is gone when it returns.
pub(crate) async fn run_once(kind: Kind, s: &Settings, run: u32) -> anyhow::Result<RunResult> {
    let tag = std::process::id();
    let mut env = match Env::up(kind, s, tag).await {
        Ok(env) => env,
        Err(error) => bail!("{}: setup: {error:#}", kind.name()),
    };
    let result = exercise(kind, &mut env, s, run).await;
    env.down().await;
    result.with_context(|| kind.name().to_owned())
}

async fn exercise(kind: Kind, env: &mut Env, s: &Settings, run: u32) -> anyhow::Result<RunResult> {
    let storm = kind == Kind::ReconnectStorm;
    let clients = if storm { s.storm_clients } else { s.clients };
    let channels = if storm {
        (clients / 100).max(1)
    } else {
        s.channels
    };
    let per_process = if storm {
        s.storm_per_process.max(1)
    } else {
        clients.max(1)
    };
    let channel_prefix = format!("chaos:r{run}-");
    let urls: Vec<String> = env
        .client_addrs
        .iter()
        .map(|a| format!("ws://{a}/connection/websocket"))
        .collect();
    let processes = clients.div_ceil(per_process);
    let subscribed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    let mut readers = Vec::new();
    let mut stdins = Vec::new();
    for p in 0..processes {
        let first = p * per_process;
        let count = per_process.min(clients - first);
        let mut args: Vec<String> = vec![
            "clients".into(),
            "--urls".into(),
            urls.join(","),
            "--channel-prefix".into(),
            channel_prefix.clone(),
            "--channels".into(),
            channels.to_string(),
            "--first".into(),
            first.to_string(),
            "--count".into(),
            count.to_string(),
        ];
        if s.drop_every > 0 {
            args.extend(["--drop-every".to_owned(), s.drop_every.to_string()]);
        }
        if storm {
            let ramp = (2000 / processes).max(1);
            args.extend(
                [
                    "--backoff-min-ms",
                    "250",
                    "--backoff-max-ms",
                    "2500",
                    "--ping-slack-ms",
                    "10000",
                    "--connect-timeout-ms",
                    "5000",
                    "--ramp-per-sec",
                ]
                .iter()
                .map(|a| (*a).to_owned())
                .chain([ramp.to_string()]),
            );
        }
        let mut worker = Proc::spawn(
            &env.dir,
            &format!("clients{p}"),
            &s.this,
            &args,
            &Spawn {
                log: Some(env.dir.join(&format!("clients{p}.log"))),
                piped: true,
                ..Spawn::default()
            },
        )?;
        let stdout = worker.child().stdout.take().context("worker stdout")?;
        stdins.push(worker.child().stdin.take().context("worker stdin")?);
        let subscribed = subscribed.clone();
        readers.push(tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut out = Vec::new();
            let mut seen = HashSet::new();
            while let Ok(Some(text)) = lines.next_line().await {
                let Ok(line) = serde_json::from_str::<Line>(&text) else {
                    continue;
                };
                if matches!(line.event, Event::Subscribed { .. }) && seen.insert(line.c) {
                    subscribed.fetch_add(1, Ordering::Relaxed);
                }
                out.push(line);
            }
            out
        }));
        workers.push(worker);
    }
    let all = wait_until(Duration::from_secs(if storm { 90 } else { 30 }), || {
        let subscribed = subscribed.clone();
        async move { subscribed.load(Ordering::Relaxed) >= clients }
    })
    .await;
    if !all {
        drop(stdins);
        for worker in &mut workers {
            worker.kill().await;
        }
        bail!(
            "only {} of {clients} clients subscribed",
            subscribed.load(Ordering::Relaxed)
        );
    }
    // Publish through every node, except a node the scenario takes away from the clients.
    let publish_to: Vec<SocketAddr> = match kind {
        Kind::NodeKill | Kind::NodePartition => vec![env.node_addrs[0]],
        _ => env.node_addrs.clone(),
    };
    let (_targets_tx, targets) = watch::channel(publish_to);
    let (stop_tx, stop) = watch::channel(false);
    let total = Duration::from_secs(2) + s.fault + s.settle + Duration::from_secs(30);
    let max = (s.rate * total.as_secs_f64()).ceil() as u64;
    let publisher = tokio::spawn(publisher::run(
        targets,
        channel_prefix.clone(),
        channels,
        s.rate,
        max,
        stop,
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fault = inject(kind, env, s).await;
    let fault = match fault {
        Ok(fault) => fault,
        Err(error) => {
            let _ = stop_tx.send(true);
            drop(stdins);
            for worker in &mut workers {
                worker.kill().await;
            }
            return Err(error.context("inject the fault"));
        }
    };
    // A storm under a tight connection-rate limit takes longer than the settle time to come
    // back; the audit must not end while clients are still on their way.
    let settle = if storm {
        s.settle + Duration::from_secs(12)
    } else {
        s.settle
    };
    tokio::time::sleep(settle).await;
    let _ = stop_tx.send(true);
    let attempts = publisher.await.context("publisher")?;
    // Let the last publications reach every client.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(stdins);
    let mut lines = Vec::new();
    for reader in readers {
        match tokio::time::timeout(Duration::from_secs(30), reader).await {
            Ok(Ok(mut part)) => lines.append(&mut part),
            _ => bail!("a client process did not finish"),
        }
    }
    for worker in &mut workers {
        worker.wait_or_kill(Duration::from_secs(5)).await;
    }

    let mut acks = Acks::default();
    for attempt in &attempts {
        if let Some((epoch, offset)) = &attempt.ack {
            acks.insert(
                attempt.seq,
                Ack {
                    channel: attempt.channel,
                    epoch: epoch.clone(),
                    offset: *offset,
                },
            );
        }
    }
    let mut histories: HashMap<usize, Vec<(u64, Event)>> = HashMap::new();
    for line in lines {
        histories
            .entry(line.c)
            .or_default()
            .push((line.t, line.event));
    }
    let mut fault = fault;
    if storm {
        // The node is up when it accepts the first client: its `/ready` may answer seconds
        // later under the storm, which would flatter the time back.
        let first_connect = histories
            .values()
            .flat_map(|events| events.iter())
            .filter(|(t, e)| *t > fault.start && matches!(e, Event::Connected))
            .map(|(t, _)| *t)
            .min();
        if let Some(first) = first_connect {
            fault.end = fault.end.min(first);
        }
    }
    let scenario = if s.drop_every > 0 {
        format!("{} (self-check: 1 in {} hidden)", kind.name(), s.drop_every)
    } else {
        kind.name().to_owned()
    };
    let mut result = RunResult {
        scenario,
        run,
        commit: s.commit.clone(),
        clients: clients as u64,
        published: attempts.len() as u64,
        acked: acks.len() as u64,
        fault_ms: fault.end.saturating_sub(fault.start),
        notes: fault.notes,
        ..RunResult::default()
    };
    let published_after: HashSet<usize> = attempts
        .iter()
        .filter(|a| a.ack.is_some() && a.sent >= fault.end)
        .map(|a| a.channel)
        .collect();
    let mut firsts = Vec::new();
    for c in 0..clients {
        let events = histories.get(&c).map_or(&[][..], Vec::as_slice);
        let audit = audit_client(c % channels, events, &acks, Some(fault.end));
        result.delivered += audit.delivered;
        result.lost += audit.lost;
        result.duplicated += audit.duplicated;
        result.reordered += audit.reordered;
        result.false_recovered += audit.false_recovered;
        result.mismatched += audit.mismatched;
        result.notices += audit.notices;
        result.recoveries += audit.recoveries;
        match audit.first_delivery_after_ms {
            Some(ms) => firsts.push(ms),
            // Without a publication on its channel after the fault there was nothing to get.
            None if published_after.contains(&(c % channels)) => result.unrecovered += 1,
            None => {}
        }
    }
    result.recovery_max_ms = firsts.iter().copied().max().unwrap_or(0);
    result.recovery_median_ms = median(&mut firsts);
    let switched: usize = histories
        .values()
        .map(|events| {
            events
                .iter()
                .filter(|(_, e)| matches!(e, Event::Switched { .. }))
                .count()
        })
        .sum();
    if switched > 0 {
        result
            .notes
            .push(format!("{switched} client moves to another node"));
    }
    if storm {
        let log = std::fs::read_to_string(env.node_log(0)).unwrap_or_default();
        result.storm = Some(storm_figures(
            &histories,
            clients,
            fault.start,
            fault.end,
            &log,
            s.storm_rate_limit,
        ));
    }
    result.judge();
    Ok(result)
}

/// The storm's figures from the histories: who came back after the kill at `killed`, how
/// long after the node was ready at `up`, how fast; refusals from the node's log.
fn storm_figures(
    histories: &HashMap<usize, Vec<(u64, Event)>>,
    clients: usize,
    killed: u64,
    up: u64,
    log: &str,
    rate_limit: u32,
) -> StormResult {
    let mut figures = StormResult {
        clients: clients as u64,
        rate_limit,
        ..StormResult::default()
    };
    let mut connects: Vec<u64> = Vec::new();
    for events in histories.values() {
        let after = events.iter().filter(|(t, _)| *t > killed);
        let mut back = false;
        for (t, event) in after {
            match event {
                Event::Connected => connects.push(*t),
                Event::Subscribed { recovered, .. } if !back => {
                    back = true;
                    figures.back += 1;
                    figures.recovered += u64::from(*recovered);
                    figures.all_back_ms = figures.all_back_ms.max(t.saturating_sub(up));
                }
                _ => {}
            }
        }
    }
    connects.sort_unstable();
    if let (Some(first), Some(last)) = (connects.first(), connects.last()) {
        let span = (last - first).max(1) as f64 / 1000.0;
        figures.reconnect_rate = connects.len() as f64 / span;
        let mut per_second: HashMap<u64, u64> = HashMap::new();
        for t in &connects {
            *per_second.entry(t / 1000).or_default() += 1;
        }
        figures.peak_reconnects_per_sec = per_second.values().copied().max().unwrap_or(0);
    }
    for line in log.lines().filter(|l| l.contains("upgrade refused")) {
        if line.contains("connection rate limit") {
            figures.refused_rate_limit += 1;
        } else {
            figures.refused_other += 1;
        }
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storm_figures_count_returns_and_refusals() {
        let mut histories = HashMap::new();
        let sub = |recovered| Event::Subscribed {
            was_recovering: true,
            recovered,
            epoch: "e".to_owned(),
            offset: 1,
        };
        histories.insert(
            0,
            vec![
                (50, Event::Connected),
                (1100, Event::Connected),
                (1200, sub(true)),
            ],
        );
        histories.insert(1, vec![(2100, Event::Connected), (2500, sub(false))]);
        let log = "x websocket upgrade refused refused=connection rate limit reached\n\
                   x websocket upgrade refused refused=server is shutting down\n";
        let figures = storm_figures(&histories, 3, 100, 1000, log, 500);
        assert_eq!(figures.back, 2);
        assert_eq!(figures.recovered, 1);
        assert_eq!(figures.all_back_ms, 1500);
        assert_eq!((figures.refused_rate_limit, figures.refused_other), (1, 1));
        assert_eq!(figures.peak_reconnects_per_sec, 1);
    }
}
