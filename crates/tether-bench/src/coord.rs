//! The coordinator: spreads clients over worker processes and source addresses, runs the
//! `idle`, `fanout` and `churn` scenarios, observes the server through `/proc`, and turns
//! worker reports into one result per scenario.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::procfs;
use crate::publish::Publisher;
use crate::target::{Creds, Target};
use crate::worker::{Report, Spec};

/// Where the server is and how to spread the clients.
#[derive(Clone, Debug)]
pub struct Common {
    /// Server kind.
    pub target: Target,
    /// WebSocket addresses: one server, or several nodes of a cluster that clients are
    /// spread over round-robin.
    pub addrs: Vec<SocketAddr>,
    /// API address (HTTP, or the NATS client port).
    pub api: SocketAddr,
    /// Server process id, for `/proc` readings.
    pub pid: Option<u32>,
    /// Credentials.
    pub creds: Creds,
    /// Most connections one worker process holds.
    pub per_worker: u64,
    /// Connects in flight per worker.
    pub connect_concurrency: usize,
}

/// A running worker process.
#[derive(Debug)]
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    fn spawn(spec: &Spec) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("current exe")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("worker")
            .arg("--spec")
            .arg(serde_json::to_string(spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    async fn report(&mut self) -> anyhow::Result<Report> {
        let line = self
            .lines
            .next_line()
            .await?
            .context("worker exited without a report")?;
        Ok(serde_json::from_str(&line)?)
    }

    async fn send(&mut self, cmd: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Source address `127.0.0.<2 + k>` for worker or slot `k` (wraps inside 127.0.0.0/8).
fn src_ip(k: u64) -> Ipv4Addr {
    let n = 2 + k;
    Ipv4Addr::new(
        127,
        ((n >> 16) & 0xff) as u8,
        ((n >> 8) & 0xff) as u8,
        (n & 0xff) as u8,
    )
}

async fn spawn_holders(
    c: &Common,
    n: u64,
    channel: &str,
    per_client: bool,
) -> anyhow::Result<Vec<Worker>> {
    let per = c.per_worker.max(1);
    let count = n.div_ceil(per);
    let mut workers = Vec::new();
    for w in 0..count {
        let first = w * per;
        let spec = Spec {
            target: c.target,
            addrs: c.addrs.clone(),
            creds: c.creds.clone(),
            channel: channel.to_owned(),
            per_client_channel: per_client,
            first,
            count: per.min(n - first),
            src_ips: vec![src_ip(w)],
            connect_concurrency: c.connect_concurrency,
            churn_ms: None,
            proxy_connect: false,
        };
        workers.push(Worker::spawn(&spec)?);
    }
    Ok(workers)
}

async fn collect(workers: &mut [Worker], cmd: Option<&str>) -> anyhow::Result<Vec<Report>> {
    if let Some(cmd) = cmd {
        for w in workers.iter_mut() {
            w.send(cmd).await?;
        }
    }
    let mut out = Vec::new();
    for w in workers.iter_mut() {
        out.push(w.report().await?);
    }
    Ok(out)
}

fn sum(reports: &[Report], f: impl Fn(&Report) -> u64) -> u64 {
    reports.iter().map(f).sum()
}

fn errors(reports: &[Report]) -> Vec<String> {
    let mut e: Vec<String> = reports.iter().flat_map(|r| r.errors.clone()).collect();
    e.sort();
    e.dedup();
    e.truncate(5);
    e
}

fn merged(reports: &[Report]) -> Histogram<u64> {
    // Valid bounds by construction.
    let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
    for r in reports {
        for &(v, n) in &r.hist {
            let _ = h.record_n(v, n);
        }
    }
    h
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn rss(pid: Option<u32>) -> Option<u64> {
    pid.and_then(|p| procfs::rss_bytes(p).ok())
}

fn cpu(pid: Option<u32>) -> Option<u64> {
    pid.and_then(|p| procfs::cpu_ticks(p).ok())
}

/// Result of the `idle` scenario.
#[derive(Debug, Serialize)]
pub struct IdleResult {
    /// Connections asked for.
    pub n: u64,
    /// Connections subscribed.
    pub connected: u64,
    /// Connections that failed to connect or subscribe.
    pub failed: u64,
    /// First failure reasons.
    pub errors: Vec<String>,
    /// Seconds to connect and subscribe all.
    pub connect_s: f64,
    /// Server RSS before the clients came, bytes.
    pub rss_before: Option<u64>,
    /// Server RSS at the end of the idle window, bytes.
    pub rss_after: Option<u64>,
    /// (rss_after - rss_before) / connected.
    pub bytes_per_conn: Option<f64>,
    /// Kernel TCP memory growth per connection (both ends of each loopback connection).
    pub sock_bytes_per_conn: f64,
    /// TCP sockets in use after connecting.
    pub tcp_inuse: u64,
    /// Length of the idle window, seconds.
    pub window_s: f64,
    /// Server CPU during the window, % of one core.
    pub cpu_pct: Option<f64>,
    /// Application pings the clients answered during the window.
    pub pings: u64,
    /// Connections that ended during the window.
    pub closed: u64,
    /// Client (all workers) RSS per connection, bytes.
    pub client_bytes_per_conn: Option<f64>,
}

/// N clients connect, subscribe to one channel each, answer pings and stay idle for `window`.
pub async fn idle(c: &Common, n: u64, window: Duration) -> anyhow::Result<IdleResult> {
    let rss_before = rss(c.pid);
    let (sock_before, _) = procfs::sockstat().unwrap_or((0, 0));
    let t0 = Instant::now();
    let mut workers = spawn_holders(c, n, "idle", true).await?;
    let ready = collect(&mut workers, None).await?;
    let connect_s = t0.elapsed().as_secs_f64();
    let connected = sum(&ready, |r| r.ok);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sock_after, tcp_inuse) = procfs::sockstat().unwrap_or((0, 0));
    let ticks0 = cpu(c.pid);
    let w0 = Instant::now();
    tokio::time::sleep(window).await;
    let ticks1 = cpu(c.pid);
    let window_s = w0.elapsed().as_secs_f64();
    let rss_after = rss(c.pid);
    let end = collect(&mut workers, Some("stats")).await?;
    let client_rss: Option<u64> = workers.iter().map(|w| rss(w.pid())).sum();
    for w in &mut workers {
        let _ = w.send("quit").await;
    }
    let per = |bytes: f64| (connected > 0).then(|| bytes / connected as f64);
    let hz = procfs::clock_ticks_per_sec() as f64;
    Ok(IdleResult {
        n,
        connected,
        failed: sum(&ready, |r| r.failed),
        errors: errors(&ready),
        connect_s,
        rss_before,
        rss_after,
        bytes_per_conn: rss_before
            .zip(rss_after)
            .and_then(|(b, a)| per(a as f64 - b as f64)),
        sock_bytes_per_conn: per(sock_after as f64 - sock_before as f64).unwrap_or(0.0),
        tcp_inuse,
        window_s,
        cpu_pct: ticks0
            .zip(ticks1)
            .map(|(a, b)| (b - a) as f64 / hz / window_s * 100.0),
        pings: sum(&end, |r| r.pings),
        closed: sum(&end, |r| r.closed),
        client_bytes_per_conn: client_rss.and_then(|b| per(b as f64)),
    })
}

/// One publishing rate of the `fanout` scenario.
#[derive(Debug, Serialize)]
pub struct FanoutStep {
    /// Publications per second asked for.
    pub rate: f64,
    /// Publications accepted by the server.
    pub published: u64,
    /// Publications refused or failed.
    pub publish_failed: u64,
    /// Publish errors.
    pub publish_errors: Vec<String>,
    /// Publications not sent: the server answered too slowly to keep the rate.
    pub not_sent: u64,
    /// Achieved publish rate.
    pub publish_rate: f64,
    /// published x live subscribers.
    pub expected: u64,
    /// Deliveries received.
    pub received: u64,
    /// expected - received (never negative).
    pub lost: u64,
    /// Deliveries received twice on one connection.
    pub duplicates: u64,
    /// Latency percentiles, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Largest latency, ms.
    pub max_ms: f64,
    /// Deliveries per second (received / time from first publish to last receipt).
    pub deliveries_per_s: f64,
    /// Server CPU during the step, % of one core.
    pub cpu_pct: Option<f64>,
    /// Whether p99 <= the limit with no loss, no duplicates, and >= 90 % of the asked rate
    /// actually published.
    pub ok: bool,
}

/// Result of the `fanout` scenario.
#[derive(Debug, Serialize)]
pub struct FanoutResult {
    /// Subscribers asked for.
    pub n: u64,
    /// Subscribers connected.
    pub subscribed: u64,
    /// Subscribers that failed.
    pub failed: u64,
    /// First failure reasons.
    pub errors: Vec<String>,
    /// Publication size, bytes.
    pub size: usize,
    /// The p99 limit a step must meet, ms.
    pub max_p99_ms: f64,
    /// Every rate tried, in order.
    pub steps: Vec<FanoutStep>,
    /// Index into `steps` of the highest rate that met the limit.
    pub best: Option<usize>,
}

/// Parameters of the `fanout` scenario.
#[derive(Clone, Debug)]
pub struct FanoutParams {
    /// Subscribers.
    pub n: u64,
    /// Rates to try in order; stops after the first that fails.
    pub rates: Vec<f64>,
    /// Seconds per rate.
    pub duration: Duration,
    /// Publication size.
    pub size: usize,
    /// p99 limit, ms.
    pub max_p99_ms: f64,
    /// Publishing connections.
    pub publishers: usize,
    /// Stop at the first step that misses the limit.
    pub stop_on_fail: bool,
}

/// Subscribers of one channel held by worker processes, measured while publications go to
/// the channel: the `fanout` scenario's steps, and the `proxy-fault` scenario's
/// publications while other clients call a failing backend.
#[derive(Debug)]
pub struct Subscribers {
    workers: Vec<Worker>,
    /// Subscribed when they were spawned.
    pub subscribed: u64,
    /// Failed to connect or subscribe.
    pub failed: u64,
    /// First failure reasons.
    pub errors: Vec<String>,
    /// Steps measured so far: each step's sequence numbers start at a fresh base.
    steps: u64,
}

impl Subscribers {
    /// `n` token-connected subscribers of `channel`, waiting until each connected and
    /// subscribed or failed.
    pub async fn spawn(c: &Common, n: u64, channel: &str) -> anyhow::Result<Self> {
        let mut workers = spawn_holders(c, n, channel, false).await?;
        let ready = collect(&mut workers, None).await?;
        Ok(Self {
            workers,
            subscribed: sum(&ready, |r| r.ok),
            failed: sum(&ready, |r| r.failed),
            errors: errors(&ready),
            steps: 0,
        })
    }

    /// Publishes through `publisher` at `rate` for `duration` over `conns` connections and
    /// measures delivery; the step is sustained when p99 <= `max_p99_ms` with nothing lost.
    /// CPU is tether's (`pid`).
    pub async fn step(
        &mut self,
        publisher: &Publisher,
        rate: f64,
        duration: Duration,
        conns: usize,
        max_p99_ms: f64,
        pid: Option<u32>,
    ) -> anyhow::Result<FanoutStep> {
        self.steps += 1;
        let base = self.steps * 1_000_000_000;
        let subscribed = self.subscribed;
        let workers = &mut self.workers;
        let closed_before = sum(
            &collect(workers, Some(&format!("reset {base}"))).await?,
            |r| r.closed,
        );
        let ticks0 = cpu(pid);
        let pubs = publisher.run(rate, duration, base, conns).await;
        // Drain: until everything arrived, or no progress for 2 s, or 15 s in all.
        let drain_start = Instant::now();
        let mut last = 0;
        let mut last_progress = Instant::now();
        let reports = loop {
            let r = collect(workers, Some("stats")).await?;
            let live = subscribed - (sum(&r, |r| r.closed) - closed_before).min(subscribed);
            let got = sum(&r, |r| r.received);
            if got >= pubs.published * live
                || last_progress.elapsed() > Duration::from_secs(2)
                || drain_start.elapsed() > Duration::from_secs(15)
            {
                break r;
            }
            if got > last {
                last = got;
                last_progress = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let ticks1 = cpu(pid);
        let cpu_s = drain_start.elapsed().as_secs_f64() + pubs.elapsed_s;
        let live = subscribed - (sum(&reports, |r| r.closed) - closed_before).min(subscribed);
        let expected = pubs.published * live;
        let received = sum(&reports, |r| r.received);
        let duplicates = sum(&reports, |r| r.duplicates);
        let h = merged(&reports);
        let last_us = reports.iter().map(|r| r.last_recv_us).max().unwrap_or(0);
        let span = (last_us.saturating_sub(pubs.first_us)) as f64 / 1e6;
        let lost = expected.saturating_sub(received) + pubs.failed * live;
        let p99_ms = ms(h.value_at_quantile(0.99));
        let publish_rate = pubs.published as f64 / pubs.elapsed_s.max(1e-9);
        // A step that could not even publish at its rate is not sustained either.
        let ok = lost == 0
            && duplicates == 0
            && received > 0
            && pubs.not_sent == 0
            && publish_rate >= 0.9 * rate
            && p99_ms <= max_p99_ms;
        let hz = procfs::clock_ticks_per_sec() as f64;
        Ok(FanoutStep {
            rate,
            published: pubs.published,
            publish_failed: pubs.failed,
            publish_errors: pubs.errors,
            not_sent: pubs.not_sent,
            publish_rate,
            expected,
            received,
            lost,
            duplicates,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms,
            max_ms: ms(h.max()),
            deliveries_per_s: if span > 0.0 {
                received as f64 / span
            } else {
                0.0
            },
            cpu_pct: ticks0
                .zip(ticks1)
                .map(|(a, b)| (b - a) as f64 / hz / cpu_s * 100.0),
            ok,
        })
    }

    /// Tells the workers to quit (they close their connections and exit).
    pub async fn quit(mut self) {
        for w in &mut self.workers {
            let _ = w.send("quit").await;
        }
    }
}

/// N subscribers on one channel; publications at each rate; latency, loss, throughput.
pub async fn fanout(c: &Common, p: &FanoutParams) -> anyhow::Result<FanoutResult> {
    let channel = "fanout";
    let mut subs = Subscribers::spawn(c, p.n, channel).await?;
    let publisher = Publisher {
        target: c.target,
        api: c.api,
        creds: c.creds.clone(),
        channel: channel.to_owned(),
        size: p.size,
    };
    let mut steps = Vec::new();
    let mut best = None;
    for &rate in &p.rates {
        let step = subs
            .step(
                &publisher,
                rate,
                p.duration,
                p.publishers,
                p.max_p99_ms,
                c.pid,
            )
            .await?;
        let ok = step.ok;
        steps.push(step);
        if ok {
            best = Some(steps.len() - 1);
        } else if p.stop_on_fail {
            break;
        }
    }
    let (subscribed, failed, errors) = (subs.subscribed, subs.failed, subs.errors.clone());
    subs.quit().await;
    Ok(FanoutResult {
        n: p.n,
        subscribed,
        failed,
        errors,
        size: p.size,
        max_p99_ms: p.max_p99_ms,
        steps,
        best,
    })
}

/// Result of the `churn` scenario.
#[derive(Debug, Serialize)]
pub struct ChurnResult {
    /// Concurrent connect loops.
    pub concurrency: u64,
    /// Cycles completed (connect, upgrade, subscribe confirmed, close).
    pub cycles: u64,
    /// Cycles that failed.
    pub errors: u64,
    /// First failure reasons.
    pub error_kinds: Vec<String>,
    /// Seconds.
    pub elapsed_s: f64,
    /// cycles / elapsed.
    pub cycles_per_s: f64,
    /// Cycle time percentiles, ms.
    pub p50_ms: f64,
    /// 99th percentile cycle time, ms.
    pub p99_ms: f64,
    /// Server CPU, % of one core.
    pub cpu_pct: Option<f64>,
    /// The client worker processes' CPU, % of one core (all of them together).
    pub clients_cpu_pct: Option<f64>,
}

/// connect -> subscribe -> disconnect cycles for `duration` with `concurrency` loops spread
/// over `workers` processes and many source addresses.
pub async fn churn(
    c: &Common,
    concurrency: u64,
    workers: u64,
    duration: Duration,
) -> anyhow::Result<ChurnResult> {
    cycles(c, concurrency, workers, duration, false).await
}

/// Churn's cycles; with `proxy_connect`, a cycle is a token-less connect answered through
/// tether's connect proxy, then close (no subscribe).
pub(crate) async fn cycles(
    c: &Common,
    concurrency: u64,
    workers: u64,
    duration: Duration,
    proxy_connect: bool,
) -> anyhow::Result<ChurnResult> {
    let workers_n = workers.max(1);
    let per = concurrency.div_ceil(workers_n);
    let mut ws = Vec::new();
    let ticks0 = cpu(c.pid);
    let t0 = Instant::now();
    for w in 0..workers_n {
        // 32 source addresses per worker so TIME_WAIT never exhausts ports.
        let ips = (0..32).map(|k| src_ip(1000 + w * 32 + k)).collect();
        let spec = Spec {
            target: c.target,
            addrs: c.addrs.clone(),
            creds: c.creds.clone(),
            channel: "churn".to_owned(),
            per_client_channel: true,
            first: w * 1_000_000_000,
            count: per,
            src_ips: ips,
            connect_concurrency: per as usize,
            churn_ms: Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)),
            proxy_connect,
        };
        ws.push(Worker::spawn(&spec)?);
    }
    let reports = collect(&mut ws, None).await?;
    let elapsed_s = t0.elapsed().as_secs_f64();
    let ticks1 = cpu(c.pid);
    let h = merged(&reports);
    let cycles = sum(&reports, |r| r.ok);
    let worker_s = reports.iter().map(|r| r.elapsed_ms).max().unwrap_or(0) as f64 / 1000.0;
    let hz = procfs::clock_ticks_per_sec() as f64;
    Ok(ChurnResult {
        concurrency: per * workers_n,
        cycles,
        errors: sum(&reports, |r| r.failed),
        error_kinds: errors(&reports),
        elapsed_s: worker_s,
        cycles_per_s: cycles as f64 / worker_s.max(1e-9),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        cpu_pct: ticks0
            .zip(ticks1)
            .map(|(a, b)| (b - a) as f64 / hz / elapsed_s * 100.0),
        clients_cpu_pct: reports
            .iter()
            .all(|r| r.cpu_ticks > 0)
            .then(|| sum(&reports, |r| r.cpu_ticks) as f64 / hz / worker_s.max(1e-9) * 100.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_stay_in_loopback_and_differ() {
        assert_eq!(src_ip(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(src_ip(254), Ipv4Addr::new(127, 0, 1, 0));
        assert!(src_ip(5000).is_loopback());
        assert_ne!(src_ip(1000), src_ip(1001));
    }

    #[test]
    fn histograms_merge_across_workers() {
        let a = Report {
            hist: vec![(1000, 99)],
            ..Report::default()
        };
        let b = Report {
            hist: vec![(500_000, 1)],
            ..Report::default()
        };
        let h = merged(&[a, b]);
        assert_eq!(h.len(), 100);
        assert!(ms(h.value_at_quantile(0.5)) < 1.1);
        assert!(ms(h.max()) > 499.0);
    }
}
