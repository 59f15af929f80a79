//! A connection as the rest of the node sees it: a cheap handle with an outbound queue.
//!
//! The driver task owns the session and reads the socket; everybody else (fan-out, the
//! heartbeat sweeper, the server API) talks to a connection only through its [`Conn`]
//! handle: they hand it pre-encoded frames, post control messages, or ask it to close.
//!
//! A frame handed to an idle connection (nothing queued before it) is written to the socket
//! right away by whoever hands it over, with one non-blocking `send`: a ping from the
//! sweeper or a publication from fan-out then costs no task wake-up and no poll of the
//! driver. (Once the session queues a reply to a command, the driver [holds](Conn::hold)
//! the frames that follow it and flushes them when the command is done, so a reply never
//! overtakes its command's work.) Only what the
//! socket does not take at once is queued, in a queue bounded in bytes, and the driver is
//! woken through one [`AtomicWaker`] (a flag and the driver task's waker: smaller than a
//! `Notify` and its waiting future, which every idle connection would carry) to drain it
//! with vectored writes when the socket is writable again. Every write,
//! direct or drained, happens under the handle's lock and only from the head of the queue,
//! so frames reach the wire in the order they were handed over. Nobody ever waits on a
//! connection.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use parking_lot::Mutex;
use tether_proto::Encoding;
use tether_proto::codes::DisconnectCode;
use tokio::net::TcpStream;

use crate::broker::{ClientInfo, Publication, StreamPosition};
use crate::wire::{Disconnect, Framing};

/// A connection's protocol-level id (the `client` field of the protocol, a UUID), kept
/// inline as its 36 ASCII characters: no allocation per connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId([u8; uuid::fmt::Hyphenated::LENGTH]);

impl ClientId {
    /// A fresh random id.
    pub(crate) fn random() -> Self {
        let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
        uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        Self(text)
    }

    /// The id as text.
    pub(crate) fn as_str(&self) -> &str {
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
    /// The backend's subscription stream feeding one subscription ended: unsubscribe with
    /// 2000 when the backend closed it, 2500 when it failed (compat-proxy §6.6).
    StreamEnded {
        /// The channel.
        channel: Arc<str>,
        /// The subscription the stream fed: one that replaced it since is left alone.
        sub: std::sync::Weak<super::Subscriber>,
        /// The stream failed rather than ended.
        failed: bool,
    },
}

/// Per-subscription overrides of namespace options (from a token's `override` or the server
/// API's `override`). `None` keeps the namespace's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscribeOverrides {
    /// Keep presence for this subscription.
    pub presence: Option<bool>,
    /// Emit join/leave for this subscription.
    pub join_leave: Option<bool>,
    /// Push join/leave to this subscriber without it asking.
    pub force_push_join_leave: Option<bool>,
    /// Make the subscription recoverable.
    pub force_recovery: Option<bool>,
    /// Make the subscription positioned.
    pub force_positioning: Option<bool>,
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
    /// When the subscription expires (Unix seconds); `None` = never.
    pub expire_at: Option<i64>,
    /// Channel option overrides.
    pub overrides: SubscribeOverrides,
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
    /// Set once the connection is closing (a frame was refused over the queue bound, a close
    /// request was taken, or the driver stopped serving); makes later enqueues no-ops. Read
    /// without the lock as a shortcut, and again under it before anything is written.
    closing: AtomicBool,
    /// The earliest heartbeat deadline (`u64::MAX`: none), kept by [`Conn::with_heartbeat`]
    /// so the once-a-second sweep skips, without taking its lock, every connection with
    /// nothing due.
    due_at: AtomicU64,
    /// The connection's socket (`None` only for handles made without one, in tests). The
    /// driver reads it; frames are written to it under `inner`'s lock.
    socket: Option<TcpStream>,
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
    /// When the connect succeeded, Unix seconds (0 before).
    connected_at: u32,
    /// Frames not yet written, oldest first. The head may be the unwritten rest of a frame
    /// (`head_partial`); everything else is whole.
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    /// The head of the queue is a frame's rest: part of it is already on the wire, so it
    /// must be finished before anything else (a close frame) is written.
    head_partial: bool,
    /// Whether frames are written through or wait for the driver's flush (see
    /// [`Conn::hold`]).
    hold: Hold,
    /// While held: how many frames at the head of the queue were handed over before the
    /// hold began. They are not held, and [`Conn::flush`] still writes them.
    ahead: usize,
    /// Control messages and a close request waiting for the driver.
    work: Option<Box<Work>>,
    heartbeat: Heartbeat,
}

/// Whether frames handed over may be written through, or wait for the driver's flush.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Hold {
    /// Written through when nothing is queued before them.
    #[default]
    Off,
    /// The driver handles a command or control: written through until the session queues a
    /// reply, held from then on.
    UntilReply,
    /// Held until the driver is done with the command and flushes.
    On,
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

impl Heartbeat {
    /// The earliest deadline set, or `u64::MAX` when none is.
    fn earliest(&self) -> u64 {
        [
            self.stale_at,
            self.ping_at,
            self.pong_by,
            self.expire_at,
            self.sub_expire_at,
        ]
        .into_iter()
        .filter(|&at| at != 0)
        .min()
        .unwrap_or(u64::MAX)
    }
}

impl Inner {
    /// Queues a frame within the byte bound; false (nothing queued) over it.
    fn push(&mut self, frame: Bytes, limit: usize) -> bool {
        if self.queued_bytes + frame.len() > limit {
            return false;
        }
        self.queued_bytes += frame.len();
        self.queue.push_back(frame);
        true
    }

    /// Writes queued frames, oldest first, up to [`MAX_BATCH`] per vectored write, until the
    /// queue is empty (Ok(true): its buffer is released, so an idle connection holds none)
    /// or the socket would block (Ok(false)). Frames that are [held](Conn::hold) stay
    /// queued (Ok(true) once only they are left).
    fn write_queued(&mut self, socket: &TcpStream) -> io::Result<bool> {
        loop {
            let writable = if self.hold != Hold::On {
                self.queue.len()
            } else {
                self.ahead.min(self.queue.len())
            };
            if writable == 0 {
                break;
            }
            let written = if writable == 1 {
                socket.try_write(&self.queue[0])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_BATCH];
                let n = writable.min(MAX_BATCH);
                for (slice, frame) in slices.iter_mut().zip(&self.queue) {
                    *slice = IoSlice::new(frame);
                }
                socket.try_write_vectored(&slices[..n])
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) => return Err(error),
            }
        }
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
        Ok(true)
    }

    /// Drops `written` bytes from the head of the queue.
    fn consume(&mut self, mut written: usize) {
        self.queued_bytes -= written;
        while let Some(head) = self.queue.front_mut() {
            if written < head.len() {
                *head = head.slice(written..);
                self.head_partial = true;
                return;
            }
            written -= head.len();
            self.queue.pop_front();
            self.ahead = self.ahead.saturating_sub(1);
            self.head_partial = false;
            if written == 0 {
                return;
            }
        }
    }
}

/// Frames per vectored write (well under IOV_MAX).
const MAX_BATCH: usize = 64;

impl Conn {
    /// A handle for a freshly accepted connection and its socket (`None` for a handle with
    /// nothing behind it: frames are then only queued).
    pub(crate) fn new(
        seq: u64,
        encoding: Encoding,
        framing: Framing,
        queue_limit: usize,
        socket: Option<TcpStream>,
    ) -> Self {
        Self {
            seq,
            client: ClientId::random(),
            encoding,
            framing,
            queue_limit,
            closing: AtomicBool::new(false),
            due_at: AtomicU64::new(u64::MAX),
            socket,
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
    pub(crate) fn set_identity(&self, user: Arc<str>, info: Option<Bytes>) {
        let mut inner = self.inner.lock();
        inner.user = user;
        inner.info = info;
    }

    /// The transport as the protocol's proxy requests, events and `connections` name it:
    /// `websocket` or `tcp`.
    pub(crate) fn transport_name(&self) -> &'static str {
        match self.framing {
            Framing::WebSocket => "websocket",
            Framing::Tcp => "tcp",
        }
    }

    /// The encoding as they name it: `json` or `protobuf`.
    pub(crate) fn protocol_name(&self) -> &'static str {
        match self.encoding {
            Encoding::Json => "json",
            Encoding::Protobuf => "protobuf",
        }
    }

    /// Records when the connect succeeded (Unix seconds).
    pub(crate) fn set_connected_at(&self, unix: i64) {
        self.inner.lock().connected_at = u32::try_from(unix).unwrap_or(0);
    }

    /// The user, the connection info and when it connected (Unix seconds, 0 before), as
    /// the `connections` API reports them.
    pub(crate) fn identity(&self) -> (Arc<str>, Option<Bytes>, i64) {
        let inner = self.inner.lock();
        (
            inner.user.clone(),
            inner.info.clone(),
            i64::from(inner.connected_at),
        )
    }

    /// Replaces the connection info (API refresh).
    pub(crate) fn set_info(&self, info: Option<Bytes>) {
        self.inner.lock().info = info;
    }

    /// ClientInfo for presence, join/leave and client publications.
    pub(crate) fn client_info(&self, chan_info: Option<Bytes>) -> ClientInfo {
        let inner = self.inner.lock();
        ClientInfo {
            user: inner.user.to_string(),
            client: self.client.to_string(),
            conn_info: inner.info.clone(),
            chan_info,
        }
    }

    /// The handle's state, locked, unless the connection is closing (checked without the
    /// lock as a shortcut, and again under it, where it is final for what is written).
    fn lock_open(&self) -> Option<parking_lot::MutexGuard<'_, Inner>> {
        if self.closing.load(Ordering::Relaxed) {
            return None;
        }
        let inner = self.inner.lock();
        (!self.closing.load(Ordering::Relaxed)).then_some(inner)
    }

    /// Queues a frame within the byte bound. Over it the frame is refused, a 3008 close is
    /// requested and the handle takes nothing more: a later, smaller frame must not reach
    /// the client after one it never got, or the client would recover from past the gap.
    fn push(&self, inner: &mut Inner, frame: Bytes) -> bool {
        let pushed = inner.push(frame, self.queue_limit);
        if !pushed {
            self.refuse(inner);
        }
        pushed
    }

    /// From now on every frame is refused, and the driver is asked to close with 3008.
    fn refuse(&self, inner: &mut Inner) {
        self.closing.store(true, Ordering::Relaxed);
        inner
            .work
            .get_or_insert_default()
            .close
            .get_or_insert(DisconnectCode::SLOW.into());
    }

    /// What the connection is owed would not fit its queue (publications parked while a
    /// subscription was set up, say): it takes no more frames and is closed with 3008, as
    /// when a frame is refused over the bound.
    pub(crate) fn overflow(&self) {
        self.refuse(&mut self.inner.lock());
        self.wake();
    }

    /// Byte bound of the outbound queue.
    pub(crate) fn queue_limit(&self) -> usize {
        self.queue_limit
    }

    /// The connection's socket, for its driver.
    pub(crate) fn socket(&self) -> io::Result<&TcpStream> {
        self.socket
            .as_ref()
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }

    /// Hands over one encoded frame: written at once when nothing is queued before it,
    /// queued otherwise (or for the part the socket did not take). Returns false (and asks
    /// the driver to close with 3008) when the queue would pass its byte bound, and when
    /// the connection is closing.
    pub(crate) fn enqueue(&self, frame: Bytes) -> bool {
        let Some(mut inner) = self.lock_open() else {
            return false;
        };
        let idle = inner.queue.is_empty() && inner.hold != Hold::On;
        let queued = match (&self.socket, idle) {
            (Some(socket), true) => match socket.try_write(&frame) {
                Ok(n) if n == frame.len() => return true,
                Ok(n) if n > 0 => {
                    // Part of it is on the wire: the rest is queued whatever the bound (it
                    // is memory the frame holds anyway), or the stream would be cut mid-frame.
                    inner.queued_bytes += frame.len() - n;
                    inner.queue.push_back(frame.slice(n..));
                    inner.head_partial = true;
                    true
                }
                // Would block, or failed: the driver finds out when it writes the queue.
                _ => self.push(&mut inner, frame),
            },
            _ => self.push(&mut inner, frame),
        };
        drop(inner);
        self.wake();
        queued
    }

    /// Queues a frame of a large fan-out and wakes the driver to write it, without trying
    /// the socket: the publisher of a publication to thousands of connections then spends
    /// no system call per subscriber, the connections' own tasks write in parallel on the
    /// runtime's workers, and frames that pile up before a task runs leave in one vectored
    /// write. Returns false as [`Conn::enqueue`] does.
    pub(crate) fn enqueue_queued(&self, frame: Bytes) -> bool {
        let Some(mut inner) = self.lock_open() else {
            return false;
        };
        let queued = self.push(&mut inner, frame);
        drop(inner);
        self.wake();
        queued
    }

    /// Hands over a reply (or push) of the session: as [`Conn::enqueue`], except that while
    /// the driver handles a command the reply is held, with every frame after it, until the
    /// command is done (see [`Conn::hold`]).
    pub(crate) fn enqueue_reply(&self, frame: Bytes) -> bool {
        self.enqueue_all(std::iter::once(frame))
    }

    /// Hands over the session's output under one lock, in order: a reply followed by
    /// replayed publications, say. As [`Conn::enqueue_reply`].
    pub(crate) fn enqueue_all(&self, frames: impl IntoIterator<Item = Bytes>) -> bool {
        let Some(mut inner) = self.lock_open() else {
            return false;
        };
        if inner.hold == Hold::UntilReply {
            inner.hold = Hold::On;
            inner.ahead = inner.queue.len();
        }
        let idle = inner.queue.is_empty() && inner.hold == Hold::Off;
        for frame in frames {
            if !self.push(&mut inner, frame) {
                drop(inner);
                self.wake();
                return false;
            }
        }
        if idle
            && let Some(socket) = &self.socket
            && matches!(inner.write_queued(socket), Ok(true))
        {
            return true;
        }
        drop(inner);
        self.wake();
        true
    }

    /// The driver starts handling a command or control. Frames handed over meanwhile are
    /// still written through until the session queues its first reply
    /// ([`Conn::enqueue_reply`]); from then on they are held, until [`Conn::release`] and
    /// the driver's flush, so a reply never reaches the client before the work its command
    /// does after queueing it (a subscribe's presence entry, say). With `from_start` they
    /// are held from now on: before the connect reply nothing may reach the client. Frames
    /// queued before the hold began are never held.
    pub(crate) fn hold(&self, from_start: bool) {
        let mut inner = self.inner.lock();
        inner.hold = if from_start {
            Hold::On
        } else {
            Hold::UntilReply
        };
        inner.ahead = inner.queue.len();
    }

    /// The driver is done with the command: frames are written through again once it has
    /// flushed what was held.
    pub(crate) fn release(&self) {
        self.inner.lock().hold = Hold::Off;
    }

    /// Writes queued frames (for the driver, when the socket is writable). Ok(true) when
    /// the queue is empty, or only [held](Conn::hold) frames are left (frames handed over
    /// before the hold began are written); Ok(false) when the socket would block first.
    pub(crate) fn flush(&self) -> io::Result<bool> {
        let socket = self.socket()?;
        self.inner.lock().write_queued(socket)
    }

    /// Ends the outbound stream: from now on nothing new is queued or written, and only
    /// what the peer is still owed stays queued, then `close` (the transport's goodbye), if
    /// any: every queued frame, or with `drop_queued` just the rest of a frame that is
    /// partly on the wire (so the close after it parses). The driver then
    /// [flushes](Conn::flush) what is left.
    pub(crate) fn finish_queue(&self, drop_queued: bool, close: Option<Bytes>) {
        self.closing.store(true, Ordering::Relaxed);
        let mut inner = self.inner.lock();
        if drop_queued {
            let keep = usize::from(inner.head_partial).min(inner.queue.len());
            inner.queue.truncate(keep);
            inner.queued_bytes = inner.queue.iter().map(Bytes::len).sum();
        }
        if let Some(close) = close {
            inner.queued_bytes += close.len();
            inner.queue.push_back(close);
        }
    }

    /// Posts a control message for the session.
    pub(crate) fn post(&self, control: Control) {
        self.inner
            .lock()
            .work
            .get_or_insert_default()
            .controls
            .push(control);
        self.wake();
    }

    /// Asks the driver to close the connection; the first reason wins.
    pub(crate) fn close(&self, disconnect: Disconnect) {
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
    pub(crate) fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
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

    /// Takes the queued frames without writing them: how tests and benches look at what a
    /// handle without a socket was given.
    pub fn take_queued(&self) -> Vec<Bytes> {
        let mut inner = self.inner.lock();
        inner.queued_bytes = 0;
        inner.head_partial = false;
        std::mem::take(&mut inner.queue).into()
    }

    /// True when frames are waiting to be written.
    pub fn has_frames(&self) -> bool {
        !self.inner.lock().queue.is_empty()
    }

    /// Takes pending control messages and any close request.
    pub(crate) fn take_work(&self) -> Work {
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

    /// True once the driver took a close request or a frame was refused over the queue
    /// bound: the connection is on its way out and takes no more frames.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Reads or updates the heartbeat deadlines.
    pub(crate) fn with_heartbeat<R>(&self, f: impl FnOnce(&mut Heartbeat) -> R) -> R {
        let mut inner = self.inner.lock();
        let result = f(&mut inner.heartbeat);
        self.due_at
            .store(inner.heartbeat.earliest(), Ordering::Relaxed);
        result
    }

    /// Whether a heartbeat deadline may have come by `now` (node clock, ms): the sweeper
    /// looks at a connection's deadlines, under its lock, only then.
    pub(crate) fn heartbeat_due(&self, now: u64) -> bool {
        self.due_at.load(Ordering::Relaxed) <= now
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    fn conn(limit: usize) -> Conn {
        Conn::new(1, Encoding::Json, Framing::WebSocket, limit, None)
    }

    /// A handle on one end of a loopback connection, and the other end.
    pub(crate) async fn connected(limit: usize) -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        // Wait until the socket is known writable, as a served connection's is after the
        // upgrade response went out.
        socket.writable().await.unwrap();
        let conn = Conn::new(1, Encoding::Json, Framing::WebSocket, limit, Some(socket));
        (conn, peer)
    }

    /// Reads `n` bytes from `peer`, or panics after 5 s.
    pub(crate) async fn read_exactly(peer: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut got))
            .await
            .expect("bytes in time")
            .unwrap();
        got
    }

    async fn nothing_to_read(peer: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_millis(100), peer.read(&mut byte))
            .await
            .is_err()
    }

    fn woken(conn: &Conn) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        conn.poll_woken(&mut cx).is_ready()
    }

    /// Fills the socket until it takes no more, with frames of `size` bytes; returns the
    /// frames handed over (the last ones queued).
    fn fill(conn: &Conn, size: usize) -> Vec<Bytes> {
        let mut frames = Vec::new();
        while !conn.has_frames() {
            let frame = Bytes::from(vec![frames.len() as u8; size]);
            assert!(conn.enqueue(frame.clone()));
            frames.push(frame);
        }
        frames
    }

    #[test]
    fn queue_over_limit_requests_slow_disconnect() {
        let c = conn(10);
        assert!(c.enqueue(Bytes::from_static(b"12345")));
        assert!(c.enqueue(Bytes::from_static(b"12345")));
        assert!(!c.enqueue(Bytes::from_static(b"1")));
        let work = c.take_work();
        assert_eq!(work.close.map(|d| d.code.get()), Some(3008));
        // After the close was taken, nothing more is queued.
        assert!(!c.enqueue(Bytes::from_static(b"1")));
    }

    #[tokio::test]
    async fn nothing_follows_a_frame_refused_over_the_bound() {
        let (conn, _peer) = connected(64).await;
        let filled = fill(&conn, 16);
        // Over the bound: refused, and a 3008 close requested.
        assert!(!conn.enqueue_queued(Bytes::from(vec![b'x'; 64])));
        // Small frames that would fit are refused too, through every path: had one gone out,
        // the client would see a publication after one it never got.
        assert!(!conn.enqueue(Bytes::from_static(b"n")));
        assert!(!conn.enqueue_queued(Bytes::from_static(b"n")));
        assert!(!conn.enqueue_all([Bytes::from_static(b"n")]));
        assert!(conn.is_closing());
        assert_eq!(conn.take_work().close.map(|d| d.code.get()), Some(3008));
        // The queue still ends with (the rest of) the last frame handed over before the
        // refused one.
        let queued = conn.take_queued();
        let (Some(last), Some(handed)) = (queued.last(), filled.last()) else {
            panic!("frames were queued");
        };
        assert!(handed.ends_with(last));
    }

    #[tokio::test]
    async fn a_frame_for_an_idle_connection_is_written_at_once_without_waking_the_driver() {
        let (conn, mut peer) = connected(1 << 20).await;
        assert!(conn.enqueue(Bytes::from_static(b"ping")));
        assert!(conn.enqueue_all([Bytes::from_static(b"a"), Bytes::from_static(b"bc")]));
        assert_eq!(read_exactly(&mut peer, 7).await, b"pingabc");
        assert!(!conn.has_frames());
        assert!(!woken(&conn), "nothing was left for the driver");
        assert_eq!(conn.inner.lock().queue.capacity(), 0);
    }

    #[tokio::test]
    async fn frames_queue_behind_a_full_socket_and_leave_whole_and_in_order() {
        let (conn, mut peer) = connected(64 << 20).await;
        let mut frames = fill(&conn, 64 * 1024);
        assert!(
            woken(&conn),
            "the driver must finish what the socket did not take"
        );
        // Behind the queued ones, small frames are queued too, never written ahead.
        for tail in [b"x".as_slice(), b"yz"] {
            assert!(conn.enqueue(Bytes::copy_from_slice(tail)));
            frames.push(Bytes::copy_from_slice(tail));
        }
        assert!(conn.has_frames());
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let reader = tokio::spawn(async move { read_exactly(&mut peer, expected.len()).await });
        // What the driver does: flush whenever the socket is writable again.
        let socket = conn.socket().unwrap();
        while !conn.flush().unwrap() {
            socket.writable().await.unwrap();
        }
        let got = reader.await.unwrap();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        assert!(got == expected, "bytes arrive as handed over");
        let inner = conn.inner.lock();
        assert_eq!((inner.queued_bytes, inner.queue.capacity()), (0, 0));
    }

    #[tokio::test]
    async fn the_rest_of_a_partly_written_frame_is_queued_even_over_the_bound() {
        let (conn, mut peer) = connected(1024).await;
        // Far more than the socket takes at once, and than the queue's bound.
        let frame = Bytes::from((0..8 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        assert!(
            conn.enqueue(frame.clone()),
            "part of it is on the wire already"
        );
        assert!(conn.inner.lock().head_partial);
        // Anything more is over the bound: a slow consumer.
        assert!(!conn.enqueue(Bytes::from_static(b"more")));
        let len = frame.len();
        let reader = tokio::spawn(async move { read_exactly(&mut peer, len).await });
        let socket = conn.socket().unwrap();
        while !conn.flush().unwrap() {
            socket.writable().await.unwrap();
        }
        assert!(
            reader.await.unwrap() == frame[..],
            "the whole frame, never cut"
        );
        assert_eq!(conn.take_work().close.map(|d| d.code.get()), Some(3008));
    }

    #[tokio::test]
    async fn a_queued_frame_waits_for_the_driver_and_keeps_its_place() {
        let (conn, mut peer) = connected(1 << 20).await;
        assert!(conn.enqueue_queued(Bytes::from_static(b"one ")));
        assert!(woken(&conn), "the driver writes it");
        // A frame handed over directly meanwhile goes behind it, not ahead.
        assert!(conn.enqueue(Bytes::from_static(b"two")));
        assert!(
            nothing_to_read(&mut peer).await,
            "nothing before the driver writes"
        );
        assert!(conn.flush().unwrap());
        assert_eq!(read_exactly(&mut peer, 7).await, b"one two");
    }

    #[tokio::test]
    async fn during_a_command_frames_flow_until_the_reply_then_wait_behind_it() {
        let (conn, mut peer) = connected(1 << 20).await;
        conn.hold(false);
        assert!(conn.enqueue(Bytes::from_static(b"pub1 ")));
        assert_eq!(
            read_exactly(&mut peer, 5).await,
            b"pub1 ",
            "before any reply"
        );
        assert!(conn.enqueue_reply(Bytes::from_static(b"reply ")));
        assert!(conn.enqueue(Bytes::from_static(b"pub2")));
        assert!(
            nothing_to_read(&mut peer).await,
            "the reply waits for the command"
        );
        assert!(conn.flush().unwrap(), "held: nothing to write yet");
        assert!(nothing_to_read(&mut peer).await);
        conn.release();
        assert!(conn.flush().unwrap());
        assert_eq!(read_exactly(&mut peer, 10).await, b"reply pub2");
        // Until connected, nothing goes ahead of the connect reply.
        conn.hold(true);
        assert!(conn.enqueue(Bytes::from_static(b"ping")));
        assert!(nothing_to_read(&mut peer).await);
        conn.release();
        assert!(conn.flush().unwrap());
        assert_eq!(read_exactly(&mut peer, 4).await, b"ping");
    }

    #[tokio::test]
    async fn frames_queued_before_the_reply_still_drain_while_it_is_held() {
        let (conn, mut peer) = connected(64 << 20).await;
        conn.hold(false);
        let frames = fill(&conn, 64 * 1024);
        assert!(conn.enqueue_reply(Bytes::from_static(b"reply")));
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let len = expected.len();
        let reader = tokio::spawn(async move {
            let got = read_exactly(&mut peer, len).await;
            (got, peer)
        });
        let socket = conn.socket().unwrap();
        while !conn.flush().unwrap() {
            socket.writable().await.unwrap();
        }
        let (got, mut peer) = reader.await.unwrap();
        assert!(got == expected, "everything handed over before the reply");
        assert!(conn.has_frames(), "the reply is still held");
        assert!(nothing_to_read(&mut peer).await);
        conn.release();
        assert!(conn.flush().unwrap());
        assert_eq!(read_exactly(&mut peer, 5).await, b"reply");
    }

    #[tokio::test]
    async fn closing_keeps_the_rest_of_a_partly_written_frame_then_the_goodbye() {
        let (conn, mut peer) = connected(64 << 20).await;
        let frames = fill(&conn, 64 * 1024);
        assert!(conn.enqueue(Bytes::from_static(b"dropped")));
        let head_partial = conn.inner.lock().head_partial;
        conn.finish_queue(true, Some(Bytes::from_static(b"bye")));
        assert!(!conn.enqueue(Bytes::from_static(b"late")), "closing");
        assert!(!conn.enqueue_queued(Bytes::from_static(b"late")), "closing");
        // Written before: every frame but the last, and part of the last when it was split.
        let last = frames.last().unwrap();
        let whole: usize = frames[..frames.len() - 1].iter().map(Bytes::len).sum();
        let queued = conn.inner.lock().queue.front().map_or(0, Bytes::len);
        let rest = if head_partial { queued } else { 0 };
        let first_part = if head_partial { last.len() - rest } else { 0 };
        let total = whole + first_part + rest + 3;
        let reader = tokio::spawn(async move { read_exactly(&mut peer, total).await });
        let socket = conn.socket().unwrap();
        while !conn.flush().unwrap() {
            socket.writable().await.unwrap();
        }
        let got = reader.await.unwrap();
        let mut expected: Vec<u8> = frames[..frames.len() - 1]
            .iter()
            .flat_map(|f| f.iter().copied())
            .collect();
        if head_partial {
            expected.extend_from_slice(last);
        }
        expected.extend_from_slice(b"bye");
        assert!(got == expected, "whole frames, then the goodbye");
    }
}
