//! Async consumers: server API commands read from where the backend already writes — an
//! outbox table in PostgreSQL (`postgres.rs`), Redis Streams (`redis_stream.rs`), NATS
//! JetStream (`jetstream.rs`) and RabbitMQ (`amqp.rs`) — and run exactly as through the HTTP
//! API (`command::dispatch`). Config keys and message formats are Centrifugo v6's
//! (`compat-consumers.md`); `docs/consumers.md` is the user's page.
//!
//! What is shared lives here: [`Dispatcher`] turns one message into one command run and an
//! [`Outcome`] (done, skipped for good, or retry), injects the message's idempotency key into
//! publishes that carry none (so a redelivery after a crash publishes once within the
//! engine's idempotency window), and counts per consumer; [`Backoff`] is Centrifugo's retry
//! delay. Each consumer type owns its own loop: what it acknowledges and when, how it keeps
//! order, and how several nodes share the work.

mod amqp;
mod jetstream;
mod postgres;
mod redis_stream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::command::{self, ApiError, CallError, PublishData};
use crate::config::{CONSUMER_TYPES, ConsumerConfig, DataModeFields};
use crate::metrics::ConsumerMetrics;
use crate::node::Node;

/// The API methods a consumer runs; any other is skipped as processed (Centrifugo's rule:
/// only commands that change state).
const METHODS: [&str; 7] = [
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "history_remove",
    "refresh",
];

/// How often a consumer reads how many messages wait at its source, for
/// `tether_consumer_lag`.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// A consumer that could not start (its server unreachable, its stream missing, ...).
#[derive(Debug, thiserror::Error)]
#[error("error initializing {kind} consumer ({name}): {message}")]
pub(crate) struct ConsumerError {
    /// The consumer's type.
    pub kind: &'static str,
    /// The consumer's name.
    pub name: String,
    /// What went wrong.
    pub message: String,
}

/// One consumer's loop, as [`Consumers::spawn`] runs it.
type Loop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The consumers of one node, connected and ready to run.
pub(crate) struct Consumers {
    loops: Vec<(String, Loop)>,
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.loops.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Consumers {
    /// Connects every enabled consumer of the node's config (as Centrifugo, a consumer that
    /// cannot connect stops the node from starting).
    pub(crate) async fn connect(node: &Arc<Node>) -> Result<Self, ConsumerError> {
        let mut loops = Vec::new();
        for config in node.config.consumers.iter().filter(|c| c.enabled) {
            let dispatcher = Dispatcher::new(node.clone(), config);
            let run: Loop = match config.r#type.as_str() {
                "postgresql" => Box::pin(postgres::start(dispatcher, &config.postgresql).await?),
                "redis_stream" => {
                    Box::pin(redis_stream::start(dispatcher, &config.redis_stream).await?)
                }
                "nats_jetstream" => {
                    Box::pin(jetstream::start(dispatcher, &config.nats_jetstream).await?)
                }
                "amqp" => Box::pin(amqp::start(dispatcher, &config.amqp).await?),
                // Validation admits no other enabled type.
                other => {
                    return Err(ConsumerError {
                        kind: "unknown",
                        name: config.name.clone(),
                        message: format!("unknown consumer type {other:?}"),
                    });
                }
            };
            loops.push((config.name.clone(), run));
        }
        Ok(Self { loops })
    }

    /// Runs every consumer on `tracker` until the node shuts down.
    pub(crate) fn spawn(self, tracker: &TaskTracker) {
        for (name, run) in self.loops {
            tracker.spawn(run.instrument(info_span!("consumer", consumer = %name)));
        }
    }
}

/// What became of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The command ran.
    Done,
    /// The message can never succeed (it does not parse, names a method consumers do not
    /// run, or the command failed with an error other than an internal one): logged, counted,
    /// and acknowledged as processed.
    Skipped,
    /// The command failed with an internal error (the engine unreachable, say): not
    /// acknowledged; try again after a [`Backoff`] delay.
    Retry,
}

impl Outcome {
    /// Whether the message may be acknowledged (deleted) now.
    pub(crate) fn is_processed(self) -> bool {
        self != Self::Retry
    }
}

/// One consumed message as its consumer type hands it over: its body and its headers (NATS,
/// AMQP) or other fields (Redis Streams).
#[derive(Debug)]
pub(crate) struct Incoming<'a> {
    /// The body: the API request, an envelope, or (publication data mode) the data.
    pub payload: &'a [u8],
    /// Headers or fields besides the body, as strings.
    pub fields: &'a [(String, String)],
    /// The idempotency key that identifies this message across redeliveries (the outbox row,
    /// the stream entry, the message id); empty when the source has none.
    pub key: &'a str,
}

impl Incoming<'_> {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs consumed messages as server API commands for one consumer.
#[derive(Clone, Debug)]
pub(crate) struct Dispatcher {
    node: Arc<Node>,
    name: Arc<str>,
    /// The consumer's type, as configured.
    kind: &'static str,
    metrics: ConsumerMetrics,
    /// Where the method is in command mode: the header or field name (empty for the outbox,
    /// whose method is a column).
    method_field: String,
    /// Publication data mode's field names, when it is on.
    data_mode: Option<DataModeFields>,
}

impl Dispatcher {
    fn new(node: Arc<Node>, config: &ConsumerConfig) -> Self {
        let (method_field, data_mode) = match config.r#type.as_str() {
            "redis_stream" => (
                config.redis_stream.method_value.clone(),
                config.redis_stream.publication_data_mode.fields(),
            ),
            "nats_jetstream" => (
                config.nats_jetstream.method_header.clone(),
                config.nats_jetstream.publication_data_mode.fields(),
            ),
            "amqp" => (
                config.amqp.method_header.clone(),
                config.amqp.publication_data_mode.fields(),
            ),
            _ => (String::new(), None),
        };
        Self {
            metrics: node.metrics.consumer(&config.name),
            name: config.name.as_str().into(),
            kind: CONSUMER_TYPES
                .into_iter()
                .find(|&kind| kind == config.r#type)
                .unwrap_or("unknown"),
            node,
            method_field,
            data_mode,
        }
    }

    /// The consumer's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// This consumer could not start: `message` says why.
    pub(crate) fn start_error(&self, message: String) -> ConsumerError {
        ConsumerError {
            kind: self.kind,
            name: self.name.to_string(),
            message,
        }
    }

    /// The consumer's metrics (its loop sets the lag).
    pub(crate) fn metrics(&self) -> &ConsumerMetrics {
        &self.metrics
    }

    /// Cancelled when the node shuts down: a consumer finishes the message in hand and stops.
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.node.shutdown
    }

    /// Waits [`LAG_INTERVAL`] between two readings of the lag; `false` when the node shut
    /// down first.
    pub(crate) async fn until_next_lag_reading(&self) -> bool {
        tokio::select! {
            () = self.shutdown().cancelled() => false,
            () = tokio::time::sleep(LAG_INTERVAL) => true,
        }
    }

    /// This node's name (Redis Streams' consumer name, say).
    pub(crate) fn node_name(&self) -> &str {
        &self.node.config.node.name
    }

    /// Runs one message of a header- or field-carrying source (Redis Streams, JetStream,
    /// AMQP), in command mode or publication data mode as configured.
    pub(crate) async fn handle(&self, message: &Incoming<'_>) -> Outcome {
        if let Some(fields) = &self.data_mode {
            let outcome = match publication(message, fields) {
                Ok(publication) => {
                    let result = command::publish_data(&self.node, &publication).await;
                    let method = if publication.channels.len() == 1 {
                        "publish"
                    } else {
                        "broadcast"
                    };
                    judge(method, result)
                }
                Err(why) => Judged::Skip(why),
            };
            return self.count(outcome, message.key);
        }
        let method = message.field(&self.method_field).unwrap_or("");
        self.command(method, message.payload, message.key).await
    }

    /// Runs one command: `method` with `payload` as its request, or, when `method` is empty,
    /// the `{"method", "payload"}` envelope in `payload` (whose `payload` may be an object or
    /// a string holding JSON).
    pub(crate) async fn command(&self, method: &str, payload: &[u8], key: &str) -> Outcome {
        let judged = self.run_command(method, payload, key).await;
        self.count(judged, key)
    }

    async fn run_command(&self, method: &str, payload: &[u8], key: &str) -> Judged {
        #[derive(Deserialize)]
        struct Envelope<'a> {
            #[serde(default)]
            method: String,
            #[serde(borrow)]
            payload: &'a RawValue,
        }
        let envelope;
        let unquoted;
        let (method, params): (&str, &RawValue) = if method.is_empty() {
            envelope = match serde_json::from_slice::<Envelope<'_>>(payload) {
                Ok(envelope) => envelope,
                Err(e) => return Judged::Skip(format!("not a method + payload envelope: {e}")),
            };
            // `payload` may be a JSON string that holds the request.
            let params = if envelope.payload.get().starts_with('"') {
                let text: String = match serde_json::from_str(envelope.payload.get()) {
                    Ok(text) => text,
                    Err(e) => return Judged::Skip(format!("payload string: {e}")),
                };
                unquoted = match RawValue::from_string(text) {
                    Ok(raw) => raw,
                    Err(e) => return Judged::Skip(format!("payload string is not JSON: {e}")),
                };
                &*unquoted
            } else {
                envelope.payload
            };
            (envelope.method.as_str(), params)
        } else {
            match serde_json::from_slice::<&RawValue>(payload) {
                Ok(params) => (method, params),
                Err(e) => return Judged::Skip(format!("payload is not JSON: {e}")),
            }
        };
        if !METHODS.contains(&method) {
            return Judged::Skip(format!("unsupported method {method:?}"));
        }
        let result = command::dispatch_keyed(&self.node, method, params, key).await;
        judge(method, result)
    }

    /// Counts and logs an outcome.
    fn count(&self, judged: Judged, key: &str) -> Outcome {
        match judged {
            Judged::Done => {
                self.metrics.messages.increment(1);
                self.metrics.last_success.set(unix_seconds());
                Outcome::Done
            }
            Judged::Skip(why) => {
                self.metrics.messages.increment(1);
                self.metrics.skipped.increment(1);
                warn!(key, "message skipped: {why}");
                Outcome::Skipped
            }
            Judged::Retry(why) => {
                self.metrics.retried.increment(1);
                warn!(key, "message will be retried: {why}");
                Outcome::Retry
            }
        }
    }

    /// Handles `message` until it is processed, waiting a [`Backoff`] delay between
    /// attempts, so what follows it waits too (order kept). `None` when the node shut down
    /// first.
    pub(crate) async fn handle_until_processed(&self, message: &Incoming<'_>) -> Option<Outcome> {
        let mut backoff = Backoff::default();
        loop {
            let outcome = self.handle(message).await;
            if outcome.is_processed() {
                return Some(outcome);
            }
            if !backoff.wait(self.shutdown()).await {
                return None;
            }
        }
    }
}

/// An outcome with its reason, before it is counted.
enum Judged {
    Done,
    Skip(String),
    Retry(String),
}

/// Centrifugo's retry rule: only an internal error (code 100) is retried; `broadcast` is
/// retried as a whole when any channel failed internally (its channels that did publish are
/// kept from publishing twice by the idempotency key).
fn judge(method: &str, result: Result<Value, CallError>) -> Judged {
    match result {
        Ok(value) => {
            let internal = method == "broadcast"
                && value["responses"].as_array().is_some_and(|responses| {
                    responses
                        .iter()
                        .any(|r| r["error"]["code"] == ApiError::INTERNAL.code)
                });
            if internal {
                Judged::Retry(format!("{method}: a channel failed with an internal error"))
            } else {
                Judged::Done
            }
        }
        Err(CallError::Decode) => Judged::Skip(format!("{method}: request does not decode")),
        Err(CallError::Api(error)) if error.code == ApiError::INTERNAL.code => {
            Judged::Retry(format!("{method}: {} ({})", error.message, error.code))
        }
        Err(CallError::Api(error)) => {
            Judged::Skip(format!("{method}: {} ({})", error.message, error.code))
        }
    }
}

/// A message in publication data mode: its payload is the data; channels and options come
/// from its fields.
fn publication(message: &Incoming<'_>, fields: &DataModeFields) -> Result<PublishData, String> {
    let channels: Vec<String> = message
        .field(&fields.channels)
        .filter(|c| !c.is_empty())
        .map(|c| c.split(',').map(str::to_owned).collect())
        .ok_or_else(|| format!("no channels in {:?}", fields.channels))?;
    let delta = match message.field(&fields.delta) {
        None | Some("") => false,
        Some(value) => parse_go_bool(value)
            .ok_or_else(|| format!("{:?} is not a boolean: {value:?}", fields.delta))?,
    };
    if let Some(version) = message.field(&fields.version).filter(|v| !v.is_empty()) {
        version
            .parse::<u64>()
            .map_err(|_| format!("{:?} is not a number: {version:?}", fields.version))?;
    }
    let tags = if fields.tags_prefix.is_empty() {
        Default::default()
    } else {
        message
            .fields
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(fields.tags_prefix.as_str())
                    .map(|tag| (tag.to_owned(), v.clone()))
            })
            .collect()
    };
    let idempotency_key = message
        .field(&fields.idempotency_key)
        .filter(|k| !k.is_empty())
        .unwrap_or(message.key)
        .to_owned();
    Ok(PublishData {
        channels,
        data: Bytes::copy_from_slice(message.payload),
        tags,
        idempotency_key,
        delta,
    })
}

/// Go's `strconv.ParseBool` spellings.
fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Centrifugo's retry delay: `(10 ms + jitter[0, 10 ms)) × 2^retries`, capped at 5 s.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    retries: u32,
}

impl Backoff {
    const MAX: Duration = Duration::from_secs(5);

    /// The next delay.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let jitter = rand::rng().random_range(0..10_000u64);
        let base = Duration::from_micros(10_000 + jitter);
        let delay = base
            .checked_mul(1u32 << self.retries.min(20))
            .map_or(Self::MAX, |d| d.min(Self::MAX));
        self.retries = self.retries.saturating_add(1);
        delay
    }

    /// Sleeps the next delay; `false` when `shutdown` came first.
    pub(crate) async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// Back to the first delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.retries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_10ms_and_caps_at_5s() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(10) && first < Duration::from_millis(20));
        let second = backoff.next_delay();
        assert!(second >= Duration::from_millis(20) && second < Duration::from_millis(40));
        for _ in 0..20 {
            assert!(backoff.next_delay() <= Backoff::MAX);
        }
        assert_eq!(backoff.next_delay(), Backoff::MAX);
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(20));
    }

    #[test]
    fn only_internal_errors_are_retried() {
        let internal = Err(CallError::Api(ApiError::INTERNAL));
        assert!(matches!(judge("publish", internal), Judged::Retry(_)));
        let unknown = Err(CallError::Api(ApiError::UNKNOWN_CHANNEL));
        assert!(matches!(judge("publish", unknown), Judged::Skip(_)));
        assert!(matches!(
            judge("subscribe", Err(CallError::Decode)),
            Judged::Skip(_)
        ));
        let partial = serde_json::json!({"responses": [
            {"result": {}},
            {"error": {"code": 100, "message": "internal server error"}},
        ]});
        assert!(matches!(judge("broadcast", Ok(partial)), Judged::Retry(_)));
        let refused = serde_json::json!({"responses": [
            {"error": {"code": 102, "message": "unknown channel"}},
        ]});
        assert!(matches!(judge("broadcast", Ok(refused)), Judged::Done));
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn publication_data_mode_reads_channels_options_and_tags() {
        let names = crate::config::PublicationDataMode {
            enabled: true,
            ..Default::default()
        }
        .fields()
        .expect("enabled");
        let headers = fields(&[
            ("centrifugo-channels", "a,b"),
            ("centrifugo-delta", "t"),
            ("centrifugo-tag-kind", "chat"),
        ]);
        let message = Incoming {
            payload: b"{\"n\":1}",
            fields: &headers,
            key: "stream:1-0",
        };
        let read = publication(&message, &names).expect("valid");
        assert_eq!(read.channels, ["a", "b"]);
        assert!(read.delta);
        assert_eq!(read.tags["kind"], "chat");
        assert_eq!(read.idempotency_key, "stream:1-0");
        assert_eq!(&read.data[..], b"{\"n\":1}");

        let own_key = fields(&[
            ("centrifugo-channels", "a"),
            ("centrifugo-idempotency-key", "mine"),
        ]);
        let message = Incoming {
            fields: &own_key,
            ..message
        };
        assert_eq!(
            publication(&message, &names)
                .expect("valid")
                .idempotency_key,
            "mine"
        );

        for bad in [
            fields(&[]),
            fields(&[("centrifugo-channels", "")]),
            fields(&[("centrifugo-channels", "a"), ("centrifugo-delta", "yes")]),
            fields(&[("centrifugo-channels", "a"), ("centrifugo-version", "v1")]),
        ] {
            let message = Incoming {
                fields: &bad,
                ..message
            };
            assert!(publication(&message, &names).is_err(), "{bad:?}");
        }
    }
}
