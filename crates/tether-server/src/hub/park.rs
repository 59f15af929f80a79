//! Publications parked while a subscription is set up: fan-out keeps them (bounded as the
//! connection's queue is) until the session's subscribe reply is ready, and
//! [`Hub::activate`] writes the reply, the recovered publications and then the parked ones,
//! in order, before live delivery starts.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{Hub, PendingPublication, Subscriber};
use crate::broker::PublicationEvent;

/// Publications parked for a subscription being set up, bounded as the connection's queue
/// is: a stalled engine must not let them grow without end.
#[derive(Debug, Default)]
pub(super) struct Parked {
    pub(super) publications: Vec<PendingPublication>,
    /// Their payload bytes: about what they will take in the queue when replayed.
    bytes: usize,
}

impl Parked {
    /// Parks a publication. False when that passes `limit`: they would overflow the queue
    /// at activation anyway, so all are dropped now (the caller closes the connection with
    /// 3008) and later ones are not kept.
    pub(super) fn park(&mut self, event: &PublicationEvent, limit: usize) -> bool {
        if self.bytes > limit {
            return true;
        }
        self.bytes += event.publication.data.len();
        if self.bytes > limit {
            self.publications = Vec::new();
            return false;
        }
        self.publications.push(PendingPublication {
            publication: event.publication.clone(),
            position: event.position.clone(),
        });
        true
    }
}

impl Hub {
    /// Makes a pending subscription live: enqueues `head` (the subscribe reply and any
    /// recovered publications), then the parked publications whose offset is above
    /// `delivered_up_to` (all of them when `None`), in order and under the subscriber's lock
    /// so live fan-out cannot slip in between. Returns false if the connection's queue
    /// overflowed.
    pub fn activate(
        &self,
        channel: &str,
        sub: &Subscriber,
        head: Vec<Bytes>,
        delivered_up_to: Option<u64>,
    ) -> bool {
        let mut pending = sub.pending.lock();
        let mut parked = pending
            .take()
            .map(|parked| parked.publications)
            .unwrap_or_default();
        if sub.stale.load(Ordering::Relaxed) {
            // Continuity was lost while setting up: replaying would move the client's
            // position past the hole. The session ends this subscription next.
            parked.clear();
        }
        let mut frames = head;
        let mut covered = delivered_up_to.unwrap_or(0);
        for item in parked {
            if let (Some(top), Some(pos)) = (delivered_up_to, &item.position)
                && pos.offset <= top
            {
                continue;
            }
            match self.frame_for(channel, sub, &item.publication, None) {
                Ok(frame) => frames.push(frame),
                Err(code) => {
                    sub.conn.close(code.into());
                    return false;
                }
            }
            if let Some(pos) = &item.position {
                covered = covered.max(pos.offset);
            }
        }
        // Still under the pending lock: live fan-out sees the bound as soon as it sees the
        // subscription live.
        sub.skip_up_to.store(covered, Ordering::Relaxed);
        let ok = sub.conn.enqueue_all(frames);
        sub.live.store(true, Ordering::Release);
        ok
    }
}
