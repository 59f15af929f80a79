//! The per-connection driver: owns the upgraded socket and the session, and moves bytes.
//!
//! It waits for one of three things — the socket is readable, the socket is writable while
//! frames are pending, or the connection's handle was woken (frames queued, a control
//! message, a close request) — and never holds a buffer while idle: reads go into a
//! per-thread scratch buffer and only a partial frame is kept, inside the [`WsReader`].
//! Outbound frames are shared `Bytes` drained from the handle in batches and written with
//! one vectored write.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tether_proto::codes::DisconnectCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

use super::ws::{self, Opcode, WsEvent, WsLimits, WsReader};
use crate::hub::{ConnHandle, Disconnect};
use crate::server::Node;
use crate::session::Session;

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

struct Driver {
    node: Arc<Node>,
    conn: ConnHandle,
    stream: TcpStream,
    session: Session,
    reader: WsReader,
    limits: WsLimits,
    /// Frames taken from the queue and not yet fully written; `offset` bytes of the first
    /// are already on the wire.
    out: Vec<Bytes>,
    offset: usize,
}

/// Serves an upgraded WebSocket until it ends, then cleans up the session.
pub(super) async fn run(node: Arc<Node>, stream: TcpStream, conn: ConnHandle, leftover: Vec<u8>) {
    let now = node.now();
    let stale = node.config.client.stale_close_delay.as_millis() as u64;
    conn.with_heartbeat(|hb| hb.stale_at = now.ms + stale.max(1));
    let limits = WsLimits {
        max_message_size: node.config.websocket.message_size_limit,
    };
    let mut driver = Driver {
        session: Session::new(conn.clone()),
        node,
        conn,
        stream,
        reader: WsReader::default(),
        limits,
        out: Vec::new(),
        offset: 0,
    };
    let end = driver.serve(&leftover).await;
    drop(leftover);
    driver.finish(end).await;
}

impl Driver {
    async fn serve(&mut self, leftover: &[u8]) -> End {
        if !leftover.is_empty()
            && let Err(end) = self.on_bytes(leftover).await
        {
            return end;
        }
        loop {
            if let Err(end) = self.apply_work().await {
                return end;
            }
            if let Err(error) = self.flush() {
                return End::Io(error);
            }
            let want_write = !self.out.is_empty();
            let conn = self.conn.clone();
            let event = tokio::select! {
                () = conn.notified() => Wake::Handle,
                ready = self.stream.readable() => Wake::Readable(ready),
                ready = self.stream.writable(), if want_write => Wake::Writable(ready),
            };
            match event {
                Wake::Handle | Wake::Writable(Ok(())) => {}
                Wake::Readable(Ok(())) => {
                    if let Err(end) = self.read().await {
                        return end;
                    }
                }
                Wake::Readable(Err(error)) | Wake::Writable(Err(error)) => return End::Io(error),
            }
        }
    }

    /// Applies control messages and close requests posted to the handle.
    async fn apply_work(&mut self) -> Result<(), End> {
        let work = self.conn.take_work();
        if let Some(disconnect) = work.close {
            return Err(End::Disconnect(disconnect));
        }
        for control in work.controls {
            let now = self.node.now();
            self.session
                .handle_control(&self.node, control, now)
                .await
                .map_err(End::Disconnect)?;
        }
        Ok(())
    }

    /// Reads what the socket has into the scratch buffer and handles every complete event.
    async fn read(&mut self) -> Result<(), End> {
        let mut events = Vec::new();
        for _ in 0..MAX_READS_PER_WAKE {
            let read = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                match self.stream.try_read(&mut scratch[..]) {
                    Ok(0) => Err(End::PeerGone),
                    Ok(n) => self
                        .reader
                        .feed(&scratch[..n], &self.limits, &mut events)
                        .map(|()| n)
                        .map_err(|error| {
                            End::Disconnect(Disconnect {
                                code: error.close_code(),
                                reason: error.to_string(),
                            })
                        }),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    Err(error) => Err(End::Io(error)),
                }
            });
            // Events decoded before an error are still handled, in order.
            for event in events.drain(..) {
                self.on_event(event).await?;
            }
            if read? < SCRATCH_SIZE {
                break;
            }
        }
        Ok(())
    }

    async fn on_bytes(&mut self, bytes: &[u8]) -> Result<(), End> {
        let mut events = Vec::new();
        let fed = self.reader.feed(bytes, &self.limits, &mut events);
        for event in events {
            self.on_event(event).await?;
        }
        fed.map_err(|error| {
            End::Disconnect(Disconnect {
                code: error.close_code(),
                reason: error.to_string(),
            })
        })
    }

    async fn on_event(&mut self, event: WsEvent) -> Result<(), End> {
        match event {
            WsEvent::Message { payload, .. } => {
                let commands = self
                    .conn
                    .encoding
                    .decode_commands(&payload)
                    .map_err(|_| End::Disconnect(DisconnectCode::BAD_REQUEST.into()))?;
                let now = self.node.now();
                self.session
                    .handle_commands(&self.node, commands, now)
                    .await
                    .map_err(End::Disconnect)
            }
            WsEvent::Ping(payload) => {
                let mut frame = BytesMut::with_capacity(payload.len() + 2);
                ws::encode_frame(Opcode::Pong, &payload, &mut frame);
                self.conn.enqueue(frame.freeze());
                Ok(())
            }
            WsEvent::Pong(_) => Ok(()),
            WsEvent::Close { code, .. } => Err(End::PeerClose(code)),
        }
    }

    /// Writes queued frames until the socket would block or nothing is left.
    fn flush(&mut self) -> io::Result<()> {
        loop {
            if self.out.is_empty() {
                self.conn.drain_frames(&mut self.out, MAX_BATCH);
                if self.out.is_empty() {
                    if self.out.capacity() > MAX_BATCH {
                        self.out = Vec::new();
                    }
                    return Ok(());
                }
            }
            let slices: Vec<IoSlice<'_>> = self
                .out
                .iter()
                .enumerate()
                .map(|(i, frame)| IoSlice::new(if i == 0 { &frame[self.offset..] } else { frame }))
                .collect();
            match self.stream.try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.advance(n),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) => return Err(error),
            }
        }
    }

    fn advance(&mut self, mut written: usize) {
        let mut done = 0;
        for frame in &self.out {
            let left = frame.len() - self.offset;
            if written >= left {
                written -= left;
                done += 1;
                self.offset = 0;
            } else {
                self.offset += written;
                break;
            }
        }
        self.out.drain(..done);
    }

    /// Sends what is owed (replies before the close, then the close frame) and cleans up.
    async fn finish(mut self, end: End) {
        let client = self.conn.client.clone();
        match end {
            End::Disconnect(disconnect) => {
                debug!(%client, code = disconnect.code, reason = %disconnect.reason, "closing connection");
                let close = ws::encode_close(disconnect.code, &disconnect.reason);
                let slow = disconnect.code == DisconnectCode::SLOW.code;
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.write_rest(slow, close)).await;
            }
            End::PeerClose(code) => {
                debug!(%client, ?code, "client closed the connection");
                let close = ws::encode_close(code.unwrap_or(NORMAL_CLOSURE), "");
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.write_rest(true, close)).await;
            }
            End::PeerGone => debug!(%client, "peer went away"),
            End::Io(error) => debug!(%client, %error, "connection failed"),
        }
        self.session.close(&self.node).await;
    }

    async fn write_rest(&mut self, drop_queued: bool, close: Bytes) {
        if !drop_queued {
            loop {
                if self.out.is_empty() {
                    self.conn.drain_frames(&mut self.out, MAX_BATCH);
                    if self.out.is_empty() {
                        break;
                    }
                }
                let first = self.out.remove(0);
                if self.stream.write_all(&first[self.offset..]).await.is_err() {
                    return;
                }
                self.offset = 0;
            }
        } else if self.offset > 0 {
            // Finish the frame that is half on the wire so the close frame parses.
            let first = self.out.remove(0);
            if self.stream.write_all(&first[self.offset..]).await.is_err() {
                return;
            }
        }
        if self.stream.write_all(&close).await.is_ok() {
            let _ = self.stream.shutdown().await;
        }
    }
}

enum Wake {
    Handle,
    Readable(io::Result<()>),
    Writable(io::Result<()>),
}

thread_local! {
    /// Per-worker read buffer: connections read into it and keep only partial frames.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// Size of the per-worker read buffer.
const SCRATCH_SIZE: usize = 64 * 1024;
/// Reads per wake before yielding to other connections.
const MAX_READS_PER_WAKE: usize = 4;
/// Frames per vectored write (well under IOV_MAX).
const MAX_BATCH: usize = 64;
/// How long a closing connection may take to flush and send its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// WebSocket close code 1000.
const NORMAL_CLOSURE: u16 = 1000;
