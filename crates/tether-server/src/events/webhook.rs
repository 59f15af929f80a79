//! Delivery of lifecycle events to `webhook.endpoint`: a bounded buffer and one sender.
//!
//! Events are serialized once when they enter the buffer. The sender takes up to
//! `batch_max_size` of them from its front (waiting up to `batch_max_delay` for a batch to
//! fill), POSTs `{"events": [...]}` with the `X-Tether-Signature: sha256=<hex>` HMAC of the
//! body, and removes them only when the backend answers 2xx. Anything else — an error
//! status, a refused connection, a timeout — is retried with exponential backoff and full
//! jitter, the same batch again, so events stay in the order they were handed over and none
//! is skipped: delivery is at least once (a batch whose answer was lost is sent again; each
//! event's `id` lets the backend drop repeats). While the backend is down the buffer fills;
//! past `buffer_size` new events are dropped, counted (`tether_webhook_dropped_total`) and
//! logged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use parking_lot::Mutex;
use rand::Rng;
use sha2::Sha256;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Event;
use crate::config::WebhookConfig;
use crate::metrics::Metrics;
use crate::proxy::http::{self, HttpClient, Tls};
use crate::proxy::tls;

/// First pause after a failed POST; doubled per failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest pause between two tries: after an outage the backend gets events again within
/// this long.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Drops are logged at most this often.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// The header carrying the body's signature.
pub(crate) const SIGNATURE_HEADER: &str = "x-tether-signature";

/// Why the webhook could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebhookError {
    /// The endpoint is not a URL (the config's validation normally catches it).
    #[error("webhook.endpoint: {0}")]
    Endpoint(String),
    /// `https://` and the system's root certificates could not be loaded.
    #[error("webhook.endpoint: {0}")]
    Tls(String),
}

/// The buffer and the sender's settings.
pub(super) struct Webhook {
    uri: hyper::Uri,
    client: HttpClient,
    secret: Option<Vec<u8>>,
    timeout: Duration,
    batch_max_size: usize,
    batch_max_delay: Duration,
    limit: usize,
    buffer: Mutex<VecDeque<Bytes>>,
    wake: Notify,
    metrics: std::sync::Arc<Metrics>,
    /// Drops not yet logged, and when the last log line was written.
    unlogged_drops: AtomicU64,
    last_drop_log: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("uri", &self.uri)
            .field("queued", &self.buffer.lock().len())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    pub(super) fn new(
        config: &WebhookConfig,
        metrics: std::sync::Arc<Metrics>,
    ) -> Result<Self, WebhookError> {
        let uri: hyper::Uri =
            config
                .endpoint
                .parse()
                .map_err(|error: hyper::http::uri::InvalidUri| {
                    WebhookError::Endpoint(error.to_string())
                })?;
        let tls = if uri.scheme_str() == Some("https") {
            let mut roots = tls::SystemRoots::default();
            let client = tls::client_config(&config.tls, &mut roots)
                .map_err(|error| WebhookError::Tls(error.to_string()))?;
            let name = tls::server_name(&config.tls)
                .map_err(|error| WebhookError::Tls(error.to_string()))?;
            Tls::On(Box::new(client), name)
        } else {
            Tls::Off
        };
        Ok(Self {
            uri,
            client: http::client(tls),
            secret: (!config.secret.is_empty()).then(|| config.secret.as_bytes().to_vec()),
            timeout: config.timeout,
            batch_max_size: config.batch_max_size.max(1),
            batch_max_delay: config.batch_max_delay,
            limit: config.buffer_size.max(1),
            buffer: Mutex::default(),
            wake: Notify::new(),
            metrics,
            unlogged_drops: AtomicU64::new(0),
            last_drop_log: Mutex::new(None),
        })
    }

    /// Appends events (serialized) in order; those past the bound are dropped and counted.
    pub(super) fn push(&self, events: &[Event]) {
        // Only what fits is serialized: an overflowing buffer costs no encoding.
        let room = self.limit.saturating_sub(self.buffer.lock().len());
        let over = events.len().saturating_sub(room);
        let mut encoded = Vec::with_capacity(events.len() - over);
        for event in &events[..events.len() - over] {
            match serde_json::to_vec(event) {
                Ok(bytes) => encoded.push(Bytes::from(bytes)),
                Err(error) => warn!(%error, "an event could not be serialized"),
            }
        }
        // Only the worker pushes, so the room it saw is still there.
        let mut buffer = self.buffer.lock();
        buffer.extend(encoded);
        let queued = buffer.len();
        drop(buffer);
        self.metrics.webhook_buffer.set(queued as f64);
        if over > 0 {
            self.dropped(over as u64);
        }
        self.wake.notify_one();
    }

    /// Counts and (at most every [`DROP_LOG_EVERY`]) logs events that did not fit.
    pub(super) fn dropped(&self, count: u64) {
        self.metrics.webhook_dropped.increment(count);
        let pending = self.unlogged_drops.fetch_add(count, Ordering::Relaxed) + count;
        let now = Instant::now();
        let mut last = self.last_drop_log.lock();
        if last.is_none_or(|at| now.duration_since(at) >= DROP_LOG_EVERY) {
            *last = Some(now);
            drop(last);
            let dropped = pending.min(self.unlogged_drops.swap(0, Ordering::Relaxed));
            warn!(
                dropped,
                buffer_size = self.limit,
                "webhook buffer full: events dropped (the backend is down or too slow)"
            );
        }
    }

    /// Sends batches until `stop`.
    pub(super) async fn send_loop(self: std::sync::Arc<Self>, stop: CancellationToken) {
        loop {
            if self.buffer.lock().is_empty() {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.wake.notified() => continue,
                }
            }
            if self.buffer.lock().len() < self.batch_max_size && !self.batch_max_delay.is_zero() {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(self.batch_max_delay) => {}
                }
            }
            if !self.send_front(None, &stop).await {
                return;
            }
        }
    }

    /// Delivers what is buffered by `deadline` (the sender is stopped first).
    pub(super) async fn flush(&self, deadline: Instant) {
        let never = CancellationToken::new();
        while !self.buffer.lock().is_empty() && Instant::now() < deadline {
            if !self.send_front(Some(deadline), &never).await {
                break;
            }
        }
        let left = self.buffer.lock().len();
        if left > 0 {
            warn!(
                left,
                "shutdown: webhook events not delivered by the deadline"
            );
        }
    }

    /// Sends the front batch until the backend takes it; false when stopped (or past the
    /// deadline) first, the batch still buffered.
    async fn send_front(&self, deadline: Option<Instant>, stop: &CancellationToken) -> bool {
        let batch: Vec<Bytes> = {
            let buffer = self.buffer.lock();
            buffer.iter().take(self.batch_max_size).cloned().collect()
        };
        if batch.is_empty() {
            return true;
        }
        let body = body(&batch);
        let headers = self.headers(&body);
        let mut backoff = BACKOFF_MIN;
        loop {
            let call = http::post(&self.client, &self.uri, headers.clone(), body.clone());
            let failure = match tokio::time::timeout(self.timeout, call).await {
                Ok(Ok((status, _))) if (200..300).contains(&status) => None,
                Ok(Ok((status, _))) => Some(format!("status {status}")),
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some("timed out".to_owned()),
            };
            let Some(failure) = failure else {
                break;
            };
            self.metrics.webhook_failures.increment(1);
            debug!(%failure, events = batch.len(), "webhook delivery failed; retrying");
            let pause = rand::rng().random_range(backoff / 2..=backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if deadline.is_some_and(|at| Instant::now() + pause >= at) {
                return false;
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(pause) => {}
            }
        }
        let mut buffer = self.buffer.lock();
        let n = batch.len().min(buffer.len());
        buffer.drain(..n);
        if buffer.is_empty() && buffer.capacity() > self.batch_max_size {
            // An outage or a burst leaves no standing memory behind.
            buffer.shrink_to_fit();
        }
        let queued = buffer.len();
        drop(buffer);
        self.metrics.webhook_buffer.set(queued as f64);
        self.metrics.webhook_delivered.increment(batch.len() as u64);
        true
    }

    /// Takes what is buffered (the tests look at the events instead of sending them).
    #[cfg(test)]
    pub(super) fn drain_for_tests(&self) -> Vec<Bytes> {
        self.buffer.lock().drain(..).collect()
    }

    fn headers(&self, body: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(secret) = &self.secret
            && let Ok(value) = HeaderValue::from_str(&signature(secret, body))
        {
            headers.insert(HeaderName::from_static(SIGNATURE_HEADER), value);
        }
        headers
    }
}

/// `{"events":[...]}` of the serialized events.
fn body(events: &[Bytes]) -> Bytes {
    let len: usize = events.iter().map(|e| e.len() + 1).sum();
    let mut out = BytesMut::with_capacity(len + 13);
    out.put_slice(b"{\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(event);
    }
    out.put_slice(b"]}");
    out.freeze()
}

/// `sha256=<hex HMAC-SHA256 of body>`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_batch_body_is_the_events_in_order() {
        let events = [
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::from_static(b"{\"b\":2}"),
        ];
        assert_eq!(&body(&events)[..], b"{\"events\":[{\"a\":1},{\"b\":2}]}");
        assert_eq!(&body(&[])[..], b"{\"events\":[]}");
    }
}
