//! How fan-out hands frames to connections.
//!
//! Handing a publication to 15,000 connections one system call at a time would hold the
//! publisher (an API call, a broker's reader) for as long as the writes take, on one core;
//! waking 15,000 connection tasks to write their own costs a task poll each. Instead, for a
//! large fan-out the publisher only queues each frame on its connection
//! ([`Conn::enqueue_deferred`]) and collects the connections into chunks; each chunk is
//! written by a task of its own, so the runtime spreads the writing over every core, and a
//! connection whose frames piled up meanwhile (the next publication came before its chunk was
//! written) sends them in one vectored write. Order is kept by the connection's queue:
//! whoever writes, writes from its head, under its lock.
//!
//! A small fan-out is written by the publisher itself ([`Conn::enqueue`]): for a handful of
//! connections a task would cost more than the writes.

use bytes::Bytes;
use tokio::runtime::Handle;

use super::conn::{ConnHandle, Deferred};

/// Hands one fan-out's frames to its connections.
pub(super) struct Handover<'a> {
    /// Where chunk tasks run; `None` when the caller writes everything itself (a small
    /// fan-out, or a hub without a runtime).
    runtime: Option<&'a Handle>,
    /// Connections whose queue a chunk task is to write.
    chunk: Vec<ConnHandle>,
    /// Frames handed over (queued or written).
    delivered: u64,
}

impl<'a> Handover<'a> {
    /// A handover for a fan-out to `fanout` connections.
    pub(super) fn new(runtime: Option<&'a Handle>, fanout: usize) -> Self {
        Self {
            runtime: runtime.filter(|_| fanout > INLINE_FANOUT),
            chunk: Vec::new(),
            delivered: 0,
        }
    }

    /// Hands `frame` to `conn`.
    pub(super) fn give(&mut self, conn: &ConnHandle, frame: Bytes) {
        let handed = match self.runtime {
            None => conn.enqueue(frame),
            Some(runtime) => match conn.enqueue_deferred(frame) {
                Deferred::Schedule => {
                    self.chunk.push(conn.clone());
                    if self.chunk.len() == CHUNK {
                        // Written while the rest is still being queued.
                        spawn_chunk(runtime, std::mem::take(&mut self.chunk));
                    }
                    true
                }
                Deferred::Queued => true,
                Deferred::Refused => false,
            },
        };
        self.delivered += u64::from(handed);
    }

    /// Starts the writing of the last chunk; returns how many frames were handed over.
    pub(super) fn finish(self) -> u64 {
        if let Some(runtime) = self.runtime
            && !self.chunk.is_empty()
        {
            spawn_chunk(runtime, self.chunk);
        }
        self.delivered
    }
}

fn spawn_chunk(runtime: &Handle, chunk: Vec<ConnHandle>) {
    runtime.spawn(async move {
        for conn in chunk {
            conn.flush_deferred();
        }
    });
}

/// Largest fan-out the caller writes itself.
const INLINE_FANOUT: usize = 32;
/// Connections one task writes.
const CHUNK: usize = 256;
