//! Prometheus metrics of one node, served at `/metrics`.
//!
//! Each node owns its recorder (nothing global, so tests can run several nodes in one
//! process). Every handle a hot path touches is registered once, up front or on the first use
//! of a label value, and kept here: updating a metric is an atomic add, never a lookup by name.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::Mutex;

/// The transports a connection can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransportKind {
    /// WebSocket at `/connection/websocket`.
    WebSocket,
    /// Raw TCP with varint-delimited Protobuf.
    Tcp,
}

/// How a recovery attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecoveryOutcome {
    /// The client got exactly what it missed.
    Recovered,
    /// The gap could not be filled; the client was told so.
    NotRecovered,
}

/// Whether a command succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum CommandResult {
    /// Answered with a result.
    Ok,
    /// Answered with an error reply or a disconnect.
    Error,
}

/// Count and latency handles of one method and result.
type CommandHandles = (Counter, Histogram);

/// The metrics of one node.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Open connections: [transport][encoding] (encoding 0 = JSON, 1 = Protobuf).
    connections: [[Gauge; 2]; 2],
    connects: Counter,
    disconnects: Mutex<HashMap<u16, Counter>>,
    commands: Mutex<HashMap<(&'static str, CommandResult), CommandHandles>>,
    /// Publications accepted (client and API).
    pub publications: Counter,
    /// Frames queued to subscribers by fan-out.
    pub deliveries: Counter,
    /// Connections closed because their outbound queue overflowed (3008).
    pub slow_consumers: Counter,
    /// Connections closed for a missing pong (3012).
    pub heartbeat_timeouts: Counter,
    recoveries: [Counter; 2],
    engine_ops: Mutex<HashMap<&'static str, (Histogram, Counter)>>,
    /// Proxy calls by (proxy, event, outcome), and their latency by (proxy, event).
    proxy_calls: Mutex<HashMap<(String, &'static str, &'static str), Counter>>,
    proxy_latency: Mutex<HashMap<(String, &'static str), Histogram>>,
    rss_bytes: Gauge,
    open_files: Gauge,
    /// Lifecycle events the webhook acknowledged.
    pub webhook_delivered: Counter,
    /// Lifecycle events dropped because the buffer was full.
    pub webhook_dropped: Counter,
    /// Webhook POSTs that failed (and were retried).
    pub webhook_failures: Counter,
    /// Lifecycle events waiting for delivery.
    pub webhook_buffer: Gauge,
}

impl Metrics {
    /// A fresh set of metrics with its own recorder.
    pub(crate) fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .map_or_else(
                |_| PrometheusBuilder::new().build_recorder(),
                PrometheusBuilder::build_recorder,
            );
        let handle = recorder.handle();
        let gauge = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            recorder.register_gauge(&key(name, labels), &META)
        };
        let counter = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &META)
        };
        let connections = [("websocket", 0), ("tcp", 1)].map(|(transport, _)| {
            [("json", 0), ("protobuf", 1)].map(|(encoding, _)| {
                gauge(
                    "tether_connections",
                    &[("transport", transport), ("encoding", encoding)],
                )
            })
        });
        Self {
            connects: counter("tether_connects_total", &[]),
            publications: counter("tether_publications_total", &[]),
            deliveries: counter("tether_deliveries_total", &[]),
            slow_consumers: counter("tether_slow_consumer_disconnects_total", &[]),
            heartbeat_timeouts: counter("tether_heartbeat_timeouts_total", &[]),
            recoveries: [
                counter("tether_recoveries_total", &[("outcome", "recovered")]),
                counter("tether_recoveries_total", &[("outcome", "not_recovered")]),
            ],
            rss_bytes: gauge("tether_process_resident_memory_bytes", &[]),
            open_files: gauge("tether_process_open_fds", &[]),
            webhook_delivered: counter("tether_webhook_delivered_total", &[]),
            webhook_dropped: counter("tether_webhook_dropped_total", &[]),
            webhook_failures: counter("tether_webhook_failures_total", &[]),
            webhook_buffer: gauge("tether_webhook_buffer_events", &[]),
            connections,
            disconnects: Mutex::default(),
            commands: Mutex::default(),
            engine_ops: Mutex::default(),
            proxy_calls: Mutex::default(),
            proxy_latency: Mutex::default(),
            recorder,
            handle,
        }
    }

    /// The open-connections gauge of a transport and encoding.
    pub(crate) fn connections(&self, transport: TransportKind, protobuf: bool) -> &Gauge {
        &self.connections[transport as usize][usize::from(protobuf)]
    }

    /// Counts a successful connect.
    pub(crate) fn connected(&self) {
        self.connects.increment(1);
    }

    /// Counts a disconnect by its close code.
    pub(crate) fn disconnected(&self, code: u16) {
        let mut map = self.disconnects.lock();
        map.entry(code)
            .or_insert_with(|| {
                self.recorder.register_counter(
                    &Key::from_parts(
                        "tether_disconnects_total",
                        vec![Label::new("code", code.to_string())],
                    ),
                    &META,
                )
            })
            .increment(1);
    }

    /// Counts one command and records how long it took.
    pub(crate) fn command(&self, method: &'static str, result: CommandResult, took: Duration) {
        let mut map = self.commands.lock();
        let (count, latency) = map.entry((method, result)).or_insert_with(|| {
            let outcome = match result {
                CommandResult::Ok => "ok",
                CommandResult::Error => "error",
            };
            let labels = &[("method", method), ("result", outcome)];
            (
                self.recorder
                    .register_counter(&key("tether_commands_total", labels), &META),
                self.recorder.register_histogram(
                    &key("tether_command_duration_seconds", &[("method", method)]),
                    &META,
                ),
            )
        });
        count.increment(1);
        latency.record(took.as_secs_f64());
    }

    /// Counts a recovery attempt.
    pub(crate) fn recovery(&self, outcome: RecoveryOutcome) {
        self.recoveries[outcome as usize].increment(1);
    }

    /// Records one engine operation.
    pub(crate) fn engine_op(&self, op: &'static str, took: Duration, failed: bool) {
        let mut map = self.engine_ops.lock();
        let (latency, errors) = map.entry(op).or_insert_with(|| {
            (
                self.recorder.register_histogram(
                    &key("tether_engine_operation_duration_seconds", &[("op", op)]),
                    &META,
                ),
                self.recorder
                    .register_counter(&key("tether_engine_errors_total", &[("op", op)]), &META),
            )
        });
        latency.record(took.as_secs_f64());
        if failed {
            errors.increment(1);
        }
    }

    /// Records one proxy call: `outcome` is `ok`, `refused` (the backend answered with an
    /// error or a disconnect), `timeout`, `unavailable` (breaker open or too many in flight),
    /// `failed` (transport, status or answer) or `bad_request`.
    pub(crate) fn proxy_call(
        &self,
        proxy: &str,
        event: &'static str,
        outcome: &'static str,
        took: Duration,
    ) {
        let mut calls = self.proxy_calls.lock();
        calls
            .entry((proxy.to_owned(), event, outcome))
            .or_insert_with(|| {
                self.recorder.register_counter(
                    &owned_key(
                        "tether_proxy_calls_total",
                        &[("proxy", proxy), ("event", event), ("outcome", outcome)],
                    ),
                    &META,
                )
            })
            .increment(1);
        drop(calls);
        if outcome == "unavailable" {
            return;
        }
        self.proxy_latency
            .lock()
            .entry((proxy.to_owned(), event))
            .or_insert_with(|| {
                self.recorder.register_histogram(
                    &owned_key(
                        "tether_proxy_call_duration_seconds",
                        &[("proxy", proxy), ("event", event)],
                    ),
                    &META,
                )
            })
            .record(took.as_secs_f64());
    }

    /// Sets whether a proxy's circuit breaker is open.
    pub(crate) fn proxy_breaker(&self, proxy: &str, open: bool) {
        self.recorder
            .register_gauge(
                &owned_key("tether_proxy_breaker_open", &[("proxy", proxy)]),
                &META,
            )
            .set(if open { 1.0 } else { 0.0 });
    }

    /// Sets one Redis shard's health figures (read from the engine at each scrape):
    /// `breaker` is 0 closed, 1 open, 2 half-open (absent without a breaker); the counters are
    /// totals since start; `pubsub_silent_s` is the time since its Pub/Sub connection last
    /// proved alive.
    pub(crate) fn redis_shard(&self, shard: usize, health: RedisShardFigures) {
        let shard = shard.to_string();
        let labels = [("shard", shard.as_str())];
        if let Some(state) = health.breaker {
            self.recorder
                .register_gauge(&owned_key("tether_redis_breaker_state", &labels), &META)
                .set(f64::from(state));
        }
        self.recorder
            .register_gauge(
                &owned_key("tether_redis_commands_in_flight", &labels),
                &META,
            )
            .set(f64::from(health.in_flight));
        self.recorder
            .register_counter(
                &owned_key("tether_redis_breaker_rejected_total", &labels),
                &META,
            )
            .absolute(health.rejected);
        self.recorder
            .register_counter(
                &owned_key("tether_redis_breaker_opened_total", &labels),
                &META,
            )
            .absolute(health.opened);
        if let Some(silent) = health.pubsub_silent_s {
            self.recorder
                .register_gauge(
                    &owned_key("tether_redis_pubsub_seconds_since_alive", &labels),
                    &META,
                )
                .set(silent);
        }
    }

    /// The handles of one async consumer, registered under its name.
    pub(crate) fn consumer(&self, name: &str) -> ConsumerMetrics {
        let labels = [("consumer", name)];
        let errors = |kind: &'static str| {
            self.recorder.register_counter(
                &owned_key(
                    "tether_consumer_errors_total",
                    &[("consumer", name), ("kind", kind)],
                ),
                &META,
            )
        };
        ConsumerMetrics {
            messages: self
                .recorder
                .register_counter(&owned_key("tether_consumer_messages_total", &labels), &META),
            skipped: errors("skipped"),
            retried: errors("retried"),
            lag: self
                .recorder
                .register_gauge(&owned_key("tether_consumer_lag", &labels), &META),
            last_success: self.recorder.register_gauge(
                &owned_key("tether_consumer_last_success_timestamp_seconds", &labels),
                &META,
            ),
        }
    }

    /// Sets the disk engine's figures (read from the engine at each scrape): bytes its
    /// segments take on disk, streams stored, failed writes and group commits since start.
    pub(crate) fn disk(&self, bytes: u64, streams: u64, write_errors: u64, batches: u64) {
        self.recorder
            .register_gauge(&owned_key("tether_disk_bytes", &[]), &META)
            .set(bytes as f64);
        self.recorder
            .register_gauge(&owned_key("tether_disk_streams", &[]), &META)
            .set(streams as f64);
        self.recorder
            .register_counter(&owned_key("tether_disk_write_errors_total", &[]), &META)
            .absolute(write_errors);
        self.recorder
            .register_counter(&owned_key("tether_disk_batches_total", &[]), &META)
            .absolute(batches);
    }

    /// The Prometheus text exposition, with process figures read now.
    pub(crate) fn render(&self) -> String {
        if let Some(rss) = read_rss_bytes() {
            self.rss_bytes.set(rss as f64);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_files.set(dir.count() as f64);
        }
        self.handle.render()
    }

    /// Periodic housekeeping of histogram windows.
    pub(crate) fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// One async consumer's metrics (`consumer` label).
#[derive(Clone)]
pub(crate) struct ConsumerMetrics {
    /// Messages done with: their command ran, or they were skipped.
    pub messages: Counter,
    /// Messages skipped because they can never succeed (bad payload, unknown method, a
    /// non-internal API error).
    pub skipped: Counter,
    /// Attempts that failed with an internal error and will be retried.
    pub retried: Counter,
    /// Messages waiting: outbox rows, stream entries pending or not yet read, queue depth.
    pub lag: Gauge,
    /// Unix time of the last message whose command ran.
    pub last_success: Gauge,
}

impl fmt::Debug for ConsumerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConsumerMetrics")
    }
}

/// One Redis shard's health figures, for [`Metrics::redis_shard`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RedisShardFigures {
    /// Breaker state: 0 closed, 1 open, 2 half-open; `None` without a breaker.
    pub breaker: Option<u8>,
    /// Commands in flight through the breaker.
    pub in_flight: u32,
    /// Commands the open breaker refused.
    pub rejected: u64,
    /// Times the breaker opened.
    pub opened: u64,
    /// Seconds since the Pub/Sub connection last proved alive.
    pub pubsub_silent_s: Option<f64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, *v))
            .collect::<Vec<_>>(),
    )
}

/// A metric key whose label values are not static (a proxy's configured name).
fn owned_key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, (*v).to_owned()))
            .collect::<Vec<_>>(),
    )
}

/// Resident set size from `/proc/self/status` (Linux), in bytes.
fn read_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Histogram buckets for command and engine latencies, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics_with_values() {
        let m = Metrics::new();
        m.connections(TransportKind::WebSocket, false)
            .increment(2.0);
        m.connected();
        m.disconnected(3012);
        m.command("publish", CommandResult::Ok, Duration::from_micros(300));
        m.recovery(RecoveryOutcome::Recovered);
        m.deliveries.increment(7);
        let text = m.render();
        assert!(
            text.contains(r#"tether_connections{transport="websocket",encoding="json"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tether_disconnects_total{code="3012"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tether_commands_total{method="publish",result="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tether_recoveries_total{outcome="recovered"} 1"#),
            "{text}"
        );
        assert!(text.contains("tether_deliveries_total 7"), "{text}");
        assert!(
            text.contains("tether_process_resident_memory_bytes"),
            "{text}"
        );
        assert!(
            text.contains("tether_command_duration_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn two_nodes_do_not_share_metrics() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.connected();
        assert!(a.render().contains("tether_connects_total 1"));
        assert!(b.render().contains("tether_connects_total 0"));
    }
}
