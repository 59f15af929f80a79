//! The `history` scenarios (issue 19, the disk engine): publications into channels with
//! history through tether's server API, and what a node serves of them afterwards.
//!
//! - [`publish`]: N publishers, each awaiting its ack before the next, into random (or
//!   round-robin) channels of a namespace with history, with incompressible payloads;
//!   acknowledged publications/s and ack latency, and optionally every acknowledged
//!   (channel, offset, epoch) written to a record file.
//! - [`verify`]: reads the history of every channel of a record and checks that each
//!   acknowledged publication is still served (or that its channel's epoch changed, which
//!   tells clients that continuity is lost).
//! - [`ready`]: how long after a given instant a (re)starting node answers `/ready` with 200
//!   and serves a channel's history.
//!
//! Every call goes over the keep-alive HTTP client of [`crate::publish`], one connection per
//! task, with [`REQUEST_TIMEOUT`] per call; every loop is bounded in time or count.

use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::procfs;
use crate::publish::{self, PublishError, REQUEST_TIMEOUT};

/// How each publisher picks the channel of its next publication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelOrder {
    /// Uniformly at random among the channels.
    Random,
    /// Publication n goes to channel n mod channels (over all publishers), so a run of
    /// k * channels publications leaves exactly k in every channel.
    RoundRobin,
}

/// What [`publish`] is asked to do.
#[derive(Clone, Debug)]
pub struct PublishParams {
    /// The node's HTTP API.
    pub api: SocketAddr,
    /// Its server API key.
    pub api_key: String,
    /// Concurrent publishers, each with its own connection and one publication in flight.
    pub publishers: usize,
    /// Channels `<namespace>:0` .. `<namespace>:<channels - 1>`.
    pub channels: u32,
    /// The namespace of the channels (it must have history for offsets to come back).
    pub namespace: String,
    /// Bytes of each publication's `data` as stored (the JSON text, at least 8).
    pub size: usize,
    /// Publishing stops when this has passed...
    pub duration: Duration,
    /// ...or when this many publications were sent, whichever comes first.
    pub max_count: u64,
    /// How channels are picked.
    pub order: ChannelOrder,
    /// Where to write every acknowledged (channel, offset, epoch), one per line.
    pub record: Option<PathBuf>,
}

/// What [`publish`] measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublishReport {
    /// Concurrent publishers.
    pub publishers: usize,
    /// Channels published into.
    pub channels: u32,
    /// Bytes of `data` per publication.
    pub size: usize,
    /// Publications the node acknowledged.
    pub acked: u64,
    /// Of those, acknowledged without an offset and epoch (the channel has no history).
    pub acked_without_position: u64,
    /// Publications that failed (error reply, HTTP error, socket error, timeout).
    pub failed: u64,
    /// The first distinct failure reasons.
    pub errors: Vec<String>,
    /// Seconds from the first publication to the last answer.
    pub elapsed_s: f64,
    /// Acknowledged publications per second.
    pub acked_per_s: f64,
    /// Publish-to-ack latency of acknowledged publications, µs.
    pub p50_us: u64,
    /// p99, µs.
    pub p99_us: u64,
    /// Largest, µs.
    pub max_us: u64,
    /// CPU of this process (the publishers) over the run, % of one core.
    pub client_cpu_pct: f64,
    /// Where the record went, if asked.
    pub record: Option<String>,
}

/// What [`verify`] is asked to do.
#[derive(Clone, Debug)]
pub struct VerifyParams {
    /// The node's HTTP API.
    pub api: SocketAddr,
    /// Its server API key.
    pub api_key: String,
    /// A record written by [`publish`].
    pub record: PathBuf,
    /// The namespace's `history_size`: of a channel's publications only the newest this many
    /// must be kept (older ones are trimmed by design).
    pub history_size: u64,
    /// History calls in flight.
    pub concurrency: usize,
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Channels in the record.
    pub channels: u64,
    /// Acknowledged publications in the record.
    pub recorded: u64,
    /// Served with the recorded epoch and offset.
    pub kept: u64,
    /// Older than the newest `history_size` of its channel at the served top offset: trimmed
    /// by design, not checked.
    pub trimmed: u64,
    /// The channel's epoch is not the recorded one: the node said continuity is lost, which
    /// a recovering client is told (`recovered: false`).
    pub epoch_changed: u64,
    /// Same epoch, within the window, and not served (or the top offset went back below it).
    pub lost: u64,
    /// The first lost publications, as `channel offset epoch (served top, epoch)`.
    pub lost_examples: Vec<String>,
    /// Channels whose history call failed (their publications are not counted above).
    pub failed_channels: u64,
    /// The first distinct failure reasons.
    pub errors: Vec<String>,
    /// Seconds the history calls took.
    pub elapsed_s: f64,
}

/// What [`ready`] is asked to do.
#[derive(Clone, Debug)]
pub struct ReadyParams {
    /// The node's HTTP API.
    pub api: SocketAddr,
    /// Its server API key.
    pub api_key: String,
    /// The channel whose history must be served.
    pub channel: String,
    /// At least this many publications must come back from it.
    pub min_publications: usize,
    /// The instant to measure from, ns since the Unix epoch (typically just before the
    /// node was spawned); now if none.
    pub since_unix_ns: Option<u128>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Wait between attempts.
    pub poll: Duration,
}

/// What [`ready`] measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReadyReport {
    /// From `since` to the first `/ready` answered 200, ms.
    pub ready_ms: f64,
    /// From `since` to the first history answer with enough publications (after ready), ms.
    pub serving_ms: f64,
    /// Publications that answer carried.
    pub publications: usize,
    /// Attempts (connects, `/ready` and history calls) that failed or were not yet enough.
    pub attempts: u64,
}

/// One keep-alive connection to a node's HTTP API, dialled again after any failure.
struct Conn {
    api: SocketAddr,
    host: String,
    headers: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(api: SocketAddr, api_key: &str) -> Self {
        Self {
            api,
            host: api.to_string(),
            headers: format!("X-API-Key: {api_key}\r\n"),
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// One request under [`REQUEST_TIMEOUT`]: the status and the body.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, Vec<u8>), PublishError> {
        let call = async {
            if self.stream.is_none() {
                let s = TcpStream::connect(self.api).await?;
                s.set_nodelay(true)?;
                self.stream = Some(s);
            }
            let Some(s) = self.stream.as_mut() else {
                return Err(PublishError::Response("no connection".to_owned()));
            };
            publish::http_call(
                s,
                &mut self.buf,
                &self.host,
                method,
                path,
                &self.headers,
                body,
            )
            .await
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Ok(Ok((code, body, close))) => {
                if close {
                    self.stream = None;
                }
                Ok((code, body))
            }
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(PublishError::Timeout)
            }
        }
    }

    /// A server API call: the `result` of a 200 answer without `error`.
    async fn api<T: serde::de::DeserializeOwned>(
        &mut self,
        method: &str,
        body: &str,
    ) -> Result<T, PublishError> {
        let (code, resp) = self.call("POST", &format!("/api/{method}"), body).await?;
        if code != 200 {
            return Err(PublishError::Refused(format!("http {code}")));
        }
        let answer: ApiAnswer<T> = serde_json::from_slice(&resp)
            .map_err(|e| PublishError::Response(format!("{method} answer: {e}")))?;
        match (answer.result, answer.error) {
            (_, Some(error)) => Err(PublishError::Refused(format!(
                "error {} {}",
                error.code, error.message
            ))),
            (Some(result), None) => Ok(result),
            (None, None) => Err(PublishError::Response(format!("{method}: no result"))),
        }
    }
}

#[derive(Deserialize)]
struct ApiAnswer<T> {
    result: Option<T>,
    error: Option<ApiErrorAnswer>,
}

#[derive(Deserialize)]
struct ApiErrorAnswer {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct PublishAnswer {
    offset: Option<u64>,
    epoch: Option<String>,
}

#[derive(Deserialize)]
struct HistoryAnswer {
    #[serde(default)]
    publications: Vec<HistoryPublication>,
    #[serde(default)]
    epoch: String,
    #[serde(default)]
    offset: u64,
}

#[derive(Deserialize)]
struct HistoryPublication {
    offset: u64,
}

/// One channel of a record: its acknowledged (offset, epoch) pairs.
struct RecordedChannel {
    name: String,
    acked: Vec<(u64, String)>,
}

/// One acknowledged publication.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Acked {
    channel: u32,
    offset: u64,
    epoch: String,
}

/// One publisher's tallies.
struct Tally {
    acked: u64,
    without_position: u64,
    failed: u64,
    errors: Vec<String>,
    latency_us: Histogram<u64>,
    record: Vec<Acked>,
}

/// Runs the publishers until `duration` has passed or `max_count` publications were sent.
pub async fn publish(p: &PublishParams) -> anyhow::Result<PublishReport> {
    anyhow::ensure!(p.publishers > 0, "--publishers must be at least 1");
    anyhow::ensure!(p.channels > 0, "--channels must be at least 1");
    anyhow::ensure!(p.size >= EMPTY_DATA.len(), "--size must be at least 8");
    let next = Arc::new(AtomicU64::new(0));
    let cpu_before = procfs::cpu_ticks(std::process::id()).ok();
    let start = Instant::now();
    let deadline = start + p.duration;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..p.publishers {
        let p = p.clone();
        let next = next.clone();
        let rng = SplitMix64(seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        tasks.spawn(publisher(p, next, deadline, rng));
    }
    let mut report = PublishReport {
        publishers: p.publishers,
        channels: p.channels,
        size: p.size,
        ..PublishReport::default()
    };
    let mut latency = histogram();
    let mut record = Vec::new();
    while let Some(tally) = tasks.join_next().await {
        let tally = tally?;
        report.acked += tally.acked;
        report.acked_without_position += tally.without_position;
        report.failed += tally.failed;
        for e in tally.errors {
            if report.errors.len() < MAX_ERRORS && !report.errors.contains(&e) {
                report.errors.push(e);
            }
        }
        latency.add(&tally.latency_us)?;
        record.extend(tally.record);
    }
    let elapsed = start.elapsed();
    report.elapsed_s = elapsed.as_secs_f64();
    report.acked_per_s = report.acked as f64 / report.elapsed_s.max(1e-9);
    report.p50_us = latency.value_at_quantile(0.50);
    report.p99_us = latency.value_at_quantile(0.99);
    report.max_us = latency.max();
    if let (Some(before), Ok(after)) = (cpu_before, procfs::cpu_ticks(std::process::id())) {
        let ticks_per_s = procfs::clock_ticks_per_sec() as f64;
        report.client_cpu_pct =
            100.0 * after.saturating_sub(before) as f64 / ticks_per_s / report.elapsed_s;
    }
    if let Some(path) = &p.record {
        write_record(path, &p.namespace, &record)?;
        report.record = Some(path.display().to_string());
    }
    Ok(report)
}

async fn publisher(
    p: PublishParams,
    next: Arc<AtomicU64>,
    deadline: Instant,
    mut rng: SplitMix64,
) -> Tally {
    let mut conn = Conn::new(p.api, &p.api_key);
    let mut tally = Tally {
        acked: 0,
        without_position: 0,
        failed: 0,
        errors: Vec::new(),
        latency_us: histogram(),
        record: Vec::new(),
    };
    let mut body = String::with_capacity(p.size + 64);
    while Instant::now() < deadline {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= p.max_count {
            break;
        }
        let channel = match p.order {
            ChannelOrder::Random => (rng.next() % u64::from(p.channels)) as u32,
            ChannelOrder::RoundRobin => (n % u64::from(p.channels)) as u32,
        };
        publish_body(&mut body, &p.namespace, channel, p.size, &mut rng);
        let sent = Instant::now();
        match conn.api::<PublishAnswer>("publish", &body).await {
            Ok(answer) => {
                tally.acked += 1;
                let _ = tally
                    .latency_us
                    .record(sent.elapsed().as_micros().max(1) as u64);
                match (answer.offset, answer.epoch) {
                    (Some(offset), Some(epoch)) if !epoch.is_empty() => {
                        if p.record.is_some() {
                            tally.record.push(Acked {
                                channel,
                                offset,
                                epoch,
                            });
                        }
                    }
                    _ => tally.without_position += 1,
                }
            }
            Err(e) => {
                tally.failed += 1;
                let e = e.to_string();
                if tally.errors.len() < MAX_ERRORS && !tally.errors.contains(&e) {
                    tally.errors.push(e);
                }
                // A node that is gone refuses at once: do not spin on it.
                tokio::time::sleep(FAILURE_PAUSE).await;
            }
        }
    }
    tally
}

/// `{"channel":"<namespace>:<channel>","data":{"p":"<random>"}}` with `data` exactly `size`
/// bytes: random characters of the base64 alphabet (6 bits of entropy per byte, so the
/// payload does not compress to nothing).
fn publish_body(
    body: &mut String,
    namespace: &str,
    channel: u32,
    size: usize,
    rng: &mut SplitMix64,
) {
    use std::fmt::Write as _;
    body.clear();
    let _ = write!(
        body,
        "{{\"channel\":\"{namespace}:{channel}\",\"data\":{{\"p\":\""
    );
    let mut left = size.saturating_sub(EMPTY_DATA.len());
    while left > 0 {
        let mut word = rng.next();
        for _ in 0..left.min(10) {
            body.push(char::from(BASE64_ALPHABET[(word & 63) as usize]));
            word >>= 6;
            left -= 1;
        }
    }
    body.push_str("\"}}");
}

fn write_record(path: &Path, namespace: &str, record: &[Acked]) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut out = std::io::BufWriter::new(file);
    for a in record {
        writeln!(out, "{namespace}:{} {} {}", a.channel, a.offset, a.epoch)?;
    }
    out.flush()?;
    Ok(())
}

/// Reads every channel of the record back and classifies each acknowledged publication.
pub async fn verify(p: &VerifyParams) -> anyhow::Result<VerifyReport> {
    anyhow::ensure!(p.history_size > 0, "--history-size must be at least 1");
    let by_channel = read_record(&p.record)?;
    let mut report = VerifyReport {
        channels: by_channel.len() as u64,
        recorded: by_channel.values().map(|v| v.len() as u64).sum(),
        ..VerifyReport::default()
    };
    let channels: Arc<Vec<RecordedChannel>> = Arc::new(
        by_channel
            .into_iter()
            .map(|(name, acked)| RecordedChannel { name, acked })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..p.concurrency.max(1) {
        let (channels, next, p) = (channels.clone(), next.clone(), p.clone());
        tasks.spawn(async move {
            let mut conn = Conn::new(p.api, &p.api_key);
            let mut part = VerifyReport::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(RecordedChannel {
                    name: channel,
                    acked,
                }) = channels.get(i)
                else {
                    break;
                };
                let body = serde_json::json!({
                    "channel": channel,
                    "limit": p.history_size,
                    "reverse": true,
                })
                .to_string();
                match conn.api::<HistoryAnswer>("history", &body).await {
                    Ok(served) => classify(&mut part, channel, acked, &served, p.history_size),
                    Err(e) => {
                        part.failed_channels += 1;
                        let e = e.to_string();
                        if part.errors.len() < MAX_ERRORS && !part.errors.contains(&e) {
                            part.errors.push(e);
                        }
                    }
                }
            }
            part
        });
    }
    while let Some(part) = tasks.join_next().await {
        let part = part?;
        report.kept += part.kept;
        report.trimmed += part.trimmed;
        report.epoch_changed += part.epoch_changed;
        report.lost += part.lost;
        report.failed_channels += part.failed_channels;
        for e in part.lost_examples {
            if report.lost_examples.len() < MAX_ERRORS {
                report.lost_examples.push(e);
            }
        }
        for e in part.errors {
            if report.errors.len() < MAX_ERRORS && !report.errors.contains(&e) {
                report.errors.push(e);
            }
        }
    }
    report.elapsed_s = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Classifies one channel's acknowledged publications against what the node serves.
fn classify(
    report: &mut VerifyReport,
    channel: &str,
    acked: &[(u64, String)],
    served: &HistoryAnswer,
    history_size: u64,
) {
    let offsets: std::collections::HashSet<u64> =
        served.publications.iter().map(|p| p.offset).collect();
    for (offset, epoch) in acked {
        if *epoch != served.epoch {
            report.epoch_changed += 1;
        } else if *offset <= served.offset && offset + history_size <= served.offset {
            report.trimmed += 1;
        } else if *offset <= served.offset && offsets.contains(offset) {
            report.kept += 1;
        } else {
            report.lost += 1;
            if report.lost_examples.len() < MAX_ERRORS {
                report.lost_examples.push(format!(
                    "{channel} {offset} {epoch} (served top {}, {} publications)",
                    served.offset,
                    served.publications.len()
                ));
            }
        }
    }
}

fn read_record(path: &Path) -> anyhow::Result<HashMap<String, Vec<(u64, String)>>> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let mut by_channel: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        let mut parts = line.split_whitespace();
        let (Some(channel), Some(offset), Some(epoch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!(
                "{}:{}: expected `channel offset epoch`",
                path.display(),
                n + 1
            );
        };
        by_channel
            .entry(channel.to_owned())
            .or_default()
            .push((offset.parse()?, epoch.to_owned()));
    }
    Ok(by_channel)
}

/// Polls `/ready`, then the channel's history, until both answer or the timeout passes.
pub async fn ready(p: &ReadyParams) -> anyhow::Result<ReadyReport> {
    let since = match p.since_unix_ns {
        Some(ns) => {
            // Measured on the wall clock, as the instant given is.
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
            let ago = Duration::from_nanos(now.saturating_sub(ns) as u64);
            Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
        }
        None => Instant::now(),
    };
    let deadline = Instant::now() + p.timeout;
    let mut conn = Conn::new(p.api, &p.api_key);
    let mut report = ReadyReport::default();
    let mut ready_at = None;
    let body = serde_json::json!({ "channel": p.channel, "limit": -1 }).to_string();
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not serving after {:?} ({} attempts; ready: {})",
            p.timeout,
            report.attempts,
            ready_at.is_some()
        );
        if ready_at.is_none() {
            if let Ok((200, _)) = conn.call("GET", "/ready", "").await {
                ready_at = Some(since.elapsed());
                continue;
            }
        } else if let Ok(served) = conn.api::<HistoryAnswer>("history", &body).await
            && served.publications.len() >= p.min_publications
        {
            report.serving_ms = ms(since.elapsed());
            report.publications = served.publications.len();
            break;
        }
        report.attempts += 1;
        tokio::time::sleep(p.poll).await;
    }
    report.ready_ms = ready_at.map_or(0.0, ms);
    Ok(report)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn histogram() -> Histogram<u64> {
    // Bounds that are valid by construction: 1 µs to an hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// A small, fast generator for payload bytes and channel picks (not for anything secret).
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `data` with an empty payload string: what `size` must at least cover.
const EMPTY_DATA: &str = "{\"p\":\"\"}";

/// The characters of a payload.
const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Distinct failure reasons (and lost examples) kept for the report.
const MAX_ERRORS: usize = 5;

/// How long a publisher waits after a failure before its next publication.
const FAILURE_PAUSE: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_bodies_carry_data_of_exactly_the_size() {
        let mut rng = SplitMix64(7);
        let mut body = String::new();
        for size in [8, 9, 100, 1000] {
            publish_body(&mut body, "h", 42, size, &mut rng);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["channel"], "h:42");
            assert_eq!(serde_json::to_string(&v["data"]).unwrap().len(), size);
        }
    }

    #[test]
    fn acknowledged_publications_are_classified() {
        let served = HistoryAnswer {
            publications: [8, 9, 10]
                .map(|offset| HistoryPublication { offset })
                .into(),
            epoch: "e1".to_owned(),
            offset: 10,
        };
        let acked: Vec<(u64, String)> = [
            (1, "e1"),  // older than the newest 3: trimmed
            (8, "e1"),  // kept
            (10, "e1"), // kept
            (9, "e0"),  // another epoch
            (11, "e1"), // above the served top: lost
        ]
        .map(|(o, e)| (o, e.to_owned()))
        .into();
        let mut report = VerifyReport::default();
        classify(&mut report, "h:1", &acked, &served, 3);
        assert_eq!(
            (
                report.kept,
                report.trimmed,
                report.epoch_changed,
                report.lost
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(report.lost_examples.len(), 1);

        let gap = HistoryAnswer {
            publications: [8, 10].map(|offset| HistoryPublication { offset }).into(),
            epoch: "e1".to_owned(),
            offset: 10,
        };
        let mut report = VerifyReport::default();
        classify(&mut report, "h:1", &[(9, "e1".to_owned())], &gap, 3);
        assert_eq!(report.lost, 1);
    }

    #[test]
    fn records_round_trip() {
        let dir = std::env::temp_dir().join(format!("history-record-{}", std::process::id()));
        let acked = vec![
            Acked {
                channel: 3,
                offset: 1,
                epoch: "ab".to_owned(),
            },
            Acked {
                channel: 3,
                offset: 2,
                epoch: "ab".to_owned(),
            },
        ];
        write_record(&dir, "h", &acked).unwrap();
        let read = read_record(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            read["h:3"],
            vec![(1, "ab".to_owned()), (2, "ab".to_owned())]
        );
    }
}
