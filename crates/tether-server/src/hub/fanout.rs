//! Fan-out: a publication, join or leave is encoded once per wire variant (encoding ×
//! framing × delta form) and the same `Bytes` handed to every subscriber of the channel on
//! this node: written at once by the publisher for a small channel, queued for the
//! connections' own tasks to write (in parallel, on every worker) for a large one. Also the
//! hub as the broker's event sink ([`HubEvents`]), and the frames of one subscriber outside
//! fan-out (replay after subscribe, recovery), which keep delta priming consistent.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tether_proto::codes::DisconnectCode;
use tether_proto::{Encoding, Push, Reply};

use super::{Conn, Control, Hub, Subscriber};
use crate::broker::{BrokerEvents, ClientInfo, Publication, PublicationEvent};
use crate::wire::{Framing, encode_frame, to_proto_info, to_proto_publication};

/// Wire variants of one publication, encoded lazily and at most once each.
#[derive(Default)]
struct Variants {
    /// Index: wire variant (see [`wire_index`]) × form (0 plain, 1 full for a delta
    /// subscriber, 2 delta patch).
    frames: [Option<Option<Bytes>>; WIRE_VARIANTS * 3],
    patch: Option<Option<Bytes>>,
}

impl Hub {
    /// Fan-out of one publication to this node's subscribers of `channel`.
    pub fn deliver_publication(&self, channel: &str, event: &PublicationEvent) {
        let Some(entry) = self.channel(channel) else {
            return;
        };
        let subs = entry.subscribers.read();
        let mut variants = Variants::default();
        let large = subs.len() > INLINE_FANOUT;
        let mut delivered = 0u64;
        for sub in subs.iter() {
            if sub.stale.load(Ordering::Relaxed) {
                continue;
            }
            if !sub.live.load(Ordering::Acquire) {
                let mut pending = sub.pending.lock();
                if let Some(parked) = pending.as_mut() {
                    if !parked.park(event, sub.conn.queue_limit()) {
                        sub.conn.overflow();
                    }
                    continue;
                }
            }
            if let Some(position) = &event.position {
                let skip = sub.skip_up_to.load(Ordering::Relaxed);
                if skip != 0 {
                    if position.offset <= skip {
                        // Already delivered with the subscribe reply: a late duplicate.
                        continue;
                    }
                    sub.skip_up_to.store(0, Ordering::Relaxed);
                }
            }
            match self.cached_frame(channel, sub, event, &mut variants) {
                Some(frame) => delivered += u64::from(hand_over(&sub.conn, frame, large)),
                None => sub
                    .conn
                    .close(DisconnectCode::INAPPROPRIATE_PROTOCOL.into()),
            }
        }
        if let Some(metrics) = &self.shared.metrics {
            metrics.deliveries.increment(delivered);
        }
    }

    /// Publications of `channel` may have been lost before reaching this node: every
    /// positioned subscriber stops receiving the channel and its session is told to end the
    /// subscription with insufficient state (2500, or 3010 for server-side ones), so the
    /// client recovers from its last real position.
    pub(crate) fn insufficient_state(&self, channel: &str) {
        let Some(entry) = self.channel(channel) else {
            return;
        };
        for sub in entry.subscribers.read().iter() {
            if sub.flags.positioned && !sub.stale.swap(true, Ordering::Relaxed) {
                sub.conn.post(Control::InsufficientState {
                    channel: channel.to_owned(),
                });
            }
        }
    }

    /// Fan-out of a join or leave to subscribers that asked for them.
    pub(crate) fn deliver_join_leave(&self, channel: &str, info: &ClientInfo, join: bool) {
        let Some(entry) = self.channel(channel) else {
            return;
        };
        let info = Some(to_proto_info(info));
        let push = if join {
            Push {
                channel: channel.to_owned(),
                join: Some(tether_proto::Join { info }),
                ..Default::default()
            }
        } else {
            Push {
                channel: channel.to_owned(),
                leave: Some(tether_proto::Leave { info }),
                ..Default::default()
            }
        };
        let reply = Reply {
            push: Some(push),
            ..Default::default()
        };
        let mut frames: [Option<Bytes>; WIRE_VARIANTS] = Default::default();
        let subs = entry.subscribers.read();
        let large = subs.len() > INLINE_FANOUT;
        for sub in subs.iter() {
            if !sub.flags.join_leave || !sub.live.load(Ordering::Acquire) {
                continue;
            }
            let slot = &mut frames[wire_index(sub.conn.encoding, sub.conn.framing)];
            if slot.is_none() {
                *slot = encode_frame(sub.conn.encoding, sub.conn.framing, &reply).ok();
            }
            if let Some(frame) = slot {
                hand_over(&sub.conn, frame.clone(), large);
            }
        }
    }

    /// Encodes a publication for one subscriber outside fan-out (replay after subscribe,
    /// recovery). Keeps delta priming consistent with live delivery.
    pub(crate) fn frame_for(
        &self,
        channel: &str,
        sub: &Subscriber,
        publication: &Arc<Publication>,
        previous: Option<&Arc<Publication>>,
    ) -> Result<Bytes, DisconnectCode> {
        let event = PublicationEvent {
            publication: publication.clone(),
            position: None,
            previous: previous.cloned(),
        };
        let mut variants = Variants::default();
        self.cached_frame(channel, sub, &event, &mut variants)
            .ok_or(DisconnectCode::INAPPROPRIATE_PROTOCOL)
    }

    /// A recovered publication as it goes into a subscribe result for this subscriber: full
    /// data (a JSON string when delta was negotiated on JSON), and the subscriber primed for
    /// deltas after it.
    pub(crate) fn recovered_publication(
        &self,
        sub: &Subscriber,
        publication: &Publication,
    ) -> tether_proto::Publication {
        let form = if sub.flags.delta {
            sub.delta_primed.store(true, Ordering::Relaxed);
            Form::DeltaFull
        } else {
            Form::Plain
        };
        to_proto_publication(
            publication,
            wire_data(sub.conn.encoding, form, &publication.data),
            false,
        )
    }

    fn cached_frame(
        &self,
        channel: &str,
        sub: &Subscriber,
        event: &PublicationEvent,
        variants: &mut Variants,
    ) -> Option<Bytes> {
        let conn = &sub.conn;
        let enc = wire_index(conn.encoding, conn.framing);
        let publication = &event.publication;
        let form = if !sub.flags.delta {
            Form::Plain
        } else if publication.offset == 0 {
            // Not part of the stream (published without history): sent full, and the client
            // keeps it as the base of its next delta, which the stream's previous
            // publication then is not: the next one goes full as well.
            sub.delta_primed.store(false, Ordering::Relaxed);
            Form::DeltaFull
        } else if publication.delta
            && sub.delta_primed.swap(true, Ordering::Relaxed)
            && event.previous.is_some()
        {
            Form::Delta
        } else {
            sub.delta_primed.store(true, Ordering::Relaxed);
            Form::DeltaFull
        };
        if form == Form::Delta {
            let patch = variants
                .patch
                .get_or_insert_with(|| {
                    let prev = event.previous.as_ref()?;
                    let patch = crate::delta::fossil_delta(&prev.data, &publication.data);
                    (patch.len() < publication.data.len()).then(|| Bytes::from(patch))
                })
                .clone();
            if let Some(patch) = patch {
                let slot = &mut variants.frames[enc * 3 + 2];
                return slot
                    .get_or_insert_with(|| {
                        let data = wire_data(conn.encoding, Form::Delta, &patch);
                        encode_publication(
                            channel,
                            publication,
                            data,
                            true,
                            conn.encoding,
                            conn.framing,
                        )
                    })
                    .clone();
            }
            // The patch is not smaller: send the full data instead.
            return variants.frames[enc * 3 + 1]
                .get_or_insert_with(|| {
                    let data = wire_data(conn.encoding, Form::DeltaFull, &publication.data);
                    encode_publication(
                        channel,
                        publication,
                        data,
                        false,
                        conn.encoding,
                        conn.framing,
                    )
                })
                .clone();
        }
        let index = enc * 3 + if form == Form::Plain { 0 } else { 1 };
        variants.frames[index]
            .get_or_insert_with(|| {
                let data = wire_data(conn.encoding, form, &publication.data);
                encode_publication(
                    channel,
                    publication,
                    data,
                    false,
                    conn.encoding,
                    conn.framing,
                )
            })
            .clone()
    }
}

/// The hub as the broker's event sink.
#[derive(Debug)]
pub struct HubEvents(pub Hub);

impl BrokerEvents for HubEvents {
    fn on_publication(&self, channel: &str, event: &PublicationEvent) {
        self.0.deliver_publication(channel, event);
    }

    fn on_join(&self, channel: &str, info: &ClientInfo) {
        self.0.deliver_join_leave(channel, info, true);
    }

    fn on_leave(&self, channel: &str, info: &ClientInfo) {
        self.0.deliver_join_leave(channel, info, false);
    }

    fn on_insufficient_state(&self, channel: &str) {
        self.0.insufficient_state(channel);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Plain,
    DeltaFull,
    Delta,
}

/// Data as it travels: raw for Protobuf and plain JSON; a JSON string when delta was
/// negotiated on a JSON connection (the SDK parses it after applying the patch).
fn wire_data(encoding: Encoding, form: Form, data: &Bytes) -> Bytes {
    match (encoding, form) {
        (Encoding::Json, Form::DeltaFull | Form::Delta) => {
            let text = String::from_utf8_lossy(data);
            Bytes::from(serde_json::to_vec(&text).unwrap_or_default())
        }
        _ => data.clone(),
    }
}

/// Which shared encoding of a reply a connection gets: WebSocket JSON, WebSocket Protobuf,
/// or raw TCP (Protobuf without a frame header). Connections of one variant share bytes.
fn wire_index(encoding: Encoding, framing: Framing) -> usize {
    match (framing, encoding) {
        (Framing::WebSocket, Encoding::Json) => 0,
        (Framing::WebSocket, Encoding::Protobuf) => 1,
        (Framing::Tcp, _) => 2,
    }
}

/// Number of distinct wire variants ([`wire_index`]).
const WIRE_VARIANTS: usize = 3;

fn encode_publication(
    channel: &str,
    publication: &Publication,
    data: Bytes,
    delta: bool,
    encoding: Encoding,
    framing: Framing,
) -> Option<Bytes> {
    let push = Push {
        channel: channel.to_owned(),
        r#pub: Some(to_proto_publication(publication, data, delta)),
        ..Default::default()
    };
    encode_frame(
        encoding,
        framing,
        &Reply {
            push: Some(push),
            ..Default::default()
        },
    )
    .ok()
}

/// Hands one fan-out frame to a connection: written at once by the caller for a small
/// fan-out; for a `large` one only queued, for the connection's own task to write, so the
/// publisher makes no system call per subscriber and the writes spread over every worker.
/// True when handed over.
fn hand_over(conn: &Conn, frame: Bytes, large: bool) -> bool {
    if large {
        conn.enqueue_queued(frame)
    } else {
        conn.enqueue(frame)
    }
}

/// Largest fan-out the publisher writes itself.
const INLINE_FANOUT: usize = 32;
