//! Channel hub: who is connected, who is subscribed to what, and fan-out of publications.
//!
//! Drivers register a [`Conn`] handle, which holds the socket. Fan-out encodes a publication
//! once per wire variant (encoding × delta form) and hands the same `Bytes` to every
//! subscriber's handle: written at once by the publisher for a small channel, queued for
//! the connections' own tasks to write (in parallel, on every worker) for a large one. A
//! full queue disconnects that subscriber (3008); the hub never waits on a slow connection.
//! Registries are sharded and their locks are never held across `.await`.

pub(crate) mod conn;

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tether_proto::codes::DisconnectCode;
use tether_proto::{Encoding, Push, Reply};
use tokio::net::TcpStream;

pub use self::conn::{
    ClientId, Conn, ConnHandle, Control, Disconnect, Framing, Heartbeat, PendingPublication,
    ServerSubscribe, Work,
};
use crate::broker::{BrokerEvents, ClientInfo, Publication, PublicationEvent};
use crate::transport::ws;

/// Registries and fan-out of one node. Clone = refcount bump.
#[derive(Clone, Debug)]
pub struct Hub {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    conns: Box<[Mutex<HashMap<u64, ConnHandle>>]>,
    users: Box<[Mutex<UserShard>]>,
    channels: Box<[Mutex<ChannelShard>]>,
    next_seq: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
    pings: Pings,
    /// Counts deliveries when the node has metrics.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// One shard of the user index: user -> that user's connections on this node.
type UserShard = HashMap<Arc<str>, UserConns>;
/// One shard of the channel registry.
type ChannelShard = HashSet<ChannelEntry>;

/// A user's connections on this node. Most users hold one connection, kept inline: a
/// vector's smallest allocation (four handles) would be held by every idle connection. The
/// vector of a user with several is boxed so the entry stays two words in every bucket of
/// the index.
#[derive(Debug)]
enum UserConns {
    One(ConnHandle),
    #[allow(clippy::box_collection)]
    Many(Box<Vec<ConnHandle>>),
}

impl UserConns {
    fn as_slice(&self) -> &[ConnHandle] {
        match self {
            Self::One(conn) => std::slice::from_ref(conn),
            Self::Many(conns) => conns,
        }
    }

    fn push(&mut self, conn: ConnHandle) {
        match self {
            Self::One(first) => *self = Self::Many(Box::new(vec![first.clone(), conn])),
            Self::Many(conns) => conns.push(conn),
        }
    }

    /// Removes the connection with `seq`; true when no connection is left.
    fn remove(&mut self, seq: u64) -> bool {
        match self {
            Self::One(conn) => conn.seq == seq,
            Self::Many(conns) => {
                conns.retain(|c| c.seq != seq);
                match conns.as_slice() {
                    [] => return true,
                    [last] => *self = Self::One(last.clone()),
                    _ => {}
                }
                false
            }
        }
    }
}

/// Pre-encoded ping frames, one per wire variant.
#[derive(Debug)]
struct Pings {
    json: Bytes,
    protobuf: Bytes,
    /// Raw TCP: an empty Reply, which is the single length byte 0.
    tcp: Bytes,
}

/// The subscribers of one channel on this node.
#[derive(Debug)]
struct Channel {
    name: Arc<str>,
    /// In no particular order; each subscriber knows its index ([`Subscriber::slot`]), so
    /// removal is a swap with the last. A vector, not a map: fan-out walks it, and a channel
    /// with one subscriber (a personal channel) holds one pointer, not a hash table.
    subscribers: RwLock<Vec<Arc<Subscriber>>>,
}

/// A channel registry entry: hashes and compares as its name, so the registry is a set
/// looked up by `&str` and the name is stored once.
#[derive(Debug)]
struct ChannelEntry(Arc<Channel>);

impl Borrow<str> for ChannelEntry {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

impl Hash for ChannelEntry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so `HashSet::get(&str)` finds it.
        (*self.0.name).hash(state);
    }
}

impl PartialEq for ChannelEntry {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for ChannelEntry {}

/// One connection's subscription as the hub sees it.
#[derive(Debug)]
pub struct Subscriber {
    conn: ConnHandle,
    /// The channel, which holds this subscriber until [`Hub::unsubscribe`].
    channel: Arc<Channel>,
    /// Index in the channel's subscriber vector; changed only under its write lock.
    slot: AtomicU32,
    flags: SubscriberFlags,
    /// The subscriber has received a full publication, so later ones may come as deltas.
    delta_primed: AtomicBool,
    /// Set (under the `pending` lock) once the subscription is live: fan-out then delivers
    /// without taking the lock.
    live: AtomicBool,
    /// `Some` while the subscription is being set up: publications are parked here and
    /// replayed after the subscribe reply. `None` once live. Boxed: it is needed only for
    /// the moments of setting up, and the subscriber lives for hours.
    pending: Mutex<Option<Box<Parked>>>,
    /// Set when the stream lost continuity for this positioned subscriber: nothing more is
    /// delivered to it (its position must not move past the hole) until the session ends the
    /// subscription and the client recovers.
    stale: AtomicBool,
    /// Right after activation: publications at or below this offset were already delivered
    /// with the subscribe reply (from history) or from the parked ones. A networked engine
    /// can deliver such a publication late — its history read may finish before its Pub/Sub
    /// message arrives — so live delivery drops it. Cleared (0) by the first newer offset, so
    /// a later epoch that restarts at offset 1 is never filtered.
    skip_up_to: AtomicU64,
}

/// Publications parked for a subscription being set up, bounded as the connection's queue
/// is: a stalled engine must not let them grow without end.
#[derive(Debug, Default)]
struct Parked {
    publications: Vec<PendingPublication>,
    /// Their payload bytes: about what they will take in the queue when replayed.
    bytes: usize,
}

impl Parked {
    /// Parks a publication. False when that passes `limit`: they would overflow the queue
    /// at activation anyway, so all are dropped now (the caller closes the connection with
    /// 3008) and later ones are not kept.
    fn park(&mut self, event: &PublicationEvent, limit: usize) -> bool {
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

/// What a subscriber asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriberFlags {
    /// Deliver join and leave pushes.
    pub join_leave: bool,
    /// Fossil delta negotiated.
    pub delta: bool,
    /// The subscription is positioned: a lost publication must be reported to it
    /// ([`Hub::insufficient_state`]) rather than silently skipped.
    pub positioned: bool,
}

/// Counts for the `info` API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Registered connections (connected or still authenticating).
    pub num_clients: u32,
    /// Distinct users with at least one connection.
    pub num_users: u32,
    /// Channels with at least one subscriber here.
    pub num_channels: u32,
    /// Subscriptions summed over channels.
    pub num_subs: u32,
}

/// Heartbeat settings the sweeper applies, in milliseconds (0 disables).
#[derive(Clone, Copy, Debug)]
pub struct SweepSettings {
    /// Interval between pings.
    pub ping_interval_ms: u64,
    /// How long a pong may take.
    pub pong_timeout_ms: u64,
}

/// Wire variants of one publication, encoded lazily and at most once each.
#[derive(Default)]
struct Variants {
    /// Index: wire variant (see [`wire_index`]) × form (0 plain, 1 full for a delta
    /// subscriber, 2 delta patch).
    frames: [Option<Option<Bytes>>; WIRE_VARIANTS * 3],
    patch: Option<Option<Bytes>>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// An empty hub that counts its deliveries in `metrics`.
    pub fn with_metrics(metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self::build(Some(metrics))
    }

    fn build(metrics: Option<Arc<crate::metrics::Metrics>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                metrics,
                conns: (0..SHARDS).map(|_| Mutex::default()).collect(),
                users: (0..SHARDS).map(|_| Mutex::default()).collect(),
                channels: (0..SHARDS).map(|_| Mutex::default()).collect(),
                next_seq: AtomicU64::new(1),
                hasher: std::collections::hash_map::RandomState::new(),
                pings: Pings {
                    json: ws::encode_message_frame(false, b"{}"),
                    protobuf: ws::encode_message_frame(true, &[0]),
                    tcp: Bytes::from_static(&[0]),
                },
            }),
        }
    }

    /// A new connection handle, registered (so the sweeper watches it from the start). It
    /// takes the connection's socket: frames handed to the handle are written to it.
    pub fn register(
        &self,
        encoding: Encoding,
        framing: Framing,
        queue_limit: usize,
        socket: Option<TcpStream>,
    ) -> ConnHandle {
        let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(seq, encoding, framing, queue_limit, socket));
        self.shared.conns[shard_of_seq(seq)]
            .lock()
            .insert(seq, conn.clone());
        conn
    }

    /// Removes a connection from every registry (its subscriptions are removed by the session).
    pub fn unregister(&self, conn: &ConnHandle) {
        self.shared.conns[shard_of_seq(conn.seq)]
            .lock()
            .remove(&conn.seq);
        let user = conn.user();
        let mut users = self.shared.users[self.shard(&user)].lock();
        if let Some(conns) = users.get_mut(&user)
            && conns.remove(conn.seq)
        {
            users.remove(&user);
        }
    }

    /// Adds an authenticated connection to its user's index. Returns how many connections
    /// the user has now.
    pub fn add_user_conn(&self, conn: &ConnHandle) -> usize {
        let user = conn.user();
        let mut users = self.shared.users[self.shard(&user)].lock();
        match users.entry(user) {
            std::collections::hash_map::Entry::Occupied(mut entry) => {
                entry.get_mut().push(conn.clone());
                entry.get().as_slice().len()
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(UserConns::One(conn.clone()));
                1
            }
        }
    }

    /// Number of connections a user has on this node.
    pub fn user_conn_count(&self, user: &str) -> usize {
        self.shared.users[self.shard(user)]
            .lock()
            .get(user)
            .map_or(0, |conns| conns.as_slice().len())
    }

    /// The connections of a user on this node.
    pub fn user_conns(&self, user: &str) -> Vec<ConnHandle> {
        self.shared.users[self.shard(user)]
            .lock()
            .get(user)
            .map(|conns| conns.as_slice().to_vec())
            .unwrap_or_default()
    }

    /// Adds a subscriber in the pending state; publications are parked until
    /// [`Hub::activate`]. Returns the handle the session keeps.
    pub fn subscribe(
        &self,
        channel: &str,
        conn: &ConnHandle,
        flags: SubscriberFlags,
    ) -> Arc<Subscriber> {
        let mut channels = self.shared.channels[self.shard(channel)].lock();
        let entry = match channels.get(channel) {
            Some(entry) => entry.0.clone(),
            None => {
                let entry = Arc::new(Channel {
                    name: Arc::from(channel),
                    subscribers: RwLock::default(),
                });
                channels.insert(ChannelEntry(entry.clone()));
                entry
            }
        };
        // Added under the shard lock: an unsubscribe that empties the channel removes its
        // entry under the same lock, so a new subscriber never lands in a removed entry.
        let mut subscribers = entry.subscribers.write();
        let sub = Arc::new(Subscriber {
            conn: conn.clone(),
            channel: entry.clone(),
            slot: AtomicU32::new(subscribers.len() as u32),
            flags,
            delta_primed: AtomicBool::new(false),
            live: AtomicBool::new(false),
            skip_up_to: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            pending: Mutex::new(Some(Box::default())),
        });
        crate::small::push_exact_while_small(&mut subscribers, sub.clone());
        sub
    }

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

    /// Removes a subscription; frees the channel entry when it was the last. Removing one
    /// that is already gone does nothing.
    pub fn unsubscribe(&self, sub: &Arc<Subscriber>) {
        let channel = &sub.channel;
        let mut channels = self.shared.channels[self.shard(&channel.name)].lock();
        let mut subs = channel.subscribers.write();
        let at = sub.slot.load(Ordering::Relaxed) as usize;
        if !subs.get(at).is_some_and(|s| Arc::ptr_eq(s, sub)) {
            return;
        }
        subs.swap_remove(at);
        if let Some(moved) = subs.get(at) {
            moved.slot.store(at as u32, Ordering::Relaxed);
        }
        if subs.is_empty() {
            drop(subs);
            channels.remove(&*channel.name);
        } else if subs.capacity() > crate::small::EXACT_UP_TO && subs.len() * 4 <= subs.capacity() {
            // A channel that emptied out gives its memory back as it goes.
            let keep = subs.len() * 2;
            subs.shrink_to(keep);
        }
    }

    /// Channels with local subscribers and their subscriber counts.
    pub fn channels(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for shard in self.shared.channels.iter() {
            for ChannelEntry(entry) in shard.lock().iter() {
                out.push((
                    entry.name.to_string(),
                    entry.subscribers.read().len() as u32,
                ));
            }
        }
        out
    }

    /// Counts for `info`.
    pub fn stats(&self) -> HubStats {
        let mut stats = HubStats::default();
        for shard in self.shared.conns.iter() {
            stats.num_clients += shard.lock().len() as u32;
        }
        for shard in self.shared.users.iter() {
            stats.num_users += shard.lock().len() as u32;
        }
        for shard in self.shared.channels.iter() {
            let channels = shard.lock();
            stats.num_channels += channels.len() as u32;
            for ChannelEntry(entry) in channels.iter() {
                stats.num_subs += entry.subscribers.read().len() as u32;
            }
        }
        stats
    }

    /// Every registered connection (a snapshot; for shutdown and tests).
    pub fn all_conns(&self) -> Vec<ConnHandle> {
        self.shared
            .conns
            .iter()
            .flat_map(|s| s.lock().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// One heartbeat pass: sends due pings, closes connections whose pong, connect or
    /// credentials are overdue. `now_ms` is the node clock.
    pub fn sweep(&self, now_ms: u64, settings: SweepSettings) {
        let mut due = Vec::new();
        for shard in self.shared.conns.iter() {
            due.clear();
            due.extend(
                shard
                    .lock()
                    .values()
                    .filter(|conn| conn.heartbeat_due(now_ms))
                    .cloned(),
            );
            for conn in &due {
                self.sweep_one(conn, now_ms, settings);
            }
        }
    }

    fn sweep_one(&self, conn: &Conn, now: u64, settings: SweepSettings) {
        enum Act {
            Nothing,
            Ping,
            CheckExpiry,
            Close(DisconnectCode),
        }
        let act = conn.with_heartbeat(|hb| {
            if hb.stale_at != 0 && now >= hb.stale_at {
                return Act::Close(DisconnectCode::STALE);
            }
            if hb.pong_by != 0 && now >= hb.pong_by {
                return Act::Close(DisconnectCode::NO_PONG);
            }
            if hb.expire_at != 0 && now >= hb.expire_at {
                return Act::Close(DisconnectCode::EXPIRED);
            }
            if hb.sub_expire_at != 0 && now >= hb.sub_expire_at {
                hb.sub_expire_at = 0;
                return Act::CheckExpiry;
            }
            if hb.ping_at != 0 && now >= hb.ping_at {
                hb.ping_at = now + settings.ping_interval_ms;
                if settings.pong_timeout_ms > 0 && hb.pong_by == 0 {
                    hb.pong_by = now + settings.pong_timeout_ms;
                }
                return Act::Ping;
            }
            Act::Nothing
        });
        match act {
            Act::Nothing => {}
            Act::Ping => {
                let frame = match (conn.framing, conn.encoding) {
                    (Framing::Tcp, _) => self.shared.pings.tcp.clone(),
                    (Framing::WebSocket, Encoding::Json) => self.shared.pings.json.clone(),
                    (Framing::WebSocket, Encoding::Protobuf) => self.shared.pings.protobuf.clone(),
                };
                conn.enqueue(frame);
            }
            Act::CheckExpiry => conn.post(Control::CheckExpiry),
            Act::Close(code) => conn.close(code.into()),
        }
    }

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
    pub fn insufficient_state(&self, channel: &str) {
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
    pub fn deliver_join_leave(&self, channel: &str, info: &ClientInfo, join: bool) {
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

    fn channel(&self, channel: &str) -> Option<Arc<Channel>> {
        self.shared.channels[self.shard(channel)]
            .lock()
            .get(channel)
            .map(|entry| entry.0.clone())
    }

    fn shard(&self, key: &str) -> usize {
        (self.shared.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Encodes a publication for one subscriber outside fan-out (replay after subscribe,
    /// recovery). Keeps delta priming consistent with live delivery.
    pub fn frame_for(
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
    pub fn recovered_publication(
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

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Subscriber {
    /// The connection behind this subscription.
    pub fn conn(&self) -> &ConnHandle {
        &self.conn
    }

    /// The channel's name (shared with the hub's registry).
    pub fn channel(&self) -> &Arc<str> {
        &self.channel.name
    }

    /// The stream lost continuity for this subscription ([`Hub::insufficient_state`]).
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
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

/// Converts a broker publication into the protocol type with the given wire data.
pub fn to_proto_publication(
    publication: &Publication,
    data: Bytes,
    delta: bool,
) -> tether_proto::Publication {
    tether_proto::Publication {
        data,
        info: publication.info.as_ref().map(to_proto_info),
        offset: publication.offset,
        tags: publication
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        delta,
        ..Default::default()
    }
}

/// Converts broker client info into the protocol type.
pub fn to_proto_info(info: &ClientInfo) -> tether_proto::ClientInfo {
    tether_proto::ClientInfo {
        user: info.user.clone(),
        client: info.client.clone(),
        conn_info: info.conn_info.clone().unwrap_or_default(),
        chan_info: info.chan_info.clone().unwrap_or_default(),
    }
}

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

/// Encodes one reply as a complete wire frame for a connection.
pub fn encode_frame(
    encoding: Encoding,
    framing: Framing,
    reply: &Reply,
) -> Result<Bytes, tether_proto::EncodeError> {
    let mut payload = Vec::with_capacity(64);
    encoding.encode_reply(reply, &mut payload)?;
    Ok(match framing {
        // The delimited reply is the whole frame: hand over the buffer without a copy.
        Framing::Tcp => Bytes::from(payload),
        Framing::WebSocket => frame_payload(encoding, framing, &payload),
    })
}

/// Wraps an encoded payload (one or more replies) in the transport's framing. Raw TCP has
/// none: Protobuf replies carry their own length prefix.
pub fn frame_payload(encoding: Encoding, framing: Framing, payload: &[u8]) -> Bytes {
    match framing {
        Framing::WebSocket => ws::encode_message_frame(encoding == Encoding::Protobuf, payload),
        Framing::Tcp => Bytes::copy_from_slice(payload),
    }
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

fn shard_of_seq(seq: u64) -> usize {
    (seq as usize) % SHARDS
}

/// Registry shards; a power of two well above the core count keeps lock contention low.
const SHARDS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::StreamPosition;

    fn event(offset: u64) -> PublicationEvent {
        PublicationEvent {
            publication: Arc::new(Publication {
                offset,
                data: Bytes::from_static(b"{}"),
                ..Default::default()
            }),
            position: Some(StreamPosition {
                offset,
                epoch: "e".to_owned(),
            }),
            previous: None,
        }
    }

    fn queued(conn: &Conn) -> usize {
        conn.take_queued().len()
    }

    #[test]
    fn a_late_publication_already_in_the_subscribe_reply_is_not_delivered_again() {
        let hub = Hub::new();
        let conn = hub.register(Encoding::Json, Framing::WebSocket, 1 << 20, None);
        let flags = SubscriberFlags {
            positioned: true,
            ..Default::default()
        };
        let sub = hub.subscribe("ch", &conn, flags);
        // The reply carried history up to offset 5; a parked 6 is replayed after it.
        hub.deliver_publication("ch", &event(6));
        assert!(hub.activate("ch", &sub, vec![Bytes::from_static(b"reply")], Some(5)));
        assert_eq!(queued(&conn), 2, "the reply and the parked 6");
        // 5 and 6 arrive late from the engine: both were delivered already.
        hub.deliver_publication("ch", &event(5));
        hub.deliver_publication("ch", &event(6));
        assert_eq!(queued(&conn), 0);
        // The next one is new and goes out; after it, the filter is gone, so a stream that
        // restarts at offset 1 later is not swallowed.
        hub.deliver_publication("ch", &event(7));
        assert_eq!(queued(&conn), 1);
        hub.deliver_publication("ch", &event(1));
        assert_eq!(queued(&conn), 1);
    }

    #[test]
    fn publications_parked_past_the_queue_bound_close_the_connection_not_grow() {
        let hub = Hub::new();
        let conn = hub.register(Encoding::Json, Framing::WebSocket, 64, None);
        let sub = hub.subscribe("ch", &conn, SubscriberFlags::default());
        let big = |offset| PublicationEvent {
            publication: Arc::new(Publication {
                offset,
                data: Bytes::from(vec![b'1'; 40]),
                ..Default::default()
            }),
            position: None,
            previous: None,
        };
        // The engine is slow to confirm the subscribe while the channel is busy.
        hub.deliver_publication("ch", &big(1));
        assert!(!conn.is_closing(), "one fits the bound");
        hub.deliver_publication("ch", &big(2));
        assert!(conn.is_closing(), "two would not fit the queue");
        assert_eq!(conn.take_work().close.map(|d| d.code), Some(3008));
        for offset in 3..100 {
            hub.deliver_publication("ch", &big(offset));
        }
        let pending = sub.pending.lock();
        assert!(pending.as_ref().is_some_and(|p| p.publications.is_empty()));
        drop(pending);
        // Activation then sends nothing: not the reply, not a publication after the gap.
        assert!(!hub.activate("ch", &sub, vec![Bytes::from_static(b"reply")], None));
        assert_eq!(queued(&conn), 0);
    }

    #[test]
    fn the_sweep_acts_on_each_deadline_when_it_comes_and_not_before() {
        let hub = Hub::new();
        let conn = hub.register(Encoding::Json, Framing::WebSocket, 1 << 20, None);
        let settings = SweepSettings {
            ping_interval_ms: 25_000,
            pong_timeout_ms: 8_000,
        };
        conn.with_heartbeat(|hb| hb.ping_at = 1_000);
        hub.sweep(999, settings);
        assert_eq!(queued(&conn), 0, "no ping before it is due");
        hub.sweep(1_000, settings);
        assert_eq!(queued(&conn), 1, "the ping");
        // The pong deadline (9,000) comes before the next ping (26,000).
        hub.sweep(8_999, settings);
        assert!(conn.take_work().close.is_none());
        hub.sweep(9_000, settings);
        assert_eq!(conn.take_work().close.map(|d| d.code), Some(3012));
        // An earlier deadline set later is seen at once: credentials expiring at 10,000.
        let other = hub.register(Encoding::Json, Framing::WebSocket, 1 << 20, None);
        other.with_heartbeat(|hb| hb.ping_at = 26_000);
        other.with_heartbeat(|hb| hb.expire_at = 10_000);
        hub.sweep(10_000, settings);
        assert_eq!(other.take_work().close.map(|d| d.code), Some(3005));
    }

    fn live_sub(hub: &Hub, channel: &str, conn: &ConnHandle) -> Arc<Subscriber> {
        let sub = hub.subscribe(channel, conn, SubscriberFlags::default());
        assert!(hub.activate(channel, &sub, Vec::new(), None));
        sub
    }

    #[test]
    fn unsubscribing_any_subscriber_keeps_the_others_receiving() {
        let hub = Hub::new();
        let conns: Vec<ConnHandle> = (0..4)
            .map(|_| hub.register(Encoding::Json, Framing::WebSocket, 1 << 20, None))
            .collect();
        let subs: Vec<_> = conns.iter().map(|c| live_sub(&hub, "ch", c)).collect();
        // The first (swapped with the last), then the last's new slot, then a repeat.
        hub.unsubscribe(&subs[0]);
        hub.unsubscribe(&subs[3]);
        hub.unsubscribe(&subs[0]);
        hub.deliver_publication("ch", &event(1));
        let got: Vec<usize> = conns.iter().map(|c| queued(c)).collect();
        assert_eq!(got, [0, 1, 1, 0]);
        assert_eq!(hub.stats().num_subs, 2);
        hub.unsubscribe(&subs[1]);
        hub.unsubscribe(&subs[2]);
        assert_eq!(hub.stats().num_channels, 0, "an empty channel is freed");
        // A new subscriber after that gets a fresh entry and its publications.
        let again = live_sub(&hub, "ch", &conns[0]);
        hub.deliver_publication("ch", &event(2));
        assert_eq!(queued(&conns[0]), 1);
        assert_eq!(again.channel().as_ref(), "ch");
    }

    #[test]
    fn the_user_index_follows_connections_in_and_out() {
        let hub = Hub::new();
        let conns: Vec<ConnHandle> = (0..3)
            .map(|_| {
                let conn = hub.register(Encoding::Json, Framing::WebSocket, 1 << 20, None);
                conn.set_identity(Arc::from("alice"), None);
                conn
            })
            .collect();
        let counts: Vec<usize> = conns.iter().map(|c| hub.add_user_conn(c)).collect();
        assert_eq!(counts, [1, 2, 3]);
        hub.unregister(&conns[1]);
        assert_eq!(hub.user_conn_count("alice"), 2);
        let seqs: Vec<u64> = hub.user_conns("alice").iter().map(|c| c.seq).collect();
        assert_eq!(seqs, [conns[0].seq, conns[2].seq]);
        hub.unregister(&conns[0]);
        assert_eq!(hub.user_conns("alice").len(), 1);
        hub.unregister(&conns[2]);
        assert_eq!(hub.user_conn_count("alice"), 0);
        assert_eq!(hub.stats().num_users, 0);
    }

    /// Reads `count` server WebSocket text frames (unmasked: a 2- or 4-byte header)
    /// from `peer` and returns their payloads.
    async fn read_frames(peer: &mut TcpStream, count: usize) -> Vec<String> {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        while frames.len() < count {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), peer.read(&mut chunk))
                .await
                .expect("frames in time")
                .unwrap();
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
            loop {
                let (len, at) = match buf.get(1) {
                    Some(126) if buf.len() >= 4 => {
                        (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
                    }
                    Some(&len) if len < 126 => (usize::from(len), 2),
                    _ => break,
                };
                if buf.len() < at + len {
                    break;
                }
                frames.push(String::from_utf8(buf[at..at + len].to_vec()).unwrap());
                buf.drain(..at + len);
            }
        }
        frames
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_fan_out_reaches_every_subscriber_whole_and_in_order() {
        let hub = Hub::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Far more subscribers than the publisher writes itself (`INLINE_FANOUT`).
        let mut peers = Vec::new();
        for _ in 0..600 {
            let peer = TcpStream::connect(addr).await.unwrap();
            let (socket, _) = listener.accept().await.unwrap();
            socket.writable().await.unwrap();
            let conn = hub.register(Encoding::Json, Framing::WebSocket, 1 << 20, Some(socket));
            let sub = hub.subscribe("big", &conn, SubscriberFlags::default());
            assert!(hub.activate("big", &sub, Vec::new(), None));
            peers.push((conn, peer));
        }
        // Published back to back: each is queued behind the earlier ones, and goes out when
        // the connection's driver flushes (as the first goes out directly to a small
        // channel's subscribers).
        for offset in 1..=5 {
            hub.deliver_publication("big", &event(offset));
        }
        for (conn, _) in &peers {
            assert!(conn.flush().unwrap());
        }
        for (_, peer) in &mut peers {
            let frames = read_frames(peer, 5).await;
            let offsets: Vec<u64> = frames
                .iter()
                .map(|frame| {
                    let reply: serde_json::Value = serde_json::from_str(frame).unwrap();
                    reply["push"]["pub"]["offset"].as_u64().unwrap()
                })
                .collect();
            assert_eq!(offsets, [1, 2, 3, 4, 5]);
        }
        for (conn, _) in &peers {
            assert!(!conn.has_frames(), "every queue was written out");
        }
    }
}
