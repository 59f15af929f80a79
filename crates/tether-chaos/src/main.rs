//! `tether-chaos`: the chaos suite. Runs tether nodes and Redis in network namespaces it
//! makes, with SDK clients (`tether-client`) that resubscribe with their positions and a
//! publisher whose acknowledged publications an auditor checks against what every client
//! saw, while a fault is injected: Redis killed, frozen, partitioned from one node, failed
//! over under Sentinel; a node killed or partitioned; delay and loss-like stalls between
//! clients and nodes; a reconnect storm after a node restart. `scripts/chaos.sh` builds and
//! runs it; `docs/reliability.md` explains it and holds the results.
//!
//! ```text
//! tether-chaos run [--scenario redis-kill,...] [--runs 3] [--quick] --tether PATH [--out results.jsonl]
//! tether-chaos table results.jsonl
//! ```
//!
//! # Layout
//!
//! - `scenario`: the scenarios, a run's deployment and timeline, and its audit.
//! - `audit`: the auditor, pure: acknowledged publications against one client's events.
//! - `worker`: the client processes (`tether-chaos clients …`, started by `scenario`).
//! - `events`: the JSON lines a client process prints.
//! - `publisher`: publishes through the HTTP API at a fixed rate, recording acknowledgements.
//! - `netns`: the namespaces and veth links; partitions are links set down.
//! - `procs`: starting, signalling and killing processes; node configs.
//! - `proxy`: the userspace delay and stall proxy (`tc netem` stands-in).
//! - `report`: a run's result, pass/fail, and the markdown table.

mod audit;
mod events;
mod netns;
mod procs;
mod proxy;
mod publisher;
mod report;
mod scenario;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::procs::RunDir;
use crate::report::RunResult;
use crate::scenario::{Kind, Settings};

#[derive(Debug, Parser)]
#[command(name = "tether-chaos", about = "tether's chaos suite")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run scenarios and print the table; exit 1 when a run fails.
    Run(RunArgs),
    /// Print the table of a results file (JSON lines).
    Table {
        /// The results file.
        input: PathBuf,
    },
    /// A client process (started by `run`).
    #[command(hide = true)]
    Clients(worker::WorkerArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Scenarios, comma-separated (default: all; with --quick, the quick set).
    #[arg(long, value_delimiter = ',', value_enum)]
    scenario: Vec<Kind>,
    /// Runs of each scenario.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// The reduced form: short faults, few clients, a small storm.
    #[arg(long)]
    quick: bool,
    /// The `tether` binary.
    #[arg(long, env = "TETHER_BIN")]
    tether: PathBuf,
    /// The repository's scripts directory.
    #[arg(long, default_value = "scripts")]
    scripts: PathBuf,
    /// Appends one JSON line per run here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Subscribers (default 200; 40 with --quick).
    #[arg(long)]
    clients: Option<usize>,
    /// Clients in the reconnect storm (default 15,000; 600 with --quick).
    #[arg(long)]
    storm_clients: Option<usize>,
    /// Clients per storm process.
    #[arg(long, default_value_t = 5000)]
    storm_per_process: usize,
    /// `client.connection_rate_limit` of the storm's node.
    #[arg(long, default_value_t = 10_000)]
    storm_rate_limit: u32,
    /// Publishes per second.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Base port of the Sentinel deployment (data nodes there and +1, sentinel +10).
    #[arg(long, default_value_t = 7401)]
    sentinel_port: u16,
    /// Commit to record in the results.
    #[arg(long, env = "CHAOS_COMMIT", default_value = "")]
    commit: String,
    /// Keep the run directory (configs, logs) even when every run passed.
    #[arg(long)]
    keep: bool,
    /// Self-check of the suite: every client hides every n-th publication it gets from the
    /// auditor, so every run must fail with losses (and results are marked as such).
    #[arg(long, default_value_t = 0)]
    self_check_drop: u64,
}

const QUICK: [Kind; 4] = [
    Kind::RedisFreeze,
    Kind::NodeKill,
    Kind::RedisPartition,
    Kind::ReconnectStorm,
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tether-chaos: runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Clients(args) => worker::run(args, Duration::from_secs(600))
                .await
                .map(|()| true),
            Command::Table { input } => table(&input).map(|()| true),
            Command::Run(args) => run(args).await,
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("tether-chaos: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn table(input: &PathBuf) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(input).with_context(|| format!("read {input:?}"))?;
    let results: Vec<RunResult> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("parse results")?;
    print!("{}", report::table(&results));
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(
        netns::available(),
        "cannot make network namespaces (needs root and iproute2)"
    );
    let dir = std::env::temp_dir().join(format!("tether-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kinds = if !args.scenario.is_empty() {
        args.scenario.clone()
    } else if args.quick {
        QUICK.to_vec()
    } else {
        Kind::ALL.to_vec()
    };
    let settings = Settings {
        tether: std::fs::canonicalize(&args.tether)
            .with_context(|| format!("tether binary {:?}", args.tether))?,
        this: std::env::current_exe().context("own path")?,
        scripts: std::fs::canonicalize(&args.scripts)
            .with_context(|| format!("scripts directory {:?}", args.scripts))?,
        dir: RunDir(dir.clone()),
        clients: args.clients.unwrap_or(if args.quick { 40 } else { 200 }),
        channels: if args.quick { 4 } else { 10 },
        rate: args.rate,
        fault: Duration::from_secs(if args.quick { 2 } else { 5 }),
        settle: Duration::from_secs(if args.quick { 4 } else { 8 }),
        storm_clients: args
            .storm_clients
            .unwrap_or(if args.quick { 600 } else { 15_000 }),
        storm_per_process: args.storm_per_process,
        storm_rate_limit: args.storm_rate_limit,
        sentinel_port: args.sentinel_port,
        commit: args.commit.clone(),
        drop_every: args.self_check_drop,
    };
    let mut results = Vec::new();
    let mut all_passed = true;
    for kind in kinds {
        for run in 1..=args.runs {
            eprintln!("tether-chaos: {} run {run}/{} …", kind.name(), args.runs);
            let result = match scenario::run_once(kind, &settings, run).await {
                Ok(result) => result,
                Err(error) => {
                    eprintln!("tether-chaos: {} run {run} FAILED: {error:#}", kind.name());
                    RunResult {
                        scenario: kind.name().to_owned(),
                        run,
                        commit: settings.commit.clone(),
                        notes: vec![format!("error: {error:#}")],
                        ..RunResult::default()
                    }
                }
            };
            all_passed &= result.passed;
            let line = serde_json::to_string(&result)?;
            eprintln!("{line}");
            if let Some(out) = &args.out {
                use std::io::Write as _;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(out)
                    .with_context(|| format!("open {out:?}"))?;
                writeln!(file, "{line}")?;
            }
            results.push(result);
        }
    }
    print!("{}", report::table(&results));
    if all_passed && !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("tether-chaos: logs in {}", dir.display());
    }
    Ok(all_passed)
}
