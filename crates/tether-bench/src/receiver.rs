//! A local receiver for tether's lifecycle events (issue 20): the backend end of
//! `webhook.endpoint`, for measuring what delivering events costs and how many arrive.
//!
//! Every `POST` (any path) is a batch `{"events":[{"type":...}, ...]}`. With a secret, its
//! `X-Tether-Signature: sha256=<hex HMAC-SHA256 of the body>` is checked first: a missing or
//! wrong one is a 401 and its events are not counted. A body that is not such a batch is a
//! 400. Anything else is a 200 and its events are counted, by type. `GET /stats` answers the
//! totals as JSON ([`Stats`]); the same JSON is printed on stdout when the receiver stops
//! (SIGINT or SIGTERM), and a line with the events of the last second goes to stderr every
//! `--every` while events arrive.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-tether-signature";

/// The event types tether sends, in the order [`Stats::by_type`] lists them.
pub const EVENT_TYPES: [&str; 8] = [
    "user_online",
    "user_offline",
    "connect",
    "disconnect",
    "channel_occupied",
    "channel_vacated",
    "subscribe",
    "unsubscribe",
];

/// Why a POST was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// A secret is set and the signature header is missing.
    #[error("no signature")]
    NoSignature,
    /// The signature is not `sha256=<64 hex digits>` or does not match the body.
    #[error("bad signature")]
    BadSignature,
    /// The body is not `{"events":[...]}` of objects with a `type`.
    #[error("bad body: {0}")]
    BadBody(String),
}

/// The events of one accepted batch, by type.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Counts in the order of [`EVENT_TYPES`].
    pub by_type: [u64; 8],
    /// Events of a type not in [`EVENT_TYPES`].
    pub other: u64,
}

impl Tally {
    /// All events of the batch.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.by_type.iter().sum::<u64>() + self.other
    }
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    events: Vec<EventType<'a>>,
}

#[derive(Deserialize)]
struct EventType<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// `sha256=<hex HMAC-SHA256 of body>` with `secret`, as tether signs.
#[must_use]
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let mut out = String::from("sha256=");
    for byte in mac.finalize().into_bytes() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks a POST: its signature when `secret` is set (in constant time), then its body.
pub fn check(secret: Option<&[u8]>, sig: Option<&str>, body: &[u8]) -> Result<Tally, Reject> {
    if let Some(secret) = secret {
        let sig = sig.ok_or(Reject::NoSignature)?;
        let digest = sig
            .strip_prefix("sha256=")
            .and_then(unhex)
            .ok_or(Reject::BadSignature)?;
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(body);
        mac.verify_slice(&digest)
            .map_err(|_| Reject::BadSignature)?;
    }
    let batch: Batch<'_> =
        serde_json::from_slice(body).map_err(|e| Reject::BadBody(e.to_string()))?;
    let mut tally = Tally::default();
    for event in &batch.events {
        match EVENT_TYPES.iter().position(|t| *t == event.kind) {
            Some(i) => tally.by_type[i] += 1,
            None => tally.other += 1,
        }
    }
    Ok(tally)
}

/// What the receiver has seen so far (`GET /stats`, and the summary at the end).
#[derive(Debug, Serialize)]
pub struct Stats {
    /// Events in accepted batches.
    pub events: u64,
    /// Accepted batches (POSTs answered 200).
    pub batches: u64,
    /// POSTs refused for a missing or wrong signature.
    pub rejected_signature: u64,
    /// POSTs refused for a body that is not a batch.
    pub rejected_body: u64,
    /// Events by type.
    pub by_type: serde_json::Map<String, serde_json::Value>,
    /// Events of unknown types.
    pub other_types: u64,
    /// Seconds since the receiver started.
    pub uptime_s: f64,
    /// Seconds from the start to the first and to the last accepted batch.
    pub first_batch_s: Option<f64>,
    /// See `first_batch_s`.
    pub last_batch_s: Option<f64>,
    /// events / (last_batch_s - first_batch_s).
    pub events_per_s: Option<f64>,
    /// Most events in one `--every` period, per second (0 without periodic reports).
    pub peak_events_per_s: f64,
}

/// The counters the handlers share.
#[derive(Debug)]
pub struct Counters {
    secret: Option<Vec<u8>>,
    start: Instant,
    events: AtomicU64,
    batches: AtomicU64,
    rejected_signature: AtomicU64,
    rejected_body: AtomicU64,
    by_type: [AtomicU64; 8],
    other: AtomicU64,
    /// Microseconds from `start` to the first and the last accepted batch (0: none yet).
    first_us: AtomicU64,
    last_us: AtomicU64,
    /// `f64` bits of the highest periodic rate.
    peak_bits: AtomicU64,
}

impl Counters {
    /// Counters for a receiver checking `secret` (none: signatures are not checked).
    #[must_use]
    pub fn new(secret: Option<Vec<u8>>) -> Arc<Self> {
        Arc::new(Self {
            secret,
            start: Instant::now(),
            events: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            rejected_signature: AtomicU64::new(0),
            rejected_body: AtomicU64::new(0),
            by_type: Default::default(),
            other: AtomicU64::new(0),
            first_us: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
            peak_bits: AtomicU64::new(0),
        })
    }

    /// Checks and counts one POST; the status to answer.
    pub fn post(&self, sig: Option<&str>, body: &[u8]) -> StatusCode {
        match check(self.secret.as_deref(), sig, body) {
            Ok(tally) => {
                for (counter, n) in self.by_type.iter().zip(tally.by_type) {
                    counter.fetch_add(n, Ordering::Relaxed);
                }
                self.other.fetch_add(tally.other, Ordering::Relaxed);
                self.events.fetch_add(tally.total(), Ordering::Relaxed);
                self.batches.fetch_add(1, Ordering::Relaxed);
                let now = u64::try_from(self.start.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let _ =
                    self.first_us
                        .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
                self.last_us.fetch_max(now, Ordering::Relaxed);
                StatusCode::OK
            }
            Err(Reject::NoSignature | Reject::BadSignature) => {
                self.rejected_signature.fetch_add(1, Ordering::Relaxed);
                StatusCode::UNAUTHORIZED
            }
            Err(Reject::BadBody(_)) => {
                self.rejected_body.fetch_add(1, Ordering::Relaxed);
                StatusCode::BAD_REQUEST
            }
        }
    }

    /// Events counted so far.
    #[must_use]
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    fn note_rate(&self, rate: f64) {
        let peak = f64::from_bits(self.peak_bits.load(Ordering::Relaxed));
        if rate > peak {
            self.peak_bits.store(rate.to_bits(), Ordering::Relaxed);
        }
    }

    /// The totals now.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let secs = |us: u64| (us > 0).then(|| us as f64 / 1e6);
        let events = self.events();
        let first = secs(self.first_us.load(Ordering::Relaxed));
        let last = secs(self.last_us.load(Ordering::Relaxed));
        let by_type = EVENT_TYPES
            .iter()
            .zip(&self.by_type)
            .map(|(t, c)| ((*t).to_owned(), c.load(Ordering::Relaxed).into()))
            .collect();
        Stats {
            events,
            batches: self.batches.load(Ordering::Relaxed),
            rejected_signature: self.rejected_signature.load(Ordering::Relaxed),
            rejected_body: self.rejected_body.load(Ordering::Relaxed),
            by_type,
            other_types: self.other.load(Ordering::Relaxed),
            uptime_s: self.start.elapsed().as_secs_f64(),
            first_batch_s: first,
            last_batch_s: last,
            events_per_s: first
                .zip(last)
                .and_then(|(a, b)| (b > a).then(|| events as f64 / (b - a))),
            peak_events_per_s: f64::from_bits(self.peak_bits.load(Ordering::Relaxed)),
        }
    }
}

async fn post(State(c): State<Arc<Counters>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let sig = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    c.post(sig, &body)
}

async fn stats(State(c): State<Arc<Counters>>) -> Response {
    let body = serde_json::to_string(&c.stats()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The receiver's routes: `GET /stats`, and any `POST`.
pub fn router(counters: Arc<Counters>) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .fallback(post)
        .with_state(counters)
}

/// Where and how the receiver serves.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    /// The listener's address.
    pub listen: SocketAddr,
    /// The webhook secret (none: signatures are not checked).
    pub secret: Option<String>,
    /// How often a line with the last period's events goes to stderr (zero: never).
    pub every: Duration,
    /// Runtime threads (1: a current-thread runtime).
    pub threads: usize,
}

/// Serves until SIGINT or SIGTERM, then prints the [`Stats`] as one JSON line on stdout.
pub fn serve(config: &ReceiverConfig) -> anyhow::Result<()> {
    let rt = crate::runtime(config.threads)?;
    let counters = Counters::new(config.secret.clone().map(String::into_bytes));
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        if !config.every.is_zero() {
            tokio::spawn(report_every(counters.clone(), config.every));
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        axum::serve(listener, router(counters.clone()))
            .with_graceful_shutdown(stop)
            .await?;
        anyhow::Ok(())
    })?;
    println!("{}", serde_json::to_string(&counters.stats())?);
    Ok(())
}

/// Every `every`, while events arrive, a line on stderr with the period's rate and the total.
async fn report_every(c: Arc<Counters>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = (Instant::now(), c.events());
    loop {
        tick.tick().await;
        let now = (Instant::now(), c.events());
        let n = now.1 - last.1;
        if n > 0 {
            let rate = n as f64 / now.0.duration_since(last.0).as_secs_f64();
            c.note_rate(rate);
            eprintln!(
                "receiver: t={:.1}s {n} events ({rate:.0}/s), {} in all",
                c.start.elapsed().as_secs_f64(),
                now.1
            );
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"events":[{"id":"n-1","type":"user_online","time":1,"user":"u1","node":"n"},{"id":"n-2","type":"connect","time":1,"user":"u1","client":"c","transport":"websocket","protocol":"json","node":"n"},{"id":"n-3","type":"connect","time":2,"node":"n"},{"id":"n-4","type":"something_new","time":3,"node":"n"}]}"#;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2 (the same vector tether's own signer is tested with).
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_signed_batch_is_counted_by_type() {
        let sig = signature(b"s3cret", BODY);
        let tally = check(Some(b"s3cret"), Some(&sig), BODY).unwrap();
        assert_eq!(tally.by_type, [1, 0, 2, 0, 0, 0, 0, 0]);
        assert_eq!(tally.other, 1);
        assert_eq!(tally.total(), 4);
        // Without a secret the header is not looked at.
        assert_eq!(check(None, None, BODY).unwrap().total(), 4);
        assert_eq!(
            check(None, None, br#"{"events":[]}"#).unwrap(),
            Tally::default()
        );
    }

    #[test]
    fn wrong_or_missing_signatures_and_bad_bodies_are_refused() {
        let sig = signature(b"s3cret", BODY);
        assert_eq!(check(Some(b"s3cret"), None, BODY), Err(Reject::NoSignature));
        assert_eq!(
            check(Some(b"other"), Some(&sig), BODY),
            Err(Reject::BadSignature)
        );
        let mut tampered = BODY.to_vec();
        tampered[20] ^= 1;
        assert_eq!(
            check(Some(b"s3cret"), Some(&sig), &tampered),
            Err(Reject::BadSignature)
        );
        for bad in ["sha256=zz", "sha1=00", &sig[7..], "sha256=abc"] {
            assert_eq!(
                check(Some(b"s3cret"), Some(bad), BODY),
                Err(Reject::BadSignature),
                "{bad}"
            );
        }
        for body in [
            &b"not json"[..],
            br#"{"event":[]}"#,
            br#"{"events":[{"id":"x"}]}"#,
        ] {
            assert!(matches!(check(None, None, body), Err(Reject::BadBody(_))));
        }
    }

    #[test]
    fn counters_add_up_accepted_batches_only() {
        let c = Counters::new(Some(b"k".to_vec()));
        let sig = signature(b"k", BODY);
        assert_eq!(c.post(Some(&sig), BODY), StatusCode::OK);
        assert_eq!(c.post(Some(&sig), BODY), StatusCode::OK);
        assert_eq!(c.post(None, BODY), StatusCode::UNAUTHORIZED);
        let junk_sig = signature(b"k", b"junk");
        assert_eq!(c.post(Some(&junk_sig), b"junk"), StatusCode::BAD_REQUEST);
        let s = c.stats();
        assert_eq!((s.events, s.batches), (8, 2));
        assert_eq!((s.rejected_signature, s.rejected_body), (1, 1));
        assert_eq!(s.by_type["connect"], 4);
        assert_eq!(s.by_type["user_online"], 2);
        assert_eq!(s.other_types, 2);
        assert!(s.first_batch_s.is_some() && s.last_batch_s >= s.first_batch_s);
    }

    /// One raw HTTP/1.1 request to the router on a real socket; the status line's code.
    async fn request(addr: SocketAddr, head: &str, body: &[u8]) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{head}\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_signature_header_is_read_over_http() {
        let c = Counters::new(Some(b"k".to_vec()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(c)).await });
        let sig = signature(b"k", BODY);
        let head = format!("POST /events HTTP/1.1\r\nX-Tether-Signature: {sig}");
        let ok = request(addr, &head, BODY).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let unsigned = request(addr, "POST / HTTP/1.1", BODY).await;
        assert!(unsigned.starts_with("HTTP/1.1 401"), "{unsigned}");
        let stats = request(addr, "GET /stats HTTP/1.1", b"").await;
        let json = stats.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["events"], 4);
        assert_eq!(v["rejected_signature"], 1);
    }
}
