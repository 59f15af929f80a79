//! A webhook receiver for the lifecycle event tests: a real HTTP/1.1 server on
//! 127.0.0.1:0 in the test process that checks each body's `X-Tether-Signature` itself
//! (HMAC-SHA256 computed here, not by the library) and records every delivered event with
//! its batch and whether the signature matched. It can answer 503 ([`Receiver::answer`]) or
//! stop listening altogether, its open connections closed, and come back on the same port
//! ([`Receiver::stop`], [`Receiver::resume`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;
use sha2::Sha256;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The webhook secret the tests configure.
pub(crate) const WEBHOOK_SECRET: &str = "webhook-test-secret";

/// The signature header as the tests expect it on every request.
pub(crate) const SIGNATURE_HEADER: &str = "x-tether-signature";

/// `sha256=<hex HMAC-SHA256 of body>` under `secret`.
pub(crate) fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Whether `header` is the signature of `body` under `secret` (checked in constant time
/// by the MAC).
pub(crate) fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    if hex.len() != 64 || !hex.is_ascii() {
        return false;
    }
    let Ok(tag) = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

/// One accepted POST (answered 2xx).
#[derive(Clone, Debug)]
pub(crate) struct Batch {
    /// Its body, as received.
    pub(crate) body: Bytes,
    /// Its `X-Tether-Signature` header.
    pub(crate) signature: Option<String>,
    /// Whether that header is the body's signature under the receiver's secret.
    pub(crate) valid: bool,
}

/// One delivered event.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    /// The index of its batch in [`Receiver::batches`].
    pub(crate) batch: usize,
    /// Whether its batch's signature was valid.
    pub(crate) valid: bool,
    pub(crate) event: Value,
}

#[derive(Default)]
struct Shared {
    secret: Vec<u8>,
    batches: Mutex<Vec<Batch>>,
    events: Mutex<Vec<Recorded>>,
    /// What every POST is answered (200 unless told otherwise).
    status: AtomicU16,
    /// POSTs answered with an error status.
    refused: AtomicUsize,
    changed: Notify,
}

/// The receiver. Stops when dropped.
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    shared: Arc<Shared>,
    serving: Mutex<Option<(CancellationToken, TaskTracker)>>,
}

impl Receiver {
    /// Starts a receiver checking signatures with [`WEBHOOK_SECRET`].
    pub(crate) async fn start() -> Self {
        Self::with_secret(WEBHOOK_SECRET).await
    }

    /// Starts a receiver checking signatures with `secret`.
    pub(crate) async fn with_secret(secret: &str) -> Self {
        let shared = Arc::new(Shared {
            secret: secret.as_bytes().to_vec(),
            status: AtomicU16::new(200),
            ..Shared::default()
        });
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)));
        let addr = listener.local_addr().expect("receiver address");
        let receiver = Self {
            addr,
            shared,
            serving: Mutex::new(None),
        };
        receiver.serve(listener);
        receiver
    }

    /// The endpoint to configure as `webhook.endpoint`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// Answers every later POST with `status` (200: accept; anything else: refuse and
    /// record nothing).
    pub(crate) fn answer(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Stops listening and closes every open connection (a request in progress gets no
    /// answer): the node's next POSTs are refused by the kernel. Returns once the port is
    /// closed.
    pub(crate) async fn stop(&self) {
        let serving = self.serving.lock().take();
        if let Some((stop, tracker)) = serving {
            stop.cancel();
            tracker.close();
            tracker.wait().await;
        }
    }

    /// Listens again on the same port after [`Receiver::stop`].
    pub(crate) fn resume(&self) {
        assert!(self.serving.lock().is_none(), "the receiver is listening");
        self.serve(bind(self.addr));
    }

    fn serve(&self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let shared = self.shared.clone();
        let (accept_stop, accept_tracker) = (stop.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = accept_stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let shared = shared.clone();
                let conn_stop = accept_stop.clone();
                accept_tracker.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&shared, request).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    // Cancelled: the connection is dropped, its socket closed.
                    tokio::select! {
                        () = conn_stop.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        *self.serving.lock() = Some((stop, tracker));
    }

    /// Every accepted batch so far, in arrival order.
    pub(crate) fn batches(&self) -> Vec<Batch> {
        self.shared.batches.lock().clone()
    }

    /// Every delivered event so far, with its batch, in arrival order.
    pub(crate) fn recorded(&self) -> Vec<Recorded> {
        self.shared.events.lock().clone()
    }

    /// Every delivered event so far, in arrival order.
    pub(crate) fn events(&self) -> Vec<Value> {
        self.shared
            .events
            .lock()
            .iter()
            .map(|r| r.event.clone())
            .collect()
    }

    /// POSTs refused (answered with an error status) so far.
    pub(crate) fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Waits until `pred` holds for the events delivered so far and returns them; fails the
    /// test with the events when it does not `within`.
    pub(crate) async fn wait_for(
        &self,
        within: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.shared.changed.notified();
            let events = self.events();
            if pred(&events) {
                return events;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let events = self.events();
                if pred(&events) {
                    return events;
                }
                panic!(
                    "the receiver's events never matched within {within:?}; got:\n{}",
                    lines(&events)
                );
            }
        }
    }

    /// Waits until `count` events match `pred`; returns all events.
    pub(crate) async fn wait_count(
        &self,
        within: Duration,
        count: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.wait_for(within, |events| {
            events.iter().filter(|e| pred(e)).count() >= count
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some((stop, _)) = self.serving.lock().take() {
            stop.cancel();
        }
    }
}

/// A listener on `addr` with `SO_REUSEADDR`, so that a port just closed can be taken again.
fn bind(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(addr)
        .unwrap_or_else(|e| panic!("bind the receiver on {addr}: {e}"));
    socket.listen(1024).expect("listen")
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let signature = request
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return reply(400),
    };
    let status = shared.status.load(Ordering::SeqCst);
    if !(200..300).contains(&status) {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        shared.changed.notify_waiters();
        return reply(status);
    }
    let valid = verify(&shared.secret, &body, signature.as_deref());
    let parsed: Value = serde_json::from_slice(&body).expect("a webhook body is JSON");
    let list = parsed["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events array in {parsed}"))
        .clone();
    {
        // One lock order (batches, then events), so a batch and its events appear together.
        let mut batches = shared.batches.lock();
        let mut events = shared.events.lock();
        let batch = batches.len();
        batches.push(Batch {
            body,
            signature,
            valid,
        });
        events.extend(list.into_iter().map(|event| Recorded {
            batch,
            valid,
            event,
        }));
    }
    shared.changed.notify_waiters();
    reply(status)
}

fn reply(status: u16) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("a response")
}

/// One event per line, for failure messages.
pub(crate) fn lines(events: &[Value]) -> String {
    events
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// An event's type.
pub(crate) fn kind(event: &Value) -> &str {
    event["type"].as_str().unwrap_or_default()
}

/// The types of the events of `user`, in order.
pub(crate) fn kinds_of_user<'a>(events: &'a [Value], user: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e["user"] == user)
        .map(kind)
        .collect()
}

/// The events of type `kind`.
pub(crate) fn of_kind<'a>(events: &'a [Value], kind_name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| kind(e) == kind_name).collect()
}
