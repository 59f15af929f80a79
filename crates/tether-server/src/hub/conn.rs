//! A connection as the rest of the node sees it: a cheap handle with an outbound queue.
//!
//! The driver task owns the socket and the session; everybody else (fan-out, the heartbeat
//! sweeper, the server API) talks to a connection only through its [`Conn`] handle: they
//! append pre-encoded frames to its bounded queue, post control messages, or ask it to
//! close. The driver is woken through one [`AtomicWaker`] (a flag and the driver task's
//! waker: smaller than a `Notify` and its waiting future, which every idle connection would
//! carry) and drains the queue with vectored writes. Nobody ever waits on a connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use parking_lot::Mutex;
use tether_proto::Encoding;
use tether_proto::codes::DisconnectCode;

use crate::broker::{ClientInfo, Publication, StreamPosition};

/// A connection's protocol-level id (the `client` field of the protocol, a UUID), kept
/// inline as its 36 ASCII characters: no allocation per connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId([u8; uuid::fmt::Hyphenated::LENGTH]);

impl ClientId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
        uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        Self(text)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Written only by `random`, as ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Why and how a connection is to be closed: a protocol disconnect code and its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    /// Close code (3000–4999 for protocol disconnects, 1xxx for WebSocket-level ones).
    pub code: u16,
    /// Short human-readable reason; cut to 123 bytes on the wire.
    pub reason: String,
}

impl From<DisconnectCode> for Disconnect {
    fn from(code: DisconnectCode) -> Self {
        Self {
            code: code.code,
            reason: code.reason.to_owned(),
        }
    }
}

/// How frames for this connection are put on the wire; decides which shared encoding of a
/// publication it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Framing {
    /// RFC 6455 message frames: text for JSON, binary for Protobuf.
    WebSocket,
    /// Raw TCP: a byte stream of uvarint-length-delimited Protobuf replies, so an encoded
    /// reply is its own frame (no header around it).
    Tcp,
}

/// A message from the node to a connection's session, applied by its driver.
#[derive(Clone, Debug)]
pub enum Control {
    /// Subscribe the connection server-side (server API `subscribe`).
    Subscribe(ServerSubscribe),
    /// Unsubscribe the connection from a channel (server API `unsubscribe`), code 2000.
    Unsubscribe {
        /// The channel to leave.
        channel: String,
    },
    /// Update connection expiry and info (server API `refresh`).
    Refresh {
        /// The connection is expired now: disconnect with 3005.
        expired: bool,
        /// New expiry time (Unix seconds); 0 keeps the current one.
        expire_at: i64,
        /// New connection info, if given.
        info: Option<Bytes>,
    },
    /// A subscription expiry is due: end the subscriptions not refreshed in time.
    CheckExpiry,
    /// Publications of a positioned subscription's channel were lost on their way to this
    /// node: unsubscribe with 2500 (client-side) or disconnect with 3010 (server-side) so
    /// the client recovers.
    InsufficientState {
        /// The channel.
        channel: String,
    },
}

/// A server-side subscription requested through the API.
#[derive(Clone, Debug, Default)]
pub struct ServerSubscribe {
    /// The channel.
    pub channel: String,
    /// Channel info attached to the subscriber's ClientInfo (`chan_info`).
    pub info: Option<Bytes>,
    /// Data sent along with the subscribe push.
    pub data: Option<Bytes>,
    /// Recover from this position instead of starting at the top.
    pub recover_since: Option<StreamPosition>,
    /// Channel option overrides.
    pub overrides: crate::session::SubscribeOverrides,
}

/// A publication that reached a subscription while it was still being set up; replayed by
/// the session after the subscribe reply so nothing falls between history and live delivery.
#[derive(Clone, Debug)]
pub struct PendingPublication {
    /// The publication.
    pub publication: Arc<Publication>,
    /// Its stream position, when the channel has history.
    pub position: Option<StreamPosition>,
}

/// What the driver must do next, as seen by [`Conn::take_work`]. Boxed inside the handle
/// only while something is posted, so an idle connection carries a null pointer for it.
#[derive(Debug, Default)]
pub struct Work {
    /// Control messages to apply, in order.
    pub controls: Vec<Control>,
    /// Set when the connection must close.
    pub close: Option<Disconnect>,
}

/// Shared handle to one connection.
pub type ConnHandle = Arc<Conn>;

/// The shared half of a connection.
#[derive(Debug)]
pub struct Conn {
    /// Registry key: a process-unique sequence number (cheaper to hash than the UUID).
    pub seq: u64,
    /// Protocol client id.
    pub client: ClientId,
    /// Wire encoding negotiated at the upgrade.
    pub encoding: Encoding,
    /// Wire framing of the transport.
    pub framing: Framing,
    /// Byte bound of the outbound queue; over it the connection is closed with 3008.
    queue_limit: usize,
    /// Set once the driver has taken a close request; makes later enqueues no-ops.
    closing: AtomicBool,
    inner: Mutex<Inner>,
    /// Set by every wake, cleared by the driver when it takes the wake.
    woken: AtomicBool,
    /// The driver task, woken when something arrives for it.
    waker: AtomicWaker,
}

#[derive(Debug, Default)]
struct Inner {
    /// Set at connect; the empty string for anonymous users.
    user: Arc<str>,
    info: Option<Bytes>,
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    /// Control messages and a close request waiting for the driver.
    work: Option<Box<Work>>,
    heartbeat: Heartbeat,
}

/// Deadlines the heartbeat sweeper checks, in milliseconds on the node clock (0 = none).
#[derive(Clone, Copy, Debug, Default)]
pub struct Heartbeat {
    /// The connection must have sent a successful connect by then (3502 otherwise).
    pub stale_at: u64,
    /// Next ping is due.
    pub ping_at: u64,
    /// A pong is awaited until then (3012 otherwise).
    pub pong_by: u64,
    /// The connection's credentials expire (3005 unless refreshed).
    pub expire_at: u64,
    /// A subscription's token expires: the session must check its subscriptions.
    pub sub_expire_at: u64,
}

impl Conn {
    /// A handle for a freshly accepted connection.
    pub fn new(seq: u64, encoding: Encoding, framing: Framing, queue_limit: usize) -> Self {
        Self {
            seq,
            client: ClientId::random(),
            encoding,
            framing,
            queue_limit,
            closing: AtomicBool::new(false),
            inner: Mutex::new(Inner::default()),
            woken: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    /// The connection's user ("" for anonymous or before connect).
    pub fn user(&self) -> Arc<str> {
        self.inner.lock().user.clone()
    }

    /// Sets user and connection info at connect.
    pub fn set_identity(&self, user: Arc<str>, info: Option<Bytes>) {
        let mut inner = self.inner.lock();
        inner.user = user;
        inner.info = info;
    }

    /// Replaces the connection info (API refresh).
    pub fn set_info(&self, info: Option<Bytes>) {
        self.inner.lock().info = info;
    }

    /// ClientInfo for presence, join/leave and client publications.
    pub fn client_info(&self, chan_info: Option<Bytes>) -> ClientInfo {
        let inner = self.inner.lock();
        ClientInfo {
            user: inner.user.to_string(),
            client: self.client.to_string(),
            conn_info: inner.info.clone(),
            chan_info,
        }
    }

    /// Appends one encoded frame. Returns false (and asks the driver to close with 3008) when
    /// the queue would pass its byte bound.
    pub fn enqueue(&self, frame: Bytes) -> bool {
        self.enqueue_all(std::iter::once(frame))
    }

    /// Appends several frames under one lock (a reply followed by replayed publications).
    pub fn enqueue_all(&self, frames: impl IntoIterator<Item = Bytes>) -> bool {
        if self.closing.load(Ordering::Relaxed) {
            return false;
        }
        let mut inner = self.inner.lock();
        for frame in frames {
            if inner.queued_bytes + frame.len() > self.queue_limit {
                inner
                    .work
                    .get_or_insert_default()
                    .close
                    .get_or_insert(DisconnectCode::SLOW.into());
                drop(inner);
                self.wake();
                return false;
            }
            inner.queued_bytes += frame.len();
            inner.queue.push_back(frame);
        }
        drop(inner);
        self.wake();
        true
    }

    /// Posts a control message for the session.
    pub fn post(&self, control: Control) {
        self.inner
            .lock()
            .work
            .get_or_insert_default()
            .controls
            .push(control);
        self.wake();
    }

    /// Asks the driver to close the connection; the first reason wins.
    pub fn close(&self, disconnect: Disconnect) {
        self.inner
            .lock()
            .work
            .get_or_insert_default()
            .close
            .get_or_insert(disconnect);
        self.wake();
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once something was queued, posted or a close was requested since the last
    /// ready poll; registers the polling task to be woken otherwise. A wake that lands
    /// between two polls is kept, never lost.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Moves queued frames into `out` (up to `max` frames) and returns their byte count.
    ///
    /// When `out` is empty and the whole queue fits, the queue's buffer itself moves into
    /// `out` (no copy, no allocation); either way an emptied queue keeps no capacity, so an
    /// idle connection holds no queue buffer.
    pub fn drain_frames(&self, out: &mut Vec<Bytes>, max: usize) -> usize {
        let mut inner = self.inner.lock();
        let bytes = if out.is_empty() && inner.queue.len() <= max {
            *out = Vec::from(std::mem::take(&mut inner.queue));
            out.iter().map(Bytes::len).sum()
        } else {
            let n = inner.queue.len().min(max);
            let mut bytes = 0;
            for frame in inner.queue.drain(..n) {
                bytes += frame.len();
                out.push(frame);
            }
            if inner.queue.is_empty() {
                inner.queue = VecDeque::new();
            }
            bytes
        };
        inner.queued_bytes -= bytes;
        bytes
    }

    /// True when frames are waiting.
    pub fn has_frames(&self) -> bool {
        !self.inner.lock().queue.is_empty()
    }

    /// Takes pending control messages and any close request.
    pub fn take_work(&self) -> Work {
        let work = self
            .inner
            .lock()
            .work
            .take()
            .map_or_else(Work::default, |w| *w);
        if work.close.is_some() {
            self.closing.store(true, Ordering::Relaxed);
        }
        work
    }

    /// True once the driver took a close request: the connection is on its way out and
    /// takes no more frames.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Reads or updates the heartbeat deadlines.
    pub fn with_heartbeat<R>(&self, f: impl FnOnce(&mut Heartbeat) -> R) -> R {
        f(&mut self.inner.lock().heartbeat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(limit: usize) -> Conn {
        Conn::new(1, Encoding::Json, Framing::WebSocket, limit)
    }

    #[test]
    fn queue_over_limit_requests_slow_disconnect() {
        let c = conn(10);
        assert!(c.enqueue(Bytes::from_static(b"12345")));
        assert!(c.enqueue(Bytes::from_static(b"12345")));
        assert!(!c.enqueue(Bytes::from_static(b"1")));
        let work = c.take_work();
        assert_eq!(work.close.map(|d| d.code), Some(3008));
        // After the close was taken, nothing more is queued.
        assert!(!c.enqueue(Bytes::from_static(b"1")));
    }

    #[test]
    fn drain_counts_bytes_and_releases_capacity() {
        let c = conn(1 << 20);
        for _ in 0..100 {
            c.enqueue(Bytes::from_static(b"abc"));
        }
        let mut out = Vec::new();
        assert_eq!(c.drain_frames(&mut out, 64), 64 * 3);
        assert_eq!(c.drain_frames(&mut out, 64), 36 * 3);
        assert!(!c.has_frames());
        assert_eq!(c.inner.lock().queue.capacity(), 0);
        // A queue that fits moves into an empty `out` whole, in order.
        c.enqueue(Bytes::from_static(b"x"));
        c.enqueue(Bytes::from_static(b"yz"));
        let mut out = Vec::new();
        assert_eq!(c.drain_frames(&mut out, 64), 3);
        assert_eq!(out, [Bytes::from_static(b"x"), Bytes::from_static(b"yz")]);
        assert_eq!(c.inner.lock().queue.capacity(), 0);
        // The byte count went back to zero: a full-limit frame fits again.
        assert!(c.enqueue(Bytes::from(vec![0; 1 << 20])));
    }
}
