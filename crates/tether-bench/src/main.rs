//! The `tether-bench` binary: command line, output, and the hidden `worker` entry point the
//! scenarios re-execute. The machinery lives in the library (`tether_bench`).

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use tether_bench::backend::{BackendConfig, Fault};
use tether_bench::coord::{self, Common, FanoutParams};
use tether_bench::engine_fault::EngineFaultParams;
use tether_bench::fault::FaultParams;
use tether_bench::history::{ChannelOrder, PublishParams, ReadyParams, VerifyParams};
use tether_bench::outbox::{self, OutboxParams};
use tether_bench::proxy::{DirectTo, ProxyParams};
use tether_bench::receiver::ReceiverConfig;
use tether_bench::target::{Creds, Target};
use tether_bench::{backend, engine_fault, history, proxy, receiver, report, worker};

#[derive(Debug, Parser)]
#[command(
    name = "tether-bench",
    version,
    about = "Idle, fan-out, churn and backend-proxy benchmarks over the network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// N clients connect, subscribe to one channel each, answer pings, stay idle.
    Idle {
        #[command(flatten)]
        common: CommonArgs,
        /// Connections.
        #[arg(short, long, default_value_t = 15_000)]
        n: u64,
        /// Idle window over which server CPU is measured, e.g. `60s`.
        #[arg(long, default_value = "60s", value_parser = humantime_duration)]
        window: Duration,
    },
    /// N subscribers on one channel; publications at each rate; latency, loss, deliveries/s.
    Fanout {
        #[command(flatten)]
        common: CommonArgs,
        /// Subscribers.
        #[arg(short, long, default_value_t = 5_000)]
        n: u64,
        /// Publication rates to try, per second, in order.
        #[arg(long, value_delimiter = ',', default_value = "10,20,50,100,200,400")]
        rates: Vec<f64>,
        /// Time per rate, e.g. `10s`.
        #[arg(long, default_value = "10s", value_parser = humantime_duration)]
        duration: Duration,
        /// Publication data size in bytes.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// A rate counts as sustained when p99 is at most this (ms) with no loss.
        #[arg(long, default_value_t = 1000.0)]
        max_p99_ms: f64,
        /// Publishing connections.
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        /// Try every rate even after one fails.
        #[arg(long)]
        keep_going: bool,
    },
    /// connect -> subscribe -> disconnect cycles per second.
    Churn {
        #[command(flatten)]
        common: CommonArgs,
        /// Concurrent cycle loops (over all workers).
        #[arg(long, default_value_t = 256)]
        concurrency: u64,
        /// Worker processes.
        #[arg(long, default_value_t = 2)]
        workers: u64,
        /// How long, e.g. `20s`.
        #[arg(long, default_value = "20s", value_parser = humantime_duration)]
        duration: Duration,
    },
    /// tether's backend proxy (run it against `tether-bench backend`): connects/s through
    /// the connect proxy, then rpc through the rpc proxy at a fixed rate interleaved with
    /// the same calls made to the backend directly (the latency the proxy adds), then rpc/s
    /// at most, proxied and direct.
    Proxy {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        proxy: ProxyArgs,
    },
    /// tether's rpc proxy at fault (run it against `tether-bench backend --fault ...`, or no
    /// backend): S token-connected subscribers' publication latency and loss while K other
    /// clients send rpc through the rpc proxy at a fixed rate, and what those calls get.
    ProxyFault {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        fault: FaultArgs,
    },
    /// Serve the proxy scenarios' trivial backend: `POST /connect` answers a user,
    /// `POST /rpc` echoes the request's `data`; over gRPC too with `--grpc-listen`.
    Backend {
        /// Address to listen on (HTTP).
        #[arg(long, default_value = "127.0.0.1:18200")]
        listen: SocketAddr,
        /// Address for the gRPC listener (`CentrifugoProxy` Connect and RPC); none without.
        #[arg(long)]
        grpc_listen: Option<SocketAddr>,
        /// Runtime threads (1: one current-thread runtime).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// How rpc calls are answered (connects are always answered).
        #[arg(long, value_enum, default_value = "healthy")]
        fault: FaultKind,
        /// With `--fault slow`: how long each rpc answer waits.
        #[arg(long, default_value = "2s", value_parser = humantime_duration)]
        slow_delay: Duration,
        /// With `--fault flap`: how long each healthy and each failing period lasts.
        #[arg(long, default_value = "1s", value_parser = humantime_duration)]
        flap_period: Duration,
    },
    /// Serve as the fan-out floor: the `ws` baseline's protocol on a server that only writes
    /// (one `send` per subscriber per publication), to run as `--target floor`.
    Floor {
        /// Address to listen on (WebSocket and `POST /publish`).
        #[arg(long, default_value = "127.0.0.1:18005")]
        listen: SocketAddr,
        /// Writing threads, each with its share of the subscribers.
        #[arg(long, default_value_t = 2)]
        lanes: usize,
    },
    /// Serve as tether's lifecycle-event webhook (issue 20): answers 200 to signed batches
    /// `{"events":[...]}`, counts their events by type, reports events/s on stderr every
    /// `--every` and `GET /stats` as JSON; prints the totals as JSON on SIGINT / SIGTERM.
    Receiver {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:18090")]
        listen: SocketAddr,
        /// `webhook.secret`: POSTs without a matching `X-Tether-Signature` are refused
        /// (401) and not counted; without it signatures are not checked.
        #[arg(long)]
        secret: Option<String>,
        /// How often a line with the events of the period goes to stderr (`0s`: never).
        #[arg(long, default_value = "1s", value_parser = humantime_duration)]
        every: Duration,
        /// Runtime threads (1: one current-thread runtime).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Publishes through the server API of one or more tethers at a fixed rate while their
    /// Redis is frozen (SIGSTOP) for a while: latency, errors and calls in flight of each,
    /// in the same run.
    EngineFault {
        /// A tether, as LABEL=ADDR of its HTTP API; repeat to compare side by side.
        #[arg(long = "api", required = true, value_parser = label_addr)]
        apis: Vec<(String, SocketAddr)>,
        /// The server API key.
        #[arg(long, default_value = "bench-api-key")]
        api_key: String,
        /// Publishes per second to each tether.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// How long to publish.
        #[arg(long, default_value = "12s", value_parser = humantime_duration)]
        duration: Duration,
        /// The Redis process to freeze.
        #[arg(long)]
        freeze_pid: u32,
        /// When to freeze it, from the first publish.
        #[arg(long, default_value = "3s", value_parser = humantime_duration)]
        freeze_at: Duration,
        /// How long it stays frozen.
        #[arg(long, default_value = "5s", value_parser = humantime_duration)]
        freeze_for: Duration,
        /// Calls sent this long after the freeze began are reported apart (a breaker has
        /// opened by then).
        #[arg(long, default_value = "200ms", value_parser = humantime_duration)]
        settle: Duration,
        /// The channel to publish into.
        #[arg(long, default_value = "bench-freeze")]
        channel: String,
        /// One JSON record on stdout instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Channels with history through tether's server API (issue 19, the disk engine):
    /// publications/s, a fill, durability checks and restart time.
    History {
        #[command(subcommand)]
        command: HistoryCommand,
    },
    /// tether's PostgreSQL outbox consumer (issue 21), against a running tether whose
    /// `postgresql` consumer reads `--table`: rows/s from the outbox to subscribers, then
    /// commit-to-delivery latency at a paced rate; fails unless every row was delivered once,
    /// in order per partition, and the outbox is empty at the end.
    Outbox {
        #[command(flatten)]
        outbox: OutboxArgs,
    },
    /// Side-by-side table of medians from `--json` output files (one record per line).
    Table {
        /// Files with `--json` records.
        files: Vec<PathBuf>,
    },
    /// Internal: a client worker process (started by the scenarios).
    #[command(hide = true)]
    Worker {
        /// The worker spec as JSON.
        #[arg(long)]
        spec: String,
    },
}

#[derive(Debug, Subcommand)]
enum HistoryCommand {
    /// N publishers, each awaiting its ack before the next, into random channels
    /// `<namespace>:<i>` with incompressible data: acknowledged publications/s, ack latency.
    Publish {
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        load: LoadArgs,
        /// Concurrent publishers.
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Stop after this many seconds...
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// ...or this many publications, whichever comes first.
        #[arg(long, default_value_t = u64::MAX)]
        max_count: u64,
        /// How each publication's channel is picked.
        #[arg(long, value_enum, default_value = "random")]
        order: OrderArg,
    },
    /// Exactly COUNT publications round-robin over the channels (COUNT / channels in each)
    /// from 64 publishers, as fast as the node acknowledges; fails unless all were acked.
    Fill {
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        load: LoadArgs,
        /// Publications.
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// Concurrent publishers.
        #[arg(long, default_value_t = 64)]
        publishers: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 900.0)]
        secs: f64,
    },
    /// Reads the history of every channel of a `--record` file and checks that each
    /// acknowledged publication is served, or that its channel's epoch changed; exits
    /// non-zero if any was LOST.
    Verify {
        #[command(flatten)]
        node: NodeArgs,
        /// The record written by `publish --record` or `fill --record`.
        #[arg(long)]
        record: PathBuf,
        /// The namespace's history_size: only a channel's newest this many must be kept.
        #[arg(long, default_value_t = 100)]
        history_size: u64,
        /// History calls in flight.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Waits for a (re)starting node: the time from --since-unix-ns to /ready answering 200
    /// and to a history call on --channel returning at least --min publications.
    Ready {
        #[command(flatten)]
        node: NodeArgs,
        /// The channel whose history must be served.
        #[arg(long, default_value = "hist:0")]
        channel: String,
        /// Publications its history must return.
        #[arg(long, default_value_t = 1)]
        min: usize,
        /// Measure from this instant (ns since the Unix epoch, `date +%s%N` before spawning
        /// the node); from now without it.
        #[arg(long)]
        since_unix_ns: Option<u128>,
        /// Give up after this long.
        #[arg(long, default_value = "60s", value_parser = humantime_duration)]
        timeout: Duration,
        /// Wait between attempts.
        #[arg(long, default_value = "2ms", value_parser = humantime_duration)]
        poll: Duration,
    },
}

/// The node every history command talks to.
#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// Address of the node's HTTP API.
    #[arg(long, default_value = "127.0.0.1:8000")]
    api: SocketAddr,
    /// The server API key.
    #[arg(long, visible_alias = "api-key", default_value = "bench-api-key")]
    key: String,
    /// One JSON record on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// What the history publishers send.
#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Channels `<namespace>:0` .. `<namespace>:<channels - 1>`.
    #[arg(long, default_value_t = 10_000)]
    channels: u32,
    /// The namespace (it must have history).
    #[arg(long, default_value = "hist")]
    namespace: String,
    /// Bytes of each publication's data as stored (JSON, at least 8).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Write every acknowledged `channel offset epoch` to this file, one per line.
    #[arg(long)]
    record: Option<PathBuf>,
}

/// How each publication's channel is picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OrderArg {
    /// At random.
    Random,
    /// Publication n into channel n mod channels.
    RoundRobin,
}

impl LoadArgs {
    fn params(
        &self,
        node: &NodeArgs,
        publishers: usize,
        secs: f64,
        max_count: u64,
        order: ChannelOrder,
    ) -> anyhow::Result<PublishParams> {
        if !(secs.is_finite() && secs > 0.0) {
            anyhow::bail!("--secs must be a positive number");
        }
        Ok(PublishParams {
            api: node.api,
            api_key: node.key.clone(),
            publishers,
            channels: self.channels,
            namespace: self.namespace.clone(),
            size: self.size,
            duration: Duration::from_secs_f64(secs),
            max_count,
            order,
            record: self.record.clone(),
        })
    }
}

impl NodeArgs {
    fn print(&self, scenario: &str, result: &impl serde::Serialize) {
        let rec = report::record("tether", scenario, result);
        if self.json {
            println!("{rec}");
        } else {
            print!("{}", report::human(&rec));
        }
    }
}

#[derive(Debug, clap::Args)]
struct CommonArgs {
    /// Server kind.
    #[arg(long, value_enum, default_value = "tether")]
    target: Target,
    /// WebSocket address of the server; several, comma-separated, spread the clients
    /// round-robin over the nodes of a cluster.
    #[arg(long, default_value = "127.0.0.1:8000", value_delimiter = ',', num_args = 1..)]
    addr: Vec<SocketAddr>,
    /// Publish API address (HTTP; the client port for NATS); defaults to the first --addr.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// Server process id, for RSS and CPU from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Name shown in results instead of the target kind.
    #[arg(long)]
    label: Option<String>,
    /// Most connections per worker process (keep well under the open-file limit).
    #[arg(long, default_value_t = 12_000)]
    per_worker: u64,
    /// Connects in flight per worker.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// HS256 secret for tether connection tokens.
    #[arg(long, default_value = "bench-secret")]
    token_secret: String,
    /// tether API key.
    #[arg(long, default_value = "bench-api-key")]
    api_key: String,
    /// Print one JSON record per line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct OutboxArgs {
    /// tether's WebSocket address.
    #[arg(long, default_value = "127.0.0.1:18020")]
    addr: SocketAddr,
    /// HS256 secret for tether connection tokens.
    #[arg(long, default_value = "bench-secret")]
    token_secret: String,
    /// PostgreSQL connection string (the database of tether's consumer).
    #[arg(
        long,
        default_value = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    )]
    dsn: String,
    /// The outbox table: tether's `outbox_table_name`.
    #[arg(long, default_value = "bench_outbox")]
    table: String,
    /// Partitions: tether's `num_partitions` (one producer and one subscriber each).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Channel of partition p: this prefix and p.
    #[arg(long, default_value = "bench_outbox_p")]
    channel_prefix: String,
    /// Drop and create the table first (Centrifugo's schema), with the notification trigger
    /// on this channel when --notify-channel is given.
    #[arg(long)]
    create: bool,
    /// Only create the table (implies --create), then exit: before tether starts, whose
    /// consumer checks the table.
    #[arg(long)]
    create_only: bool,
    /// The notification channel tether LISTENs on (tether's
    /// `partition_notification_channel`); none: NOTIFY off.
    #[arg(long)]
    notify_channel: Option<String>,
    /// Throughput phase: rows in all.
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Throughput phase: rows per insert transaction.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Latency phase: single-row transactions per second over all partitions.
    #[arg(long, default_value_t = 800.0)]
    rate: f64,
    /// Latency phase: rows in all.
    #[arg(long, default_value_t = 8_000)]
    latency_rows: u64,
    /// Longest wait for a phase's rows after its last insert.
    #[arg(long, default_value = "60s", value_parser = humantime_duration)]
    timeout: Duration,
    /// Name shown in the record.
    #[arg(long, default_value = "tether")]
    label: String,
    /// One JSON record on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// How the backend answers rpc calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FaultKind {
    /// At once.
    Healthy,
    /// After `--slow-delay`.
    Slow,
    /// HTTP 500 / gRPC INTERNAL.
    Error,
    /// Healthy and failing by turns, `--flap-period` each.
    Flap,
}

impl FaultKind {
    fn fault(self, slow_delay: Duration, flap_period: Duration) -> Fault {
        match self {
            Self::Healthy => Fault::Healthy,
            Self::Slow => Fault::Slow(slow_delay),
            Self::Error => Fault::Error,
            Self::Flap => Fault::Flap(flap_period),
        }
    }
}

/// The protocol of the direct calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DirectKind {
    /// `POST /rpc` to `--backend`.
    Http,
    /// `CentrifugoProxy/RPC` to `--backend-grpc`.
    Grpc,
}

#[derive(Debug, clap::Args)]
struct ProxyArgs {
    /// The backend's HTTP address (as in tether's proxy endpoints), for direct HTTP calls.
    #[arg(long, default_value = "127.0.0.1:18200")]
    backend: SocketAddr,
    /// The backend's gRPC address, for direct gRPC calls.
    #[arg(long)]
    backend_grpc: Option<SocketAddr>,
    /// How the direct calls are made: as tether's proxies in the run call the backend.
    #[arg(long, value_enum, default_value = "http")]
    direct: DirectKind,
    /// The backend's process id, for its CPU from /proc.
    #[arg(long)]
    backend_pid: Option<u32>,
    /// Concurrent connect loops (over all workers).
    #[arg(long, default_value_t = 200)]
    connect_loops: u64,
    /// Worker processes for the connect loops.
    #[arg(long, default_value_t = 2)]
    connect_workers: u64,
    /// How long the connect loops run, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    connect_duration: Duration,
    /// rpc clients (connections, opened through the connect proxy).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// rpc calls per second through tether, and as many direct, in the fixed-rate phase.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Length of the fixed-rate phase, e.g. `20s`.
    #[arg(long, default_value = "20s", value_parser = humantime_duration)]
    duration: Duration,
    /// Size of the rpc `data` in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Length of each max-throughput phase (proxied, then direct), e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    max_duration: Duration,
    /// rpc calls in flight per client in the max-throughput phase.
    #[arg(long, default_value_t = 4)]
    depth: usize,
}

impl ProxyArgs {
    fn params(&self) -> anyhow::Result<ProxyParams> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            anyhow::bail!("--rate must be a positive number");
        }
        if self.clients == 0 || self.depth == 0 || self.connect_loops == 0 {
            anyhow::bail!("--clients, --depth and --connect-loops must be at least 1");
        }
        let direct = match (self.direct, self.backend_grpc) {
            (DirectKind::Http, _) => DirectTo::Http(self.backend),
            (DirectKind::Grpc, Some(addr)) => DirectTo::Grpc(addr),
            (DirectKind::Grpc, None) => anyhow::bail!("--direct grpc needs --backend-grpc"),
        };
        Ok(ProxyParams {
            direct,
            backend_pid: self.backend_pid,
            connect_loops: self.connect_loops,
            connect_workers: self.connect_workers,
            connect_duration: self.connect_duration,
            clients: self.clients,
            rate: self.rate,
            duration: self.duration,
            size: self.size,
            max_duration: self.max_duration,
            depth: self.depth,
        })
    }
}

#[derive(Debug, clap::Args)]
struct FaultArgs {
    /// The backend's state, as set up for the run (`healthy`, `slow`, `down`, ...): only
    /// recorded.
    #[arg(long)]
    mode: String,
    /// The backend's process id, for its CPU from /proc.
    #[arg(long)]
    backend_pid: Option<u32>,
    /// Subscribers of the channel (token-connected).
    #[arg(long, default_value_t = 1_000)]
    subscribers: u64,
    /// Publications per second through the API.
    #[arg(long, default_value_t = 50.0)]
    pub_rate: f64,
    /// Publishing connections.
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// Publication and rpc data size in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// rpc clients (token-connected).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// rpc calls per second over all clients.
    #[arg(long, default_value_t = 500.0)]
    rpc_rate: f64,
    /// How long publications and rpc calls go on, e.g. `15s`.
    #[arg(long, default_value = "15s", value_parser = humantime_duration)]
    duration: Duration,
}

impl FaultArgs {
    fn params(&self) -> anyhow::Result<FaultParams> {
        for (name, rate) in [("--pub-rate", self.pub_rate), ("--rpc-rate", self.rpc_rate)] {
            if !(rate.is_finite() && rate > 0.0) {
                anyhow::bail!("{name} must be a positive number");
            }
        }
        if self.subscribers == 0 || self.clients == 0 || self.publishers == 0 {
            anyhow::bail!("--subscribers, --clients and --publishers must be at least 1");
        }
        Ok(FaultParams {
            mode: self.mode.clone(),
            backend_pid: self.backend_pid,
            subscribers: self.subscribers,
            pub_rate: self.pub_rate,
            publishers: self.publishers,
            size: self.size,
            clients: self.clients,
            rpc_rate: self.rpc_rate,
            duration: self.duration,
        })
    }
}

/// `LABEL=ADDR`.
fn label_addr(s: &str) -> Result<(String, SocketAddr), String> {
    let (label, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected LABEL=ADDR"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{addr:?}: not an address: {e}"))?;
    Ok((label.to_owned(), addr))
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))
}

impl CommonArgs {
    fn common(&self) -> Common {
        Common {
            target: self.target,
            api: self.api.unwrap_or(self.addr[0]),
            addrs: self.addr.clone(),
            pid: self.pid,
            creds: Creds {
                token_secret: self.token_secret.clone(),
                api_key: self.api_key.clone(),
                ..Creds::default()
            },
            per_worker: self.per_worker,
            connect_concurrency: self.connect_concurrency,
        }
    }

    fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| {
            serde_json::to_value(self.target)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        })
    }

    fn print(&self, scenario: &str, result: &impl serde::Serialize) {
        let rec = report::record(&self.label(), scenario, result);
        if self.json {
            println!("{rec}");
        } else {
            print!("{}", report::human(&rec));
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Worker { spec } => serde_json::from_str(&spec)
            .map_err(anyhow::Error::from)
            .and_then(worker::run),
        Command::Table { files } => table(&files),
        Command::Floor { listen, lanes } => floor(listen, lanes),
        Command::Receiver {
            listen,
            secret,
            every,
            threads,
        } => receiver::serve(&ReceiverConfig {
            listen,
            secret,
            every,
            threads,
        }),
        Command::Backend {
            listen,
            grpc_listen,
            threads,
            fault,
            slow_delay,
            flap_period,
        } => backend::serve(&BackendConfig {
            listen,
            grpc_listen,
            threads,
            fault: fault.fault(slow_delay, flap_period),
        }),
        command => scenario(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn table(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut records = Vec::new();
    for path in files {
        let file = std::fs::File::open(path)?;
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v.get("scenario").is_some()
            {
                records.push(v);
            }
        }
    }
    print!("{}", report::table(&records));
    Ok(())
}

fn floor(listen: SocketAddr, lanes: usize) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(tether_bench::floor::serve(listen, lanes))
}

fn scenario(command: Command) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match command {
            Command::Idle { common, n, window } => {
                let r = coord::idle(&common.common(), n, window).await?;
                common.print("idle", &r);
            }
            Command::Fanout {
                common,
                n,
                rates,
                duration,
                size,
                max_p99_ms,
                publishers,
                keep_going,
            } => {
                let p = FanoutParams {
                    n,
                    rates,
                    duration,
                    size,
                    max_p99_ms,
                    publishers,
                    stop_on_fail: !keep_going,
                };
                let r = coord::fanout(&common.common(), &p).await?;
                common.print("fanout", &r);
            }
            Command::Churn {
                common,
                concurrency,
                workers,
                duration,
            } => {
                let r = coord::churn(&common.common(), concurrency, workers, duration).await?;
                common.print("churn", &r);
            }
            Command::Proxy { common, proxy } => {
                if common.target != Target::Tether {
                    anyhow::bail!("the proxy scenario is for --target tether only");
                }
                let p = proxy.params()?;
                // The scenario's clients are local tasks (one thread, shared tallies).
                let local = tokio::task::LocalSet::new();
                let r = local.run_until(proxy::run(&common.common(), &p)).await?;
                common.print("proxy", &r);
            }
            Command::EngineFault {
                apis,
                api_key,
                rate,
                duration,
                freeze_pid,
                freeze_at,
                freeze_for,
                settle,
                channel,
                json,
            } => {
                let p = EngineFaultParams {
                    targets: apis,
                    api_key,
                    rate,
                    duration,
                    freeze_pid,
                    freeze_at,
                    freeze_for,
                    settle,
                    channel,
                };
                let local = tokio::task::LocalSet::new();
                let r = local.run_until(engine_fault::run(&p)).await?;
                let rec = report::record("tether", "engine-fault", &r);
                if json {
                    println!("{rec}");
                } else {
                    println!("{}", serde_json::to_string_pretty(&rec)?);
                }
            }
            Command::ProxyFault { common, fault } => {
                if common.target != Target::Tether {
                    anyhow::bail!("the proxy-fault scenario is for --target tether only");
                }
                let p = fault.params()?;
                // The rpc clients are local tasks (one thread, shared tallies).
                let local = tokio::task::LocalSet::new();
                let r = local
                    .run_until(tether_bench::fault::run(&common.common(), &p))
                    .await?;
                common.print("proxy-fault", &r);
            }
            Command::History { command } => history_command(command).await?,
            Command::Outbox { outbox } => outbox_command(outbox).await?,
            Command::Table { .. }
            | Command::Worker { .. }
            | Command::Floor { .. }
            | Command::Receiver { .. }
            | Command::Backend { .. } => {}
        }
        Ok(())
    })
}

async fn outbox_command(a: OutboxArgs) -> anyhow::Result<()> {
    if a.create || a.create_only {
        outbox::create_table(&a.dsn, &a.table, a.notify_channel.as_deref()).await?;
        if a.create_only {
            return Ok(());
        }
    }
    let p = OutboxParams {
        addr: a.addr,
        token_secret: a.token_secret,
        dsn: a.dsn,
        table: a.table,
        partitions: a.partitions,
        channel_prefix: a.channel_prefix,
        notify: a.notify_channel.is_some(),
        rows: a.rows,
        batch: a.batch,
        rate: a.rate,
        latency_rows: a.latency_rows,
        timeout: a.timeout,
    };
    let r = outbox::run(&p).await?;
    let rec = report::record(&a.label, "outbox", &r);
    if a.json {
        println!("{rec}");
    } else {
        println!("{}", serde_json::to_string_pretty(&rec)?);
    }
    anyhow::ensure!(
        r.checks.ok,
        "checks failed: {} missing, {} duplicates, {} out of order, {} foreign, {} left in the outbox, errors {:?}",
        r.checks.missing,
        r.checks.duplicates,
        r.checks.out_of_order,
        r.checks.foreign,
        r.checks.outbox_left,
        r.checks.errors
    );
    Ok(())
}

async fn history_command(command: HistoryCommand) -> anyhow::Result<()> {
    match command {
        HistoryCommand::Publish {
            node,
            load,
            publishers,
            secs,
            max_count,
            order,
        } => {
            let order = match order {
                OrderArg::Random => ChannelOrder::Random,
                OrderArg::RoundRobin => ChannelOrder::RoundRobin,
            };
            let p = load.params(&node, publishers, secs, max_count, order)?;
            let r = history::publish(&p).await?;
            node.print("history-publish", &r);
        }
        HistoryCommand::Fill {
            node,
            load,
            count,
            publishers,
            secs,
        } => {
            let p = load.params(&node, publishers, secs, count, ChannelOrder::RoundRobin)?;
            let r = history::publish(&p).await?;
            node.print("history-fill", &r);
            anyhow::ensure!(
                r.acked == count && r.acked_without_position == 0,
                "fill incomplete: {} of {count} acknowledged ({} without a position), {} failed",
                r.acked,
                r.acked_without_position,
                r.failed
            );
        }
        HistoryCommand::Verify {
            node,
            record,
            history_size,
            concurrency,
        } => {
            let p = VerifyParams {
                api: node.api,
                api_key: node.key.clone(),
                record,
                history_size,
                concurrency,
            };
            let r = history::verify(&p).await?;
            node.print("history-verify", &r);
            anyhow::ensure!(r.lost == 0, "{} acknowledged publications LOST", r.lost);
            anyhow::ensure!(
                r.failed_channels == 0,
                "{} channels could not be read",
                r.failed_channels
            );
        }
        HistoryCommand::Ready {
            node,
            channel,
            min,
            since_unix_ns,
            timeout,
            poll,
        } => {
            let p = ReadyParams {
                api: node.api,
                api_key: node.key.clone(),
                channel,
                min_publications: min,
                since_unix_ns,
                timeout,
                poll,
            };
            let r = history::ready(&p).await?;
            node.print("history-ready", &r);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_kinds_carry_their_durations() {
        let (slow, flap) = (Duration::from_secs(2), Duration::from_millis(500));
        assert_eq!(FaultKind::Healthy.fault(slow, flap), Fault::Healthy);
        assert_eq!(FaultKind::Slow.fault(slow, flap), Fault::Slow(slow));
        assert_eq!(FaultKind::Error.fault(slow, flap), Fault::Error);
        assert_eq!(FaultKind::Flap.fault(slow, flap), Fault::Flap(flap));
    }

    #[test]
    fn direct_grpc_needs_the_backend_grpc_address() {
        let cli = |args: &[&str]| {
            let mut all = vec!["tether-bench", "proxy"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).unwrap().command {
                Command::Proxy { proxy, .. } => proxy.params().map(|p| p.direct),
                _ => unreachable!(),
            }
        };
        assert_eq!(
            cli(&["--backend", "127.0.0.1:1"]).unwrap(),
            DirectTo::Http("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(
            cli(&["--direct", "grpc", "--backend-grpc", "127.0.0.1:2"]).unwrap(),
            DirectTo::Grpc("127.0.0.1:2".parse().unwrap())
        );
        assert!(cli(&["--direct", "grpc"]).is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(humantime_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(humantime_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(humantime_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(humantime_duration("x").is_err());
    }

    #[test]
    fn labelled_addresses_parse() {
        assert_eq!(
            label_addr("on=127.0.0.1:8000"),
            Ok(("on".to_owned(), "127.0.0.1:8000".parse().unwrap()))
        );
        assert!(label_addr("127.0.0.1:8000").is_err());
        assert!(label_addr("on=here").is_err());
    }
}
