//! The `engine-fault` scenario: publishes through tether's server API at a fixed rate while
//! the engine's Redis is frozen (SIGSTOP) for a while, to several tethers side by side in the
//! same run (typically one with the Redis circuit breaker and one without, on the same
//! frozen Redis).
//!
//! Each publish is its own request on a pooled keep-alive client, sent on schedule whether
//! or not the earlier ones have answered, so calls pile up exactly as a busy backend's would.
//! Per target it reports, by when each call was sent: before the freeze, during it, during it
//! from `settle` after its start (when a breaker has had time to open), and after the thaw;
//! with latency percentiles, errors, the most calls in flight at once during the freeze, and
//! the time from the thaw to the first publish that succeeded again.
//!
//! Every loop is bounded in time; addresses are loopback only.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

/// Longest wait for one publish.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the scenario is asked to do.
#[derive(Clone, Debug)]
pub struct EngineFaultParams {
    /// The tethers: a label and the address of its HTTP API.
    pub targets: Vec<(String, SocketAddr)>,
    /// The server API key.
    pub api_key: String,
    /// Publishes per second, to each target.
    pub rate: f64,
    /// How long publishing lasts.
    pub duration: Duration,
    /// The Redis process to freeze.
    pub freeze_pid: u32,
    /// When the freeze starts, from the first publish.
    pub freeze_at: Duration,
    /// How long Redis stays frozen.
    pub freeze_for: Duration,
    /// From how long after the freeze's start a breaker is expected to have opened.
    pub settle: Duration,
    /// The channel to publish into.
    pub channel: String,
}

/// Calls of one target in one span of time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Span {
    /// Calls sent in the span.
    pub calls: u64,
    /// Calls that published.
    pub ok: u64,
    /// Calls that failed (an error reply, a failed request).
    pub errors: u64,
    /// Send -> answer p50, ms.
    pub p50_ms: f64,
    /// p99, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
}

/// One target's result.
#[derive(Debug, Serialize)]
pub struct TargetResult {
    /// Its label.
    pub label: String,
    /// Calls sent before the freeze.
    pub before: Span,
    /// Calls sent while Redis was frozen.
    pub frozen: Span,
    /// Calls sent while Redis was frozen, from `settle` after the freeze began.
    pub frozen_settled: Span,
    /// Calls sent after the thaw.
    pub after: Span,
    /// Most calls in flight at once from the freeze until the thaw's calls drained.
    pub max_in_flight_frozen: u64,
    /// Most calls in flight at once before the freeze.
    pub max_in_flight_before: u64,
    /// From the thaw to the answer of the first call sent after it that published, ms.
    pub recovered_after_ms: Option<f64>,
    /// First error replies seen, for the record.
    pub error_kinds: Vec<String>,
}

/// The scenario's result.
#[derive(Debug, Serialize)]
pub struct EngineFaultResult {
    /// Publishes per second to each target.
    pub rate: f64,
    /// Seconds of publishing.
    pub duration_s: f64,
    /// Seconds from the first publish to the freeze.
    pub freeze_at_s: f64,
    /// Seconds Redis was frozen (as sent: SIGSTOP to SIGCONT).
    pub frozen_s: f64,
    /// Seconds after the freeze from which `frozen_settled` counts.
    pub settle_s: f64,
    /// Per target, in the order given.
    pub targets: Vec<TargetResult>,
}

/// One call: when it was sent and answered (since the run's start), and how it went.
#[derive(Clone, Debug)]
struct Call {
    sent: Duration,
    took: Duration,
    ok: bool,
}

/// A target's tallies while the run goes.
#[derive(Default)]
struct Tally {
    calls: RefCell<Vec<Call>>,
    in_flight: Cell<u64>,
    max_before: Cell<u64>,
    max_frozen: Cell<u64>,
    errors: RefCell<Vec<String>>,
}

/// Runs the scenario. Call it inside a `LocalSet` (the calls are local tasks).
pub async fn run(p: &EngineFaultParams) -> anyhow::Result<EngineFaultResult> {
    anyhow::ensure!(p.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(!p.targets.is_empty(), "at least one --api");
    let client: Client<HttpConnector, Full<Bytes>> = {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(http)
    };
    let tallies: Vec<Rc<Tally>> = p.targets.iter().map(|_| Rc::default()).collect();
    // 0: before, 1: frozen, 2: thawed.
    let phase = Rc::new(Cell::new(0u8));
    let start = Instant::now();
    let freeze = tokio::task::spawn_local({
        let phase = phase.clone();
        let (pid, at, span) = (p.freeze_pid, p.freeze_at, p.freeze_for);
        async move {
            tokio::time::sleep_until((start + at).into()).await;
            signal(pid, "-STOP")?;
            let frozen = Instant::now();
            phase.set(1);
            tokio::time::sleep(span).await;
            signal(pid, "-CONT")?;
            phase.set(2);
            anyhow::Ok((frozen - start, frozen.elapsed()))
        }
    });
    let interval = Duration::from_secs_f64(1.0 / p.rate);
    let mut calls = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    loop {
        let due = interval.mul_f64(n as f64);
        if due >= p.duration {
            break;
        }
        tokio::time::sleep_until((start + due).into()).await;
        for ((_, addr), tally) in p.targets.iter().zip(&tallies) {
            let request = publish_request(*addr, &p.api_key, &p.channel, n)?;
            let client = client.clone();
            let tally = tally.clone();
            let phase = phase.clone();
            calls.spawn_local(async move {
                let sent = start.elapsed();
                let in_flight = tally.in_flight.get() + 1;
                tally.in_flight.set(in_flight);
                match phase.get() {
                    0 => tally.max_before.set(tally.max_before.get().max(in_flight)),
                    _ => tally.max_frozen.set(tally.max_frozen.get().max(in_flight)),
                }
                let outcome = tokio::time::timeout(CALL_TIMEOUT, send(&client, request)).await;
                tally.in_flight.set(tally.in_flight.get() - 1);
                let ok = match outcome {
                    Ok(Ok(())) => true,
                    Ok(Err(kind)) => {
                        let mut errors = tally.errors.borrow_mut();
                        if errors.len() < 5 && !errors.contains(&kind) {
                            errors.push(kind);
                        }
                        false
                    }
                    Err(_) => false,
                };
                let took = start.elapsed() - sent;
                tally.calls.borrow_mut().push(Call { sent, took, ok });
            });
        }
        n += 1;
    }
    while calls.join_next().await.is_some() {}
    let (frozen_at, frozen_for) = freeze.await??;
    let thawed = frozen_at + frozen_for;
    let targets = p
        .targets
        .iter()
        .zip(&tallies)
        .map(|((label, _), tally)| {
            let calls = tally.calls.borrow();
            let in_span = |from: Duration, to: Duration| {
                span(calls.iter().filter(|c| c.sent >= from && c.sent < to))
            };
            let recovered_after_ms = calls
                .iter()
                .filter(|c| c.ok && c.sent >= thawed)
                .map(|c| c.sent + c.took)
                .min()
                .map(|answered| ms(answered.saturating_sub(thawed)));
            TargetResult {
                label: label.clone(),
                before: in_span(Duration::ZERO, frozen_at),
                frozen: in_span(frozen_at, thawed),
                frozen_settled: in_span(frozen_at + p.settle, thawed),
                after: in_span(thawed, Duration::MAX),
                max_in_flight_frozen: tally.max_frozen.get(),
                max_in_flight_before: tally.max_before.get(),
                recovered_after_ms,
                error_kinds: tally.errors.borrow().clone(),
            }
        })
        .collect();
    Ok(EngineFaultResult {
        rate: p.rate,
        duration_s: p.duration.as_secs_f64(),
        freeze_at_s: frozen_at.as_secs_f64(),
        frozen_s: frozen_for.as_secs_f64(),
        settle_s: p.settle.as_secs_f64(),
        targets,
    })
}

/// Sends `signal` (`-STOP`, `-CONT`) to `pid` with kill(1).
fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

fn publish_request(
    addr: SocketAddr,
    key: &str,
    channel: &str,
    n: u64,
) -> anyhow::Result<hyper::Request<Full<Bytes>>> {
    let body = serde_json::json!({"channel": channel, "data": {"n": n}}).to_string();
    Ok(hyper::Request::post(format!("http://{addr}/api/publish"))
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header("X-API-Key", key)
        .body(Full::new(Bytes::from(body)))?)
}

/// One publish: `Err` carries what went wrong (an error reply's code, or the failure).
async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(), String> {
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("http {status}"));
    }
    publish_outcome(&body)
}

/// Whether a server API publish answer says it published.
fn publish_outcome(body: &[u8]) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    match value.get("error") {
        Some(error) => Err(format!(
            "error {} {}",
            error["code"],
            error["message"].as_str().unwrap_or_default()
        )),
        None => Ok(()),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The figures of some calls.
fn span<'a>(calls: impl Iterator<Item = &'a Call>) -> Span {
    let mut took: Vec<Duration> = Vec::new();
    let mut span = Span::default();
    for call in calls {
        span.calls += 1;
        if call.ok {
            span.ok += 1;
        } else {
            span.errors += 1;
        }
        took.push(call.took);
    }
    took.sort_unstable();
    let at = |q: f64| -> f64 {
        if took.is_empty() {
            return 0.0;
        }
        let index = ((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1;
        ms(took[index])
    };
    span.p50_ms = at(0.50);
    span.p99_ms = at(0.99);
    span.max_ms = took.last().map_or(0.0, |d| ms(*d));
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_answers_are_read() {
        assert_eq!(publish_outcome(br#"{"result":{"offset":3}}"#), Ok(()));
        assert_eq!(publish_outcome(b"{}"), Ok(()));
        assert_eq!(
            publish_outcome(br#"{"error":{"code":100,"message":"internal server error"}}"#),
            Err("error 100 internal server error".to_owned())
        );
        assert!(publish_outcome(b"nope").is_err());
    }

    #[test]
    fn spans_count_and_take_nearest_rank_percentiles() {
        let calls: Vec<Call> = (1..=100)
            .map(|i| Call {
                sent: Duration::ZERO,
                took: Duration::from_millis(i),
                ok: i % 10 != 0,
            })
            .collect();
        let s = span(calls.iter());
        assert_eq!((s.calls, s.ok, s.errors), (100, 90, 10));
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (50.0, 99.0, 100.0));
        let empty = span(std::iter::empty());
        assert_eq!((empty.calls, empty.p99_ms), (0, 0.0));
    }
}
