//! The per-connection driver: owns the socket and the session, and moves bytes, for both
//! framings — an upgraded WebSocket and the raw TCP stream of varint-delimited Protobuf.
//!
//! It waits for one of three things — the socket is readable, the socket is writable while
//! frames are pending, or the connection's handle was woken (frames queued, a control
//! message, a close request) — in one hand-polled wait ([`Driver::poll_wake`]), so the
//! state an idle connection's task keeps is little more than the [`Driver`] itself: the work
//! done on a wake and the close sequence run in boxed futures. It never holds a buffer while
//! idle: reads go into a
//! per-thread scratch buffer and only a partial frame is kept (inside the [`WsReader`], or
//! the partial delimited command of a TCP connection). Outbound frames are shared `Bytes`
//! written by the handle ([`crate::hub::Conn`]): at once when the socket takes them, and
//! otherwise queued there and flushed by the driver, with vectored writes, when the socket
//! is writable again.
//!
//! The framings differ only at the edges, in [`Wire`]: how inbound bytes become commands,
//! and how a close is said (a WebSocket close frame, or on TCP a `Disconnect` push followed
//! by closing the socket).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue};
use tether_proto::codes::DisconnectCode;
use tether_proto::decode_delimited_command;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tracing::debug;

use super::limits::Slot;
use crate::hub::{ConnHandle, Control};
use crate::metrics::TransportKind;
use crate::node::Node;
use crate::session::Session;
use crate::wire::ws::{self, Opcode, WsEvent, WsLimits, WsReader};
use crate::wire::{CloseCode, Disconnect, Framing};

/// How a connection's serving loop ended.
#[derive(Debug)]
enum End {
    /// The peer closed the TCP connection.
    PeerGone,
    /// The peer sent a close frame (with this code, if any).
    PeerClose(Option<u16>),
    /// We close the connection with this code.
    Disconnect(Disconnect),
    /// Reading or writing failed.
    Io(io::Error),
}

/// A connection's framing and its inbound parser state.
#[derive(Debug)]
pub(super) enum Wire {
    /// RFC 6455 frames after an HTTP upgrade.
    WebSocket {
        /// Parser state; holds only a partial frame. (Its size limit is read from the
        /// node's config on each read rather than kept here.)
        reader: WsReader,
    },
    /// Raw TCP: uvarint-length-delimited Protobuf commands.
    Tcp {
        /// Bytes of an incomplete command; empty without capacity between commands, so an
        /// idle connection holds no buffer.
        partial: BytesMut,
        /// Largest accepted command body; a longer announced length disconnects (1009)
        /// before the body is buffered.
        max_message_size: usize,
    },
}

impl Wire {
    /// WebSocket framing.
    pub(super) fn websocket() -> Self {
        Self::WebSocket {
            reader: WsReader::default(),
        }
    }

    /// Raw TCP framing; commands share the WebSocket message size limit.
    pub(super) fn tcp(node: &Node) -> Self {
        Self::Tcp {
            partial: BytesMut::new(),
            max_message_size: node.config.websocket.message_size_limit,
        }
    }

    /// The bytes that tell the peer the connection ends with `disconnect`.
    fn close_bytes(&self, disconnect: &Disconnect) -> Bytes {
        let framing = match self {
            Self::WebSocket { .. } => Framing::WebSocket,
            Self::Tcp { .. } => Framing::Tcp,
        };
        crate::wire::close_bytes(framing, disconnect)
    }
}

/// One connection being served: the socket, the session and what is owed to the peer.
#[derive(Debug)]
pub(super) struct Driver {
    node: Arc<Node>,
    /// The session; it holds the connection's handle ([`Session::conn`]), which holds the
    /// socket.
    session: Session,
    wire: Wire,
    /// The connection's admission slot, released when the driver is dropped.
    _slot: Slot,
}

/// A connection ready to be served: accepted, admitted and registered.
#[derive(Debug)]
pub(super) struct Accepted {
    /// The registered handle, which holds the socket.
    pub(super) conn: ConnHandle,
    pub(super) wire: Wire,
    /// The connection's admission slot, released when serving ends.
    pub(super) slot: Slot,
    /// Headers of its request that a backend proxy forwards (none for raw TCP).
    pub(super) forward: Vec<(HeaderName, HeaderValue)>,
}

impl Driver {
    /// Takes charge of an accepted connection: counts it open and starts its connect
    /// deadline.
    pub(super) fn new(node: Arc<Node>, accepted: Accepted) -> Self {
        let Accepted {
            conn,
            wire,
            slot,
            forward,
        } = accepted;
        tracing::Span::current().record("client", tracing::field::display(&conn.client));
        let now = node.now();
        let stale = node.config.client.stale_close_delay.as_millis() as u64;
        conn.with_heartbeat(|hb| hb.stale_at = now.ms + stale.max(1));
        let driver = Self {
            session: Session::new(conn, forward),
            node,
            wire,
            _slot: slot,
        };
        driver.open_gauge().increment(1.0);
        driver
    }

    /// The WebSocket message limits, from the node's config.
    fn ws_limits(&self) -> WsLimits {
        WsLimits {
            max_message_size: self.node.config.websocket.message_size_limit,
        }
    }

    /// The node's gauge of open connections of this one's transport and encoding. Looked
    /// up rather than kept: a gauge handle in every connection's state costs 16 bytes each.
    fn open_gauge(&self) -> &metrics::Gauge {
        let conn = self.session.conn();
        let transport = match conn.framing {
            Framing::WebSocket => TransportKind::WebSocket,
            Framing::Tcp => TransportKind::Tcp,
        };
        self.node
            .metrics
            .connections(transport, conn.encoding == tether_proto::Encoding::Protobuf)
    }

    /// Handles bytes that arrived right behind the HTTP upgrade request. Called from the
    /// handshake's (boxed, short-lived) future so the long-lived one never holds them.
    /// Returns false when they ended the connection (it is then closed and cleaned up).
    pub(super) async fn feed_leftover(&mut self, leftover: &[u8]) -> bool {
        let fed = Held::new(self.holding(), Box::pin(self.on_bytes(leftover))).await;
        match fed {
            Ok(()) => true,
            Err(end) => {
                self.close(end).await;
                false
            }
        }
    }

    /// Serves the connection until it ends, then cleans up the session.
    ///
    /// The future lives as long as the connection, inside its task. Taking `&mut self`
    /// (the caller's future owns the driver) keeps one copy of the driver in it, and the
    /// wait for the next event is hand-polled, so an idle connection's task holds little
    /// more than the driver: the work done on a wake and the close sequence run in boxed
    /// futures.
    pub(super) async fn run(&mut self) {
        let end = self.serve().await;
        self.close(end).await;
    }

    /// Says goodbye to the peer as `end` requires and cleans up.
    async fn close(&mut self, end: End) {
        Box::pin(self.finish(end)).await;
    }

    async fn serve(&mut self) -> End {
        loop {
            // Control messages are rare: only then is a (boxed) future built for them.
            match self.take_work() {
                Ok(None) => {}
                Ok(Some(controls)) => {
                    let holding = self.holding();
                    let applied = Held::new(holding, Box::pin(self.apply_controls(controls))).await;
                    if let Err(end) = applied {
                        return end;
                    }
                }
                Err(end) => return end,
            }
            let want_write = match self.session.conn().flush() {
                Ok(flushed) => !flushed,
                Err(error) => return End::Io(error),
            };
            match std::future::poll_fn(|cx| self.poll_wake(cx, want_write)).await {
                Ok(true) => {
                    // Most wakes of an idle connection bring a pong: read and answer it
                    // here, and build the (boxed) future that handles input only when
                    // something else came.
                    let mut events = Vec::new();
                    let read = self.read_once(&mut events);
                    self.take_pongs(&mut events);
                    if events.is_empty()
                        && !self.tcp_pending()
                        && matches!(read, Ok(n) if n < SCRATCH_SIZE)
                    {
                        continue;
                    }
                    // Boxed: handling input reaches into the session and the engine; inline
                    // its state would size every idle connection's task.
                    let holding = self.holding();
                    let handled =
                        Held::new(holding, Box::pin(self.handle_input(events, read))).await;
                    if let Err(end) = handled {
                        return end;
                    }
                }
                Ok(false) => {}
                Err(error) => return End::Io(error),
            }
        }
    }

    /// What [`Held`] needs to hold the handle's frames while the session works: the handle,
    /// and whether to hold from the start (before the connect reply nothing may overtake it).
    fn holding(&self) -> (ConnHandle, bool) {
        (self.session.conn().clone(), !self.session.is_connected())
    }

    /// The one place a connection waits: ready when the handle was woken (frames queued,
    /// a control message, a close request), the socket is readable, or it is writable while
    /// frames are pending. Every source is polled on every call, so none starves another;
    /// the result says whether the socket is readable.
    fn poll_wake(&self, cx: &mut Context<'_>, want_write: bool) -> Poll<io::Result<bool>> {
        let conn = self.session.conn();
        let woken = conn.poll_woken(cx).is_ready();
        let stream = conn.socket()?;
        let readable = match stream.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => false,
        };
        let writable = want_write
            && match stream.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => false,
            };
        if woken || readable || writable {
            Poll::Ready(Ok(readable))
        } else {
            Poll::Pending
        }
    }

    /// Takes what was posted to the handle: a close request ends the connection, control
    /// messages are returned to be applied. Not async, so nothing of it stays in the
    /// connection's future: applying controls runs in a boxed future, because the
    /// session's futures reach into the engine and are large (as for input).
    fn take_work(&self) -> Result<Option<Vec<Control>>, End> {
        let work = self.session.conn().take_work();
        if let Some(disconnect) = work.close {
            return Err(End::Disconnect(disconnect));
        }
        Ok((!work.controls.is_empty()).then_some(work.controls))
    }

    async fn apply_controls(&mut self, controls: Vec<Control>) -> Result<(), End> {
        for control in controls {
            let now = self.node.now();
            self.session
                .handle_control(&self.node, control, now)
                .await
                .map_err(End::Disconnect)?;
        }
        Ok(())
    }

    /// Handles what one read brought (`events`, or the TCP connection's buffered commands,
    /// and how the read went), then goes on reading while reads fill the scratch buffer.
    async fn handle_input(
        &mut self,
        mut events: Vec<WsEvent>,
        mut read: Result<usize, End>,
    ) -> Result<(), End> {
        for _ in 0..MAX_READS_PER_WAKE {
            // Events decoded before an error are still handled, in order.
            for event in events.drain(..) {
                self.on_event(event).await?;
            }
            self.on_tcp_commands().await?;
            if read? < SCRATCH_SIZE {
                break;
            }
            read = self.read_once(&mut events);
        }
        Ok(())
    }

    /// Reads what the socket has into the scratch buffer once: a WebSocket's complete
    /// events go to `events`, a TCP connection's bytes to its partial buffer. Returns the
    /// bytes read (0 when there was nothing).
    fn read_once(&mut self, events: &mut Vec<WsEvent>) -> Result<usize, End> {
        let limits = self.ws_limits();
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let stream = self.session.conn().socket().map_err(End::Io)?;
            match read_draining(stream, &mut scratch[..]) {
                Ok(0) => Err(End::PeerGone),
                Ok(n) => match &mut self.wire {
                    Wire::WebSocket { reader } => reader
                        .feed(&scratch[..n], &limits, events)
                        .map(|()| n)
                        .map_err(|error| End::Disconnect(Disconnect::from(&error))),
                    Wire::Tcp { partial, .. } => {
                        partial.extend_from_slice(&scratch[..n]);
                        Ok(n)
                    }
                },
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(error) => Err(End::Io(error)),
            }
        })
    }

    /// Answers pongs (an empty command: `{}` in JSON, a zero length in Protobuf) without
    /// the session's command path, when they are all a read brought: a WebSocket message
    /// that is exactly one pong, or a TCP buffer of nothing but pongs. Anything else is left
    /// for the session, in order.
    fn take_pongs(&mut self, events: &mut Vec<WsEvent>) {
        if !self.session.is_connected() {
            // The session refuses a pong before the connect reply.
            return;
        }
        let pong: &[u8] = match self.session.conn().encoding {
            tether_proto::Encoding::Json => b"{}",
            tether_proto::Encoding::Protobuf => &[0],
        };
        match &mut self.wire {
            Wire::WebSocket { .. } => {
                if let [WsEvent::Message { payload, .. }] = events.as_slice()
                    && payload[..] == *pong
                {
                    events.clear();
                    self.session.on_pong();
                }
            }
            Wire::Tcp { partial, .. } => {
                if !partial.is_empty() && partial.iter().all(|&b| b == 0) {
                    *partial = BytesMut::new();
                    self.session.on_pong();
                }
            }
        }
    }

    /// True when a TCP connection has buffered bytes to decode.
    fn tcp_pending(&self) -> bool {
        matches!(&self.wire, Wire::Tcp { partial, .. } if !partial.is_empty())
    }

    /// Decodes and handles the complete commands of a TCP connection one at a time (a read
    /// of 1-byte pongs would inflate a lot if decoded all at once), keeping only a partial
    /// command's bytes.
    async fn on_tcp_commands(&mut self) -> Result<(), End> {
        let Wire::Tcp {
            partial,
            max_message_size,
        } = &mut self.wire
        else {
            return Ok(());
        };
        loop {
            let command = match decode_delimited_command(partial, *max_message_size) {
                Ok(Some(command)) => command,
                Ok(None) => break,
                Err(tether_proto::DecodeError::TooLarge { .. }) => {
                    return Err(End::Disconnect(Disconnect {
                        code: CloseCode::new(MESSAGE_TOO_BIG),
                        reason: "message too big".to_owned(),
                    }));
                }
                Err(_) => return Err(End::Disconnect(DisconnectCode::BAD_REQUEST.into())),
            };
            let now = self.node.now();
            self.session
                .handle_command(&self.node, command, now)
                .await
                .map_err(End::Disconnect)?;
        }
        if partial.is_empty() {
            // Give back the read buffer: an idle connection holds none.
            *partial = BytesMut::new();
        }
        Ok(())
    }

    async fn on_bytes(&mut self, bytes: &[u8]) -> Result<(), End> {
        let limits = self.ws_limits();
        let Wire::WebSocket { reader } = &mut self.wire else {
            return Ok(());
        };
        let mut events = Vec::new();
        let fed = reader.feed(bytes, &limits, &mut events);
        for event in events {
            self.on_event(event).await?;
        }
        fed.map_err(|error| End::Disconnect(Disconnect::from(&error)))
    }

    async fn on_event(&mut self, event: WsEvent) -> Result<(), End> {
        match event {
            WsEvent::Message { payload, .. } => {
                // As Centrifugo, the frame's type is not checked: a binary frame on a JSON
                // connection is read as JSON (the reference reads `_, data, err :=
                // conn.ReadMessage()`). An empty frame carries no command at all: 3501.
                if payload.is_empty() {
                    return Err(End::Disconnect(DisconnectCode::BAD_REQUEST.into()));
                }
                // One command decoded at a time: the commands before a malformed one are
                // handled (as the reference server does) before 3501, and a frame of pongs
                // never inflates into a vector of decoded commands.
                let encoding = self.session.conn().encoding;
                for command in encoding.iter_commands(&payload) {
                    let command =
                        command.map_err(|_| End::Disconnect(DisconnectCode::BAD_REQUEST.into()))?;
                    let now = self.node.now();
                    self.session
                        .handle_command(&self.node, command, now)
                        .await
                        .map_err(End::Disconnect)?;
                }
                Ok(())
            }
            WsEvent::Ping(payload) => {
                let mut frame = BytesMut::with_capacity(payload.len() + 2);
                ws::encode_frame(Opcode::Pong, &payload, &mut frame);
                self.session.conn().enqueue(frame.freeze());
                Ok(())
            }
            WsEvent::Pong(_) => Ok(()),
            WsEvent::Close { code, .. } => Err(End::PeerClose(code)),
        }
    }

    /// Sends what is owed (replies before the close, then the close frame) and cleans up.
    async fn finish(&mut self, end: End) {
        let client = self.session.conn().client;
        // The connection is over for the node from here on, as in the reference server
        // (which removes the client before closing the transport): its user's slot is free
        // before the goodbye is written, which may wait for a full socket, so a client told
        // to reconnect is not refused with 3504 meanwhile. (Unregistering again at the end
        // of the session's cleanup is a no-op.)
        let code = match &end {
            End::Disconnect(disconnect) => disconnect.code.get(),
            End::PeerClose(code) => code.unwrap_or(NO_STATUS_RECEIVED),
            End::PeerGone | End::Io(_) => ABNORMAL_CLOSURE,
        };
        // Reported before the hub lets the user go, so the backend hears the disconnect
        // before the user's offline.
        let (reason, reconnect) = match &end {
            End::Disconnect(disconnect) => (disconnect.reason.as_str(), reconnects(code)),
            // The client chose to close.
            End::PeerClose(_) => ("connection closed", false),
            // Lost: the client's SDK reconnects.
            End::PeerGone => ("connection lost", true),
            End::Io(_) => ("connection failed", true),
        };
        self.session.ended(&self.node, code, reason, reconnect);
        self.node.hub.unregister(self.session.conn());
        let metrics = &self.node.metrics;
        metrics.disconnected(code);
        if let End::Disconnect(disconnect) = &end {
            if disconnect.is(DisconnectCode::SLOW) {
                metrics.slow_consumers.increment(1);
            } else if disconnect.is(DisconnectCode::NO_PONG) {
                metrics.heartbeat_timeouts.increment(1);
            }
        }
        match end {
            End::Disconnect(disconnect) => {
                debug!(%client, code = disconnect.code.get(), reason = %disconnect.reason, "closing connection");
                let close = self.wire.close_bytes(&disconnect);
                let slow = disconnect.is(DisconnectCode::SLOW);
                self.session.conn().finish_queue(slow, Some(close));
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.write_rest()).await;
            }
            End::PeerClose(code) => {
                debug!(%client, ?code, "client closed the connection");
                let close = ws::encode_close(code.unwrap_or(NORMAL_CLOSURE), "");
                self.session.conn().finish_queue(true, Some(close));
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.write_rest()).await;
            }
            End::PeerGone => {
                debug!(%client, "peer went away");
                self.session.conn().finish_queue(true, None);
            }
            End::Io(error) => {
                debug!(%client, %error, "connection failed");
                self.session.conn().finish_queue(true, None);
            }
        }
        Box::pin(self.session.close(&self.node)).await;
    }

    /// Writes what [`Conn::finish_queue`](crate::hub::Conn::finish_queue) left queued
    /// (ending with the goodbye), then shuts the socket's sending side.
    async fn write_rest(&self) {
        let conn = self.session.conn();
        let Ok(socket) = conn.socket() else {
            return;
        };
        loop {
            match conn.flush() {
                Ok(true) => break,
                Ok(false) => {
                    if socket.writable().await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
    }
}

impl Drop for Driver {
    /// Counts the connection closed and, should its task have ended without the close
    /// sequence (a panic in it, or the task dropped), still takes it out of the hub and the
    /// engine: a connection nobody serves must not stay subscribed with its socket open.
    fn drop(&mut self) {
        self.session.close_abandoned(&self.node);
        self.open_gauge().decrement(1.0);
    }
}

/// A command, control messages or the bytes behind the upgrade, run with the session's
/// replies held as [`crate::hub::Conn::hold`] describes; meanwhile, whenever the handle is
/// woken, what is queued and not held is written: a command waiting on a slow engine or key
/// server does not stall the connection's publications. After a write error nothing more
/// is written or waited for until the work is done: the driver's flush after it reports the
/// error. The handle is released when this is dropped.
///
/// A struct rather than an `async fn` wrapper: that would keep a second copy of the (large)
/// work future in its own state, and make each command's allocation twice as big.
struct Held<F> {
    work: Pin<Box<F>>,
    conn: ConnHandle,
    /// The last write left frames the socket did not take: wait for it to be writable too.
    blocked: bool,
    /// A write failed: the socket is broken, and retrying on every frame handed over would
    /// cost a system call each.
    failed: bool,
}

impl<F: Future> Held<F> {
    /// Starts holding `conn`'s replies (from the start when `from_start`), for `work`.
    fn new((conn, from_start): (ConnHandle, bool), work: Pin<Box<F>>) -> Self {
        conn.hold(from_start);
        Self {
            work,
            // Frames left over from before (the socket was full) go out when it drains.
            blocked: conn.has_frames(),
            failed: false,
            conn,
        }
    }
}

impl<F: Future> Future for Held<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if let Poll::Ready(out) = this.work.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        if this.failed {
            return Poll::Pending;
        }
        // Each pass registers for the next wake (and for writability while blocked); the
        // loop ends when neither has come.
        loop {
            let writable = this.blocked
                && this
                    .conn
                    .socket()
                    .is_ok_and(|socket| socket.poll_write_ready(cx).is_ready());
            if !(this.conn.poll_woken(cx).is_ready() || writable) {
                return Poll::Pending;
            }
            match this.conn.flush() {
                Ok(done) => this.blocked = !done,
                Err(_) => {
                    this.failed = true;
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<F> Drop for Held<F> {
    /// Releases the handle: when the command is done and, should its task be torn down
    /// first, then too.
    fn drop(&mut self) {
        self.conn.release();
    }
}

/// Reads what the socket has into `buf`. A read that fills less than `buf` drained the
/// socket, so it also clears the socket's read readiness (as tokio's own `poll_read` does):
/// the next wait then sleeps until new bytes arrive, instead of waking once more for a
/// `recv` that can only say it would block. That second `recv` was a third of the system
/// calls of a heartbeat round trip. Readiness that arrived during the read is kept: tokio
/// clears only the readiness the read was started under.
fn read_draining(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let len = buf.len();
    let mut got = 0;
    let read = stream.try_io(Interest::READABLE, || {
        got = stream.try_read(buf)?;
        if got > 0 && got < len {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    match read {
        Err(error) if error.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        Err(error) => Err(error),
        Ok(()) => Ok(got),
    }
}

thread_local! {
    /// Per-worker read buffer: connections read into it and keep only partial frames.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// Size of the per-worker read buffer.
const SCRATCH_SIZE: usize = 64 * 1024;
/// Reads per wake before yielding to other connections.
const MAX_READS_PER_WAKE: usize = 4;
/// How long a closing connection may take to flush and send its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Close code counted when the peer's close frame had no code (RFC 6455 1005).
const NO_STATUS_RECEIVED: u16 = 1005;

/// Whether a client told `code` reconnects, as the protocol's ranges say: 3000-3499 and
/// 4000-4499 reconnect, 3500-3999 and 4500-4999 do not; other (WebSocket) codes do.
fn reconnects(code: u16) -> bool {
    !matches!(code, 3500..=3999 | 4500..=4999)
}
/// Close code counted when the connection dropped without a close (RFC 6455 1006).
const ABNORMAL_CLOSURE: u16 = 1006;
/// WebSocket close code 1000.
const NORMAL_CLOSURE: u16 = 1000;
/// Close code for an oversized message (WebSocket 1009); TCP uses it in its disconnect push.
const MESSAGE_TOO_BIG: u16 = 1009;

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::hub::conn::tests::{connected, read_exactly};

    /// Whether the socket's cached read readiness is set (polled once, never waits).
    fn read_ready(stream: &TcpStream) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        stream.poll_read_ready(&mut cx).is_ready()
    }

    async fn wait_readable(stream: &TcpStream) {
        stream.readable().await.expect("readable");
    }

    #[tokio::test]
    async fn a_short_read_clears_read_readiness_and_new_bytes_set_it_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];

        peer.write_all(b"abc").await.unwrap();
        wait_readable(&stream).await;
        assert_eq!(read_draining(&stream, &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        assert!(!read_ready(&stream), "a short read drained the socket");

        peer.write_all(b"de").await.unwrap();
        wait_readable(&stream).await;
        assert_eq!(read_draining(&stream, &mut buf).unwrap(), 2);

        // A read that fills the buffer cannot tell whether more is waiting: readiness stays
        // and the rest is read on the next try.
        peer.write_all(&[7; 100]).await.unwrap();
        let mut got = 0;
        while got < 100 {
            wait_readable(&stream).await;
            let n = read_draining(&stream, &mut buf).unwrap();
            if n == buf.len() {
                assert!(read_ready(&stream), "a full read keeps readiness");
            }
            got += n;
        }
        assert_eq!(got, 100);
        assert!(!read_ready(&stream));

        drop(peer);
        wait_readable(&stream).await;
        assert_eq!(
            read_draining(&stream, &mut buf).unwrap(),
            0,
            "end of stream"
        );
    }

    #[tokio::test]
    async fn while_a_command_waits_queued_frames_drain_and_its_reply_waits() {
        let (conn, mut peer) = connected(64 << 20).await;
        let conn = Arc::new(conn);
        // More than the socket takes: the rest is queued when the command starts.
        let mut sent = Vec::new();
        while !conn.has_frames() {
            let frame = Bytes::from(vec![sent.len() as u8; 64 * 1024]);
            assert!(conn.enqueue(frame.clone()));
            sent.push(frame);
        }
        // The driver's wait took the wake that queueing them gave.
        let _ = conn.poll_woken(&mut Context::from_waker(Waker::noop()));
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let command = Held::new(
            (conn.clone(), false),
            Box::pin(async move {
                let _ = finished.await;
            }),
        );
        let command = tokio::spawn(command);
        let expected: Vec<u8> = sent.iter().flat_map(|f| f.iter().copied()).collect();
        assert!(
            read_exactly(&mut peer, expected.len()).await == expected,
            "everything queued before the command, while it still waits"
        );
        // A publication during the command goes out at once; a reply waits for its end.
        assert!(conn.enqueue_queued(Bytes::from_static(b"pub ")));
        assert_eq!(read_exactly(&mut peer, 4).await, b"pub ");
        assert!(conn.enqueue_reply(Bytes::from_static(b"reply")));
        tokio::task::yield_now().await;
        assert!(conn.has_frames(), "held until the command is done");
        done.send(()).unwrap();
        command.await.unwrap();
        assert!(
            conn.flush().unwrap(),
            "the driver's flush after the command"
        );
        assert_eq!(read_exactly(&mut peer, 5).await, b"reply");
    }

    /// Counts the wakes of a task.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn after_a_write_error_a_waiting_command_writes_nothing_more_and_the_flush_reports_it() {
        let (conn, peer) = connected(64 << 20).await;
        let conn = Arc::new(conn);
        // The client is gone with a reset: every write to the socket now fails.
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(peer);
        conn.socket().unwrap().readable().await.unwrap();

        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let mut command = Held::new(
            (conn.clone(), false),
            Box::pin(async move {
                let _ = finished.await;
            }),
        );
        assert!(Pin::new(&mut command).poll(&mut cx).is_pending());
        for _ in 0..10 {
            assert!(conn.enqueue_queued(Bytes::from_static(b"pub")));
            assert!(Pin::new(&mut command).poll(&mut cx).is_pending());
        }
        assert_eq!(
            wakes.0.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "only the first frame, whose write failed, woke the command"
        );
        done.send(()).unwrap();
        assert!(Pin::new(&mut command).poll(&mut cx).is_ready());
        assert!(conn.flush().is_err(), "the driver's flush after it fails");
    }
}
